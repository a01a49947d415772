"""Check a feed against a :class:`GraphSpec` before any backend sees it.

Each check raises :class:`fusionrt.errors.InputError` naming the input, what the graph expects and
what was received: names, dtype, rank, static dims, each dynamic dim inside its range, one size per
dim symbol across inputs, finite float values, integer values inside their range, masks that are
prefixes (``True...True False...False`` per row; see :class:`TensorSpec`). A dim that may
be empty (``pad_when_empty``) is padded from 0 to one zero slot, which is a masked slot for masks.

This runs on every call, so the per-input facts are computed once and the common case (a valid
feed) takes few numpy calls: at batch 1 the whole check is ~1% of a small model's ORT run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fusionrt.bundle.spec import DimRange, GraphSpec, TensorSpec
from fusionrt.errors import InputError


@dataclass(frozen=True)
class _Plan:
    spec: TensorSpec
    dtype: np.dtype
    dims: tuple[tuple[int, int | str, DimRange | None], ...]  # (axis, static size or symbol, range)
    is_float: bool
    unsigned: np.dtype | None  # same-width unsigned dtype, for integer inputs whose range starts at 0


class FeedValidator:
    """Callable ``feed -> feed`` for one graph; stateless, so safe to share across threads."""

    def __init__(self, graph: GraphSpec, max_abs: Mapping[str, float] | None = None) -> None:
        self.graph = graph
        self._max_abs = dict(max_abs or {})
        self._names = [t.name for t in graph.inputs]
        self._name_set = frozenset(self._names)
        self._plans = [
            _Plan(t, t.np_dtype, tuple((axis, d, graph.dims[d] if isinstance(d, str) else None)
                                       for axis, d in enumerate(t.shape)), t.np_dtype.kind == "f",
                  np.dtype(f"u{t.np_dtype.itemsize}") if t.np_dtype.kind == "i" and t.value_range
                  and t.value_range[0] == 0 else None)
            for t in graph.inputs
        ]
        self._pad_symbols = {s for s, r in graph.dims.items() if r.pad_when_empty}

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            raise InputError("feed", f"a mapping of input name to numpy array ({', '.join(self._names)})",
                             type(feed).__name__)
        if feed.keys() != self._name_set:
            self._names_error(feed)
        bound: dict[str, tuple[int, str]] = {}
        for plan in self._plans:
            self._check(plan, feed[plan.spec.name], bound)
        for name, limit in self._max_abs.items():
            array = feed[name]
            if array.size and (array.max() > limit or array.min() < -limit):
                raise InputError(name, f"|values| <= {limit:g} (the largest this graph's precision carries, "
                                       "measured and recorded in manifest.json safe_ranges)",
                                 f"values from {array.min():g} to {array.max():g}")
        out = dict(feed)
        if self._pad_symbols:
            empty = [s for s in self._pad_symbols if s in bound and bound[s][0] == 0]
            if empty:
                out = {name: self._pad(self.graph.input(name), array, empty) for name, array in out.items()}
        return out

    def _names_error(self, feed: Mapping[str, np.ndarray]) -> None:
        for name in self._names:
            if name not in feed:
                raise InputError(name, f"an array for input {name!r} of graph {self.graph.name!r} "
                                       f"({self.graph.input(name).describe()})", "no such key in the feed")
        extra = sorted(str(k) for k in feed if k not in self._name_set)
        raise InputError(extra[0], f"only the inputs {self._names} of graph {self.graph.name!r}",
                         f"unexpected input(s) {extra}")

    @staticmethod
    def _check(plan: _Plan, array: object, bound: dict[str, tuple[int, str]]) -> None:
        spec = plan.spec
        if not isinstance(array, np.ndarray):
            raise InputError(spec.name, f"a numpy.ndarray, {spec.describe()}", type(array).__name__)
        if isinstance(array, np.ma.MaskedArray):
            # A backend reads the data under the mask (NaN included): masks are the graph's mask inputs.
            raise InputError(spec.name, f"a plain numpy.ndarray, {spec.describe()} (mark padding with the "
                                        "graph's mask inputs)", "a numpy.ma.MaskedArray")
        # numpy's builtin dtypes are singletons: the identity test spares a comparison call per input.
        if array.dtype is not plan.dtype and array.dtype != plan.dtype:
            raise InputError(spec.name, f"dtype {spec.dtype} ({spec.describe()})", f"dtype {array.dtype}")
        shape = array.shape
        if len(shape) != len(plan.dims):
            raise InputError(spec.name, f"rank {len(plan.dims)} {spec.shape_text()}",
                             f"rank {array.ndim} with shape {list(shape)}")
        for axis, want, rng in plan.dims:
            got = shape[axis]
            if rng is None:
                if got != want:
                    raise InputError(spec.name, f"dim {axis} = {want} (shape {spec.shape_text()})",
                                     f"{got} (shape {list(shape)})")
                continue
            seen = bound.get(want)
            if seen is not None:
                if got != seen[0]:
                    raise InputError(spec.name, f"dim {axis} ({want}) = {seen[0]}, the same as in {seen[1]!r}",
                                     f"{got} (shape {list(shape)})")
                continue
            if not (rng.min <= got <= rng.max or (got == 0 and rng.pad_when_empty)):
                raise InputError(spec.name, f"dim {axis} ({want}) in {rng.describe()}", f"{got} (shape {list(shape)})")
            bound[want] = (got, spec.name)
        # A finite sum proves every value finite (NaN and Inf propagate); only an overflowing sum of
        # large finite values needs the element-wise check.
        if plan.is_float and not np.isfinite(np.add.reduce(array, axis=None, dtype=np.float64)) \
                and not np.isfinite(array).all():
            bad = ~np.isfinite(array)
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(spec.name, "finite values (no NaN or Inf)",
                             f"{int(bad.sum())} non-finite value(s), the first {array[first]} at index {list(first)}")
        if spec.value_range is not None and array.size:
            low, high = spec.value_range
            # For [0, high] one reduction suffices: viewed as unsigned, negative ids become huge.
            if plan.unsigned is not None and int(array.view(plan.unsigned).max()) <= high:
                return
            got_low, got_high = int(array.min()), int(array.max())
            if got_low < low or got_high > high:
                raise InputError(spec.name, f"values in [{low}, {high}]", f"values from {got_low} to {got_high}")
        if spec.prefix_mask and array.ndim == 2:
            # A True right after a False is padding before a real item.
            gap = ~array[:, :-1] & array[:, 1:]
            if gap.any():
                row, col = (int(i) for i in np.argwhere(gap)[0])
                raise InputError(spec.name, "a prefix mask per row (True...True then False...False: real items "
                                            "first, padding last)",
                                 f"row {row} with padding before a real item at index {col + 1}")

    @staticmethod
    def _pad(spec: TensorSpec, array: np.ndarray, symbols: list[str]) -> np.ndarray:
        shape = [1 if d in symbols else n for d, n in zip(spec.shape, array.shape, strict=True)]
        if shape == list(array.shape):
            return array
        return np.zeros(shape, dtype=array.dtype)
