"""What a graph takes and returns: tensor names, dtypes, shapes with named dynamic dims and their ranges.

These are the contract written into ``manifest.json`` at export and checked by every backend at
run time. Dims are either an ``int`` (static) or a symbol such as ``"B"``; every symbol has one
:class:`DimRange` per graph, shared by all inputs and outputs that use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusionrt.errors import BundleError

# The graphs a bundle holds, the fusion graph's inputs in order, and the precisions a graph file may have;
# defined here, the lowest layer, so the exporter, calibration and the runtime share one spelling.
FUSION = "fusion"
REGION_ENCODER = "region_encoder"
FUSION_INPUTS = ("input_ids", "text_mask", "visual_feats", "visual_mask")
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")

# Only these dtypes cross the graph boundary; the names are numpy's.
DTYPES = ("bool", "int64", "int32", "float32", "float16")


@dataclass(frozen=True)
class DimRange:
    """Allowed sizes of one dynamic dim: ``min <= size <= max``; ``opt`` is the size to tune for.

    ``pad_when_empty``: a size of 0 is accepted and padded to one zero (masked) slot before the
    graph runs, for sets that may legitimately be empty (the visual regions).
    """

    min: int
    opt: int
    max: int
    pad_when_empty: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise ValueError(f"dim range: expected 0 <= min <= opt <= max, received {self}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"min": self.min, "opt": self.opt, "max": self.max}
        if self.pad_when_empty:
            out["pad_when_empty"] = True
        return out

    def describe(self) -> str:
        empty = " (0 is padded to one masked slot)" if self.pad_when_empty else ""
        return f"[{self.min}, {self.max}]{empty}"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``value_range`` (inclusive) bounds the values of an integer input.

    ``prefix_mask``: a bool ``[B, L]`` mask whose every row is a prefix (``True...True False...False``):
    the real items come first, padding last. Left or interleaved padding is refused, because position
    embeddings count from slot 0 and the calibration set keeps only each row's first ``sum(mask)`` slots.
    In the manifest: ``"mask": "prefix"``.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    value_range: tuple[int, int] | None = None
    prefix_mask: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: expected a dtype in {DTYPES}, received {self.dtype!r}")

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    def shape_text(self) -> str:
        return "[" + ",".join(str(d) for d in self.shape) + "]"

    def describe(self) -> str:
        return f"{self.dtype} {self.shape_text()}"


@dataclass(frozen=True)
class GraphSpec:
    """Inputs, outputs and dynamic-dim ranges of one graph, and its file for each precision."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Mapping[str, DimRange]
    precisions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for tensor in (*self.inputs, *self.outputs):
            for symbol in tensor.symbols:
                if symbol not in self.dims:
                    raise ValueError(f"{tensor.name}: dim {symbol!r} has no range in graph {self.name!r}")

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    @property
    def max_batch(self) -> int | None:
        """The largest size of the leading dim of the first input (the batch: B, or the region encoder's N)
        when it is dynamic; ``None`` when it is fixed."""
        lead = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        return self.dims[lead].max if isinstance(lead, str) else None

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: each tensor carries the min/opt/max of its own dynamic dims."""

        def tensor(t: TensorSpec) -> dict[str, Any]:
            out: dict[str, Any] = {
                "name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                "dynamic": {s: self.dims[s].to_dict() for s in t.symbols},
            }
            if t.value_range is not None:
                out["value_range"] = list(t.value_range)
            if t.prefix_mask:
                out["mask"] = "prefix"
            return out

        return {
            "inputs": [tensor(t) for t in self.inputs],
            "outputs": [tensor(t) for t in self.outputs],
            "precisions": dict(self.precisions),
        }

    @classmethod
    def from_dict(cls, name: str, data: Any) -> GraphSpec:
        """Parse a manifest graph entry; a malformed or inconsistent entry raises :class:`BundleError`."""
        where = f"manifest.json graphs.{name}"
        try:
            dims: dict[str, DimRange] = {}
            tensors: dict[str, list[TensorSpec]] = {"inputs": [], "outputs": []}
            for kind in ("inputs", "outputs"):
                for entry in data[kind]:
                    shape = tuple(d if isinstance(d, str) else int(d) for d in entry["shape"])
                    for symbol, rng in entry.get("dynamic", {}).items():
                        parsed = DimRange(int(rng["min"]), int(rng["opt"]), int(rng["max"]),
                                          bool(rng.get("pad_when_empty", False)))
                        if dims.setdefault(symbol, parsed) != parsed:
                            raise BundleError(where, f"one range for dim {symbol!r} across inputs and outputs",
                                              f"{dims[symbol]} and {parsed} (at {entry['name']})")
                    value_range = entry.get("value_range")
                    mask = entry.get("mask")
                    if mask not in (None, "prefix"):
                        raise BundleError(where, f"mask 'prefix' or none at {entry['name']}", repr(mask))
                    tensors[kind].append(TensorSpec(
                        str(entry["name"]), str(entry["dtype"]), shape,
                        tuple(int(v) for v in value_range) if value_range is not None else None,
                        prefix_mask=mask == "prefix",
                    ))
            precisions = {str(k): str(v) for k, v in data.get("precisions", {}).items()}
            return cls(name, tuple(tensors["inputs"]), tuple(tensors["outputs"]), dims, precisions)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(where, "inputs and outputs with name, dtype, shape and dim ranges",
                              f"a malformed entry ({type(exc).__name__}: {exc})") from exc
