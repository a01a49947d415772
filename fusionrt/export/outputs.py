"""What a fusion module returns: its outputs' names and symbolic shapes, learned by running it twice.

A module's outputs are not fixed to (hidden, logits): any float32 tensors whose first axis is the batch B
and whose other axes are the text length T, the visual length M or fixed sizes. Two probes at different
B, T and M tell which axis follows which dim; the second probe holds a row with every visual slot masked
(an empty region set), whose outputs must be finite. A module may declare its outputs as
``fusion_outputs = {"hidden": "B T H", "logits": "B A"}`` (B, T, M dynamic, any other word a fixed size):
then names come from it and ranks and axes are checked against it. Undeclared outputs are named
``hidden``/``logits`` (one or two outputs) or ``output0``, ``output1``, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusionrt.bundle.spec import TensorSpec
from fusionrt.export.contract import example_size
from fusionrt.export.errors import ExportError

DYNAMIC = ("B", "T", "M")
DECLARATION = "fusion_outputs"
CONTRACT = ("forward(input_ids int64 [B,T], text_mask bool [B,T], visual_feats float32 [B,M,Dv], "
            "visual_mask bool [B,M]) -> float32 tensors [B, ...] (e.g. hidden [B,T,H], logits [B,A])")


@dataclass
class Probe:
    """One forward run: its sizes, its torch inputs and its outputs."""

    sizes: dict[str, int]
    example: tuple[Any, ...]
    outputs: list[Any]

    def at(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.sizes.items())


def probe_sizes(max_batch: int, max_text_len: int, max_visual_len: int, visual_dim: int) -> list[dict[str, int]]:
    """Two sets of (B, T, M), apart from each other and from each other's values where the ranges allow."""
    b1 = example_size(2, max_batch, ())
    t1 = example_size(5, max_text_len, (b1,))
    m1 = example_size(3, max_visual_len, (b1, t1, visual_dim))
    b2 = example_size(3, max_batch, (b1, t1, m1))
    t2 = example_size(7, max_text_len, (b2, t1, m1))
    m2 = example_size(4, max_visual_len, (b2, t2, m1, visual_dim))
    return [{"B": b1, "T": t1, "M": m1}, {"B": b2, "T": t2, "M": m2}]


def probe(model: Any, sizes: Mapping[str, int], vocab_size: int, visual_dim: int, *, seed: int,
          empty_visual_row: bool) -> Probe:
    """Run ``model`` once at ``sizes`` on random feeds with padding (and, if asked, a row without regions)."""
    import torch

    batch, text_len, visual_len = sizes["B"], sizes["T"], sizes["M"]
    rng = np.random.default_rng(seed)
    text_mask = np.ones((batch, text_len), dtype=bool)
    visual_mask = np.ones((batch, visual_len), dtype=bool)
    text_mask[1:, text_len - 1:] = visual_mask[1:, visual_len - 1:] = False  # padding, but no empty text row
    if empty_visual_row:
        visual_mask[-1] = False
    example = (
        torch.from_numpy(np.where(text_mask, rng.integers(0, vocab_size, (batch, text_len)), 0)),
        torch.from_numpy(text_mask),
        torch.from_numpy(rng.standard_normal((batch, visual_len, visual_dim)).astype(np.float32)),
        torch.from_numpy(visual_mask),
    )
    try:
        with torch.no_grad():
            result = model(*example)
    except Exception as exc:
        raise ExportError("model", CONTRACT, f"a forward that raised {type(exc).__name__}: {exc} at "
                          + ", ".join(f"{k}={v}" for k, v in sizes.items())) from exc
    outputs = [result] if isinstance(result, torch.Tensor) else list(result) if isinstance(result, tuple | list) \
        else None
    if not outputs or not all(isinstance(o, torch.Tensor) and o.dtype == torch.float32 for o in outputs):
        received = type(result).__name__ if outputs is None else \
            "(" + ", ".join(f"{getattr(o, 'dtype', type(o).__name__)} {list(getattr(o, 'shape', []))}"
                            for o in outputs) + ")"
        at = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ExportError("model", CONTRACT, f"outputs {received} at {at}")
    return Probe(dict(sizes), example, outputs)


def _declared(model: Any, count: int) -> list[tuple[str, list[str]]] | None:
    declared = getattr(model, DECLARATION, None)
    if declared is None:
        return None
    if not isinstance(declared, Mapping) or not all(isinstance(k, str) and isinstance(v, str | Sequence)
                                                    for k, v in declared.items()):
        raise ExportError(f"model.{DECLARATION}", "a dict of output name -> axes such as 'B T H'", repr(declared))
    parsed = [(name, axes.split() if isinstance(axes, str) else [str(a) for a in axes])
              for name, axes in declared.items()]
    if len(parsed) != count:
        raise ExportError(f"model.{DECLARATION}", f"one entry per output the forward returns ({count})",
                          f"{len(parsed)} entries {list(declared)}")
    return parsed


def _default_names(count: int, first_rank: int) -> list[str]:
    if count == 2:
        return ["hidden", "logits"]
    if count == 1:
        return ["hidden" if first_rank == 3 else "logits"]
    return [f"output{i}" for i in range(count)]


def _axis(name: str, axis: int, lengths: list[int], probes: list[Probe], declared: str | None) -> int | str:
    """The symbol (B, T, M) or fixed size of one output axis, checked against its declaration if any."""
    follows = [d for d in DYNAMIC if all(p.sizes[d] == n for p, n in zip(probes, lengths, strict=True))]
    fixed = len(set(lengths)) == 1
    seen = ", ".join(f"{n} at {p.at()}" for p, n in zip(probes, lengths, strict=True))
    if declared is not None:
        if declared in DYNAMIC:
            if declared not in follows:
                raise ExportError(f"model output {name!r} axis {axis}",
                                  f"the size of {declared} as declared in {DECLARATION}", seen)
            return declared
        if not fixed:
            raise ExportError(f"model output {name!r} axis {axis}", f"a fixed size {declared!r} as declared in "
                              f"{DECLARATION}", f"{seen} (it follows the input shapes)")
        if declared.isdigit() and int(declared) != lengths[0]:
            raise ExportError(f"model output {name!r} axis {axis}", f"size {declared} as declared", seen)
        return lengths[0]
    if axis == 0:
        if "B" not in follows:
            raise ExportError(f"model output {name!r} axis 0", "the batch size B", seen)
        return "B"
    if follows and not fixed:
        return follows[0]
    if fixed:
        return lengths[0]
    raise ExportError(f"model output {name!r} axis {axis}", "a fixed size or one of B, T, M", seen)


def describe_outputs(model: Any, probes: list[Probe]) -> tuple[TensorSpec, ...]:
    """The outputs' :class:`TensorSpec` from two probes; :class:`ExportError` naming the output and its shapes
    for a rank that changes or differs from the declaration, an axis that follows no input dim, or a
    non-finite value on the row without regions."""
    first, second = probes
    if len(first.outputs) != len(second.outputs):
        raise ExportError("model", "the same number of outputs at every shape",
                          f"{len(first.outputs)} at {first.at()}, {len(second.outputs)} at {second.at()}")
    declared = _declared(model, len(first.outputs))
    names = [n for n, _ in declared] if declared else _default_names(len(first.outputs), first.outputs[0].ndim)
    specs = []
    for index, name in enumerate(names):
        shapes = [list(p.outputs[index].shape) for p in probes]
        axes = declared[index][1] if declared else None
        if axes is not None and any(len(s) != len(axes) for s in shapes):
            raise ExportError(f"model output {name!r}", f"rank {len(axes)} ({' '.join(axes)}) as declared in "
                              f"{DECLARATION}", f"shape {shapes[0]} at {first.at()}")
        if len(shapes[0]) != len(shapes[1]) or not shapes[0]:
            raise ExportError(f"model output {name!r}", "one rank (at least 1: the batch) at every shape",
                              f"shape {shapes[0]} at {first.at()}, {shapes[1]} at {second.at()}")
        shape = tuple(_axis(name, axis, [s[axis] for s in shapes], probes, axes[axis] if axes else None)
                      for axis in range(len(shapes[0])))
        value = second.outputs[index]
        if not bool(value.isfinite().all()):
            rows = [int(r) for r in (~value.reshape(len(value), -1).isfinite().all(dim=1)).nonzero().flatten()]
            raise ExportError(f"model output {name!r}", "finite values on every row, also a row whose visual_mask "
                              f"is all False (row {second.sizes['B'] - 1})",
                              f"NaN/inf in rows {rows} of shape {shapes[1]} at {second.at()}")
        specs.append(TensorSpec(name, "float32", shape))
    return tuple(specs)
