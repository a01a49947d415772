"""Measure the worst cosine per precision and output, from which fusionrt.parity.gates.COSINE_FLOORS is set.

    python benchmarks/parity_floors.py BUNDLE [--scenes 200] [--json OUT]

Runs ``run_parity`` (torch fp32 reference vs onnxruntime at each reduced precision the bundle lists)
over every graph's grid and ``--scenes`` held-out scenes, and prints, per precision and output, the
worst cosine seen (grid points and scenes together), its distance from 1, and the floor that
distance gives: 1 - max(MARGIN x distance, MIN_DISTANCE), the distance rounded up to one significant
digit. Also prints whether the run passed its default gates.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from fusionrt.parity import run_parity
from fusionrt.progress import progress_for
from fusionrt.runtime import Bundle

MARGIN = 5.0
# Below this distance a floor would gate the arithmetic of one CPU (fp16 and int8 kernels differ by ISA).
MIN_DISTANCE = 1e-3


def floor_for(worst: float) -> float:
    """The cosine floor a worst measured cosine gives (see the module docstring)."""
    distance = max(MARGIN * (1.0 - worst), MIN_DISTANCE)
    digits = 10 ** math.floor(math.log10(distance))
    return round(1.0 - math.ceil(distance / digits - 1e-9) * digits, 6)


def worst_cosines(report) -> dict[str, tuple[float, str]]:
    """Per output: the smallest cosine over every grid point and the scenes, and where it was seen."""
    worst: dict[str, tuple[float, str]] = {}
    places = [(f"{g.graph} [{p.label}]", p.metrics) for g in report.grids for p in g.points]
    if report.scenes is not None:
        places.append((f"scenes ({report.scenes.questions} questions)", report.scenes.metrics))
    for where, metrics in places:
        for output, m in metrics.items():
            if output not in worst or m["cosine"] < worst[output][0]:
                worst[output] = (m["cosine"], where)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--json", default=None, metavar="OUT")
    args = parser.parse_args()
    bundle = Bundle.open(args.bundle)
    precisions = [p for p in bundle.graph("fusion").precisions if p != "fp32"]
    rows, record = [], {}
    for precision in precisions:
        report = run_parity(bundle, "torch", "onnxruntime", candidate_precision=precision, scenes=args.scenes,
                            progress=progress_for())
        worst = worst_cosines(report)
        record[precision] = {"passed": report.passed, "agreement": report.scenes.agreement if report.scenes else None,
                             "accuracy": report.scenes.accuracy if report.scenes else None,
                             "worst_cosine": {o: {"cosine": c, "where": w, "floor": floor_for(c)}
                                              for o, (c, w) in worst.items()}}
        for output, (cosine, where) in worst.items():
            rows.append(f"| {precision} | {output} | {cosine:.6f} | {1 - cosine:.2e} | {where} | "
                        f"{floor_for(cosine):g} |")
        print(f"{precision}: default gates {'passed' if report.passed else 'FAILED'}", file=sys.stderr)
    print("| precision | output | worst cosine | 1 - cosine | where | floor (x5, >= 1e-3) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
