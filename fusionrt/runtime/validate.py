"""Check a feed against a :class:`GraphSpec` before any backend sees it.

Each check raises :class:`fusionrt.errors.InputError` naming the input, what the graph expects and
what was received: names, dtype, rank, static dims, each dynamic dim inside its range, one size per
dim symbol across inputs, finite float values, integer values inside their range. A dim that may
be empty (``pad_when_empty``) is padded from 0 to one zero slot, which is a masked slot for masks.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fusionrt.errors import InputError
from fusionrt.runtime.spec import GraphSpec, TensorSpec


class FeedValidator:
    """Callable ``feed -> feed`` for one graph; stateless, so safe to share across threads."""

    def __init__(self, graph: GraphSpec) -> None:
        self.graph = graph
        self._names = [t.name for t in graph.inputs]
        self._pad_symbols = {s for s, r in graph.dims.items() if r.pad_when_empty}

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            raise InputError("feed", f"a mapping of input name to numpy array ({', '.join(self._names)})",
                             type(feed).__name__)
        for name in self._names:
            if name not in feed:
                raise InputError(name, f"an array for input {name!r} of graph {self.graph.name!r} "
                                       f"({self.graph.input(name).describe()})", "no such key in the feed")
        extra = sorted(str(k) for k in feed if k not in self._names)
        if extra:
            raise InputError(extra[0], f"only the inputs {self._names} of graph {self.graph.name!r}",
                             f"unexpected input(s) {extra}")
        bound: dict[str, tuple[int, str]] = {}
        for spec in self.graph.inputs:
            self._check(spec, feed[spec.name], bound)
        out = dict(feed)
        empty = [s for s in self._pad_symbols if bound.get(s, (1,))[0] == 0]
        if empty:
            out = {name: self._pad(self.graph.input(name), array, empty) for name, array in out.items()}
        return out

    def _check(self, spec: TensorSpec, array: object, bound: dict[str, tuple[int, str]]) -> None:
        if not isinstance(array, np.ndarray):
            raise InputError(spec.name, f"a numpy.ndarray, {spec.describe()}", type(array).__name__)
        if array.dtype != spec.np_dtype:
            raise InputError(spec.name, f"dtype {spec.dtype} ({spec.describe()})", f"dtype {array.dtype}")
        if array.ndim != len(spec.shape):
            raise InputError(spec.name, f"rank {len(spec.shape)} {spec.shape_text()}",
                             f"rank {array.ndim} with shape {list(array.shape)}")
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(want, int):
                if got != want:
                    raise InputError(spec.name, f"dim {axis} = {want} (shape {spec.shape_text()})",
                                     f"{got} (shape {list(array.shape)})")
                continue
            if want in bound:
                size, first = bound[want]
                if got != size:
                    raise InputError(spec.name, f"dim {axis} ({want}) = {size}, the same as in {first!r}",
                                     f"{got} (shape {list(array.shape)})")
                continue
            rng = self.graph.dims[want]
            if not (rng.min <= got <= rng.max or (got == 0 and rng.pad_when_empty)):
                raise InputError(spec.name, f"dim {axis} ({want}) in {rng.describe()}",
                                 f"{got} (shape {list(array.shape)})")
            bound[want] = (got, spec.name)
        if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
            bad = ~np.isfinite(array)
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(spec.name, "finite values (no NaN or Inf)",
                             f"{int(bad.sum())} non-finite value(s), the first {array[first]} at index {list(first)}")
        if spec.value_range is not None and array.size:
            low, high = spec.value_range
            got_low, got_high = int(array.min()), int(array.max())
            if got_low < low or got_high > high:
                raise InputError(spec.name, f"values in [{low}, {high}]", f"values from {got_low} to {got_high}")

    @staticmethod
    def _pad(spec: TensorSpec, array: np.ndarray, symbols: list[str]) -> np.ndarray:
        shape = [1 if d in symbols else n for d, n in zip(spec.shape, array.shape, strict=True)]
        if shape == list(array.shape):
            return array
        return np.zeros(shape, dtype=array.dtype)
