"""Cost of the max-corner verification points against the existing grid, on an exported bundle, in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/verify_corner_cost.py BUNDLE

The bundle must record its source checkpoint (``fusionrt export``), so the torch side can load it.
"""

from __future__ import annotations

import json
import sys
import time

from fusionrt.export.api import verification_points
from fusionrt.parity.compare import compare_grid
from fusionrt.parity.grid import grid_points
from fusionrt.runtime import Bundle, Session


def main(path: str) -> None:
    bundle = Bundle.open(path)
    rows = {}
    for graph in bundle.graphs:
        reference, candidate = Session(bundle, "torch", graph), Session(bundle, "onnxruntime", graph)
        spec = bundle.graph(graph)
        grid = grid_points(spec)
        added = [p for p in verification_points(spec) if all(dict(p.sizes) != dict(g.sizes) for g in grid)]
        compare_grid(graph, reference, candidate, grid[:1])  # warm-up
        started = time.perf_counter()
        compare_grid(graph, reference, candidate, grid)
        grid_seconds = time.perf_counter() - started
        started = time.perf_counter()
        corner = compare_grid(graph, reference, candidate, added)
        rows[graph] = {"grid_points": len(grid), "grid_s": round(grid_seconds, 2),
                       "added": [p.label for p in added], "added_s": round(time.perf_counter() - started, 2),
                       "added_max_abs": {k: m["max_abs"] for k, m in corner.summary().items()}}
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
