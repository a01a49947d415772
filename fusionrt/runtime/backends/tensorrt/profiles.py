"""Optimization profiles: min / opt / max of each dynamic dim, from the manifest or a ``--profiles`` spec.

A profile is kept per dim symbol (``{"B": (1, 1, 16), "T": ...}``) because that is how the manifest
states ranges; :meth:`ShapeProfile.input_shapes` turns it into per-input shapes for TensorRT.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fusionrt.bundle.spec import GraphSpec
from fusionrt.errors import InputError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeProfile:
    """``dims``: symbol -> (min, opt, max) for every dynamic dim of one graph."""

    dims: Mapping[str, tuple[int, int, int]]

    def input_shapes(self, graph: GraphSpec) -> dict[str, tuple[Shape, Shape, Shape]]:
        """Input name -> (min shape, opt shape, max shape)."""
        out = {}
        for tensor in graph.inputs:
            shapes = tuple(tuple(d if isinstance(d, int) else self.dims[d][k] for d in tensor.shape)
                           for k in range(3))
            out[tensor.name] = shapes
        return out

    def to_dict(self) -> dict[str, list[int]]:
        return {s: list(r) for s, r in self.dims.items()}

    def describe(self) -> str:
        return ", ".join(f"{s}={lo}:{opt}:{hi}" for s, (lo, opt, hi) in self.dims.items())


def default_profile(graph: GraphSpec) -> ShapeProfile:
    """One profile spanning the manifest's ranges, tuned for its ``opt`` sizes. Only the inputs' dims: an
    output's own dim (a step graph's present length K = P + S) follows from them and is no profile setting."""
    used = {d for t in graph.inputs for d in t.shape if isinstance(d, str)}
    return ShapeProfile({s: (r.min, r.opt, r.max) for s, r in graph.dims.items() if s in used})


# A decoder step graph (caption export): past length P and new tokens S. Decoding runs S=1 at every P from 0 to
# the cap, so its default profiles are S=1 buckets over P (kernels tuned near each bucket's middle instead of
# once for all lengths), then the manifest's full range for prompts (S>1) and anything else it allows.
PAST, NEW = "P", "S"
DECODE_BUCKETS = 3


def default_profiles(graph: GraphSpec) -> list[ShapeProfile]:
    """The profiles ``fusionrt build`` gives ``graph`` without ``--profiles``: the manifest's single range, or for
    a step graph (dims P and S) :data:`DECODE_BUCKETS` decode profiles (S=1, P split into equal buckets) first,
    then the full range."""
    full = default_profile(graph)
    if PAST not in graph.dims or NEW not in graph.dims or graph.dims[NEW].min > 1:
        return [full]
    past = graph.dims[PAST]
    count = min(DECODE_BUCKETS, past.max - past.min + 1)
    edges = [past.min + (past.max - past.min + 1) * i // count for i in range(count + 1)]
    buckets = [ShapeProfile({**full.dims, NEW: (1, 1, 1), PAST: (lo, (lo + end - 1) // 2, end - 1)})
               for lo, end in itertools.pairwise(edges)]
    return [*buckets, full]


def parse_spec(text: str) -> dict[str, tuple[int, int, int]]:
    """``"B=1:1:8,T=4:16:32"`` -> ``{"B": (1, 1, 8), "T": (4, 16, 32)}``; ``B=8`` means 8:8:8."""
    dims = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        symbol, _, values = part.partition("=")
        try:
            numbers = tuple(int(v) for v in values.split(":"))
        except ValueError:
            numbers = ()
        if not symbol.strip() or len(numbers) not in (1, 3):
            raise InputError("--profiles", "DIM=MIN:OPT:MAX[,DIM=...] (or DIM=SIZE), e.g. B=1:1:8", repr(text))
        dims[symbol.strip()] = numbers * 3 if len(numbers) == 1 else numbers
    if not dims:
        raise InputError("--profiles", "DIM=MIN:OPT:MAX[,DIM=...], e.g. B=1:1:8", repr(text))
    return dims


def profiles_for(graph: GraphSpec, specs: Sequence[Mapping[str, tuple[int, int, int]]] = ()) -> list[ShapeProfile]:
    """The profiles of ``graph``: one per spec that names any of its dims (the rest from the manifest), or
    :func:`default_profiles`. A spec outside the manifest's range is refused."""
    base = default_profile(graph)
    profiles = []
    for spec in specs:
        own = {s: r for s, r in spec.items() if s in graph.dims}
        if not own:
            continue
        for symbol, (lo, opt, hi) in own.items():
            allowed = graph.dims[symbol]
            if not allowed.min <= lo <= opt <= hi <= allowed.max:
                raise InputError(f"profile dim {symbol} of graph {graph.name!r}",
                                 f"min <= opt <= max inside the manifest's range [{allowed.min}, {allowed.max}]",
                                 f"{lo}:{opt}:{hi}")
        profiles.append(ShapeProfile({**base.dims, **own}))
    return profiles or default_profiles(graph)


def unknown_symbols(graphs: Iterable[GraphSpec], specs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dims named in ``specs`` that no graph has (a typo the build should refuse)."""
    known = {s for g in graphs for s in g.dims}
    return sorted({s for spec in specs for s in spec if s not in known})


def polygraphy_profiles(graph: GraphSpec, profiles: Sequence[ShapeProfile]) -> list[Any]:
    """``polygraphy.backend.trt.Profile`` objects: every input of the graph, min/opt/max shapes."""
    from polygraphy.backend.trt import Profile

    out = []
    for profile in profiles:
        trt_profile = Profile()
        for name, (lo, opt, hi) in profile.input_shapes(graph).items():
            trt_profile.add(name, lo, opt, hi)
        out.append(trt_profile)
    return out


def covering_profiles(ranges: Sequence[Mapping[str, tuple[Shape, Shape]]], shapes: Mapping[str, Shape]) -> list[int]:
    """Indices of the profiles whose ``{input: (min shape, max shape)}`` cover ``shapes`` (may be empty)."""

    def inside(shape: Shape, lo: Shape, hi: Shape) -> bool:
        return len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))

    return [index for index, profile in enumerate(ranges)
            if all(inside(shapes[name], lo, hi) for name, (lo, hi) in profile.items())]


def tightest_profile(ranges: Sequence[Mapping[str, tuple[Shape, Shape]]], shapes: Mapping[str, Shape]) -> int | None:
    """The covering profile with the narrowest ranges (e.g. the decode bucket of the current past length rather
    than the full range: its kernels were tuned nearer these shapes), or None."""

    def width(index: int) -> int:
        return sum(b - a for lo, hi in ranges[index].values() for a, b in zip(lo, hi, strict=True))

    covering = covering_profiles(ranges, shapes)
    return min(covering, key=width) if covering else None


def describe_ranges(ranges: Sequence[Mapping[str, tuple[Shape, Shape]]]) -> str:
    """``profile 0: input_ids [1,1]..[16,16]; ...`` for error messages."""
    return " | ".join(
        f"profile {i}: " + ", ".join(f"{name} {list(lo)}..{list(hi)}" for name, (lo, hi) in profile.items())
        for i, profile in enumerate(ranges))
