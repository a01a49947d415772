"""``write_report(bundle_dir)``: report.md (for a reviewer), report.json (every number) and the PNG plots.

Everything comes from what the pipeline stored in the bundle: the manifest (export verification,
quantization budgets, stage records), parity.json, accuracy.json and bench.json.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from fusionrt.bundle.manifest import Bundle
from fusionrt.io import atomic_write_bytes, atomic_write_json, json_safe
from fusionrt.report import plots

REPORT_MD, REPORT_JSON = "report.md", "report.json"


def _load(bundle: Bundle, name: str) -> Any:
    return json.loads((bundle.path / name).read_text()) if name in bundle.manifest["files"] else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def collect(bundle_dir: str | Path, result: Any = None) -> dict[str, Any]:
    """Every number of the report as one dict (what report.json holds)."""
    bundle = Bundle.open(bundle_dir, verify=False)
    manifest = bundle.manifest
    stages = manifest.get("pipeline", {}).get("stages", {})
    return json_safe({
        "bundle": str(bundle.path), "source": manifest.get("source"),
        "gates": [g.to_dict() for g in result.gates] if result is not None else [],
        "stages": {name: {k: v for k, v in entry.items() if k != "summary"} for name, entry in stages.items()},
        "this_run": [s.to_dict() for s in result.stages] if result is not None else [],
        "export_verification": manifest.get("verification"),
        "quantization": {p: {k: v for k, v in q.items() if k in ("heldout", "graphs", "method", "seconds")}
                         for p, q in manifest.get("quantization", {}).items()},
        "parity": [{k: r[k] for k in ("candidate", "gates", "passed", "failures")} | {
            "grid_worst": {g["graph"]: g["worst"] for g in r["grids"]},
            "scenes": r["scenes"]} for r in (_load(bundle, "parity.json") or [])],
        "accuracy": _load(bundle, "accuracy.json"),
        "bench": _load(bundle, "bench.json"),
    })


def _markdown(data: dict[str, Any], pngs: dict[str, str]) -> str:
    source = data.get("source") or {}
    lines = ["# fusionrt pipeline report", "", f"Bundle `{data['bundle']}`, exported from "
             f"`{source.get('path') or source.get('reference') or '?'}`.", ""]
    if data["gates"]:
        failed = [g for g in data["gates"] if g["status"] == "failed"]
        lines += [f"**{'FAILED: ' + failed[0]['name'] if failed else 'All gates passed.'}**", "",
                  "| gate | status | detail |", "|---|---|---|"]
        lines += [f"| {g['name']} | {g['status']} | {g['message'][:160]} |" for g in data["gates"]]
        lines.append("")
    if data.get("plots"):
        lines += [f"Plots {data['plots']}.", ""]
    if data["this_run"]:
        lines += ["## Stages (this run)", "", "| stage | status | seconds | note |", "|---|---|---|---|"]
        lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['note']} |" for s in data["this_run"]]
        lines.append("")
    accuracy = data.get("accuracy")
    if accuracy:
        kinds = list(accuracy["questions_per_kind"])
        lines += ["## Accuracy on held-out scenes", "",
                  f"{accuracy['questions']} questions on {accuracy['scenes']} held-out scenes; agreement = argmax "
                  "agreement with fp32 PyTorch.", "",
                  "| model | overall | agreement | " + " | ".join(kinds) + " |", "|---" * (3 + len(kinds)) + "|"]
        for label, r in accuracy["accuracy"].items():
            lines.append(f"| {label} | {_pct(r['overall'])} | {_pct(r['agreement'])} | "
                         + " | ".join(_pct(r["per_kind"].get(k)) for k in kinds) + " |")
        lines.append("")
    if "accuracy" in pngs:
        lines += [f"![accuracy per precision and kind]({pngs['accuracy']})", ""]
    if data["parity"]:
        lines += ["## Parity against fp32 PyTorch (shape grid and held-out scenes)", "",
                  "| candidate | passed | fusion grid max abs (hidden / logits) | scenes max abs logits | "
                  "scenes cosine logits | agreement |", "|---|---|---|---|---|---|"]
        for r in data["parity"]:
            grid = r["grid_worst"].get("fusion", {})
            scenes = r["scenes"] or {}
            logits = scenes.get("metrics", {}).get("logits", {})
            lines.append(f"| {r['candidate']['backend']} {r['candidate']['precision']} | {r['passed']} | "
                         f"{grid.get('hidden', {}).get('max_abs', '-'):.3g} / "
                         f"{grid.get('logits', {}).get('max_abs', '-'):.3g} | {logits.get('max_abs', 0):.3g} | "
                         f"{logits.get('cosine', 0):.6f} | {_pct(scenes.get('argmax_agreement'))} |")
        lines.append("")
    if "errors" in pngs:
        lines += [f"![error distribution]({pngs['errors']})", ""]
    bench = data.get("bench")
    if bench:
        peaks = bench["peaks"]
        lines += ["## Latency (fusion graph)", "", f"{bench['method']}. Machine: {bench['machine']['cpu']}, "
                  f"{bench['machine']['cores']} cores, load average {bench['machine']['load_average_before']:.2f} "
                  "before the run (other work on the machine skews absolute times; ratios are from one run).", "",
                  f"Peak: paper fp32 {peaks['paper']['fp32_flops'] / 1e9:.1f} GFLOP/s "
                  f"({'; '.join(peaks['paper']['assumptions'])}); large GEMM ({peaks['gemm_size']}^3) measured now: "
                  f"fp32 {peaks['measured_fp32_flops'] / 1e9:.1f} GFLOP/s, int8 {peaks['measured_int8_ops'] / 1e9:.1f} "
                  "GOP/s.", "",
                  "| backend | precision | B/T/M | p50 ms | p90 ms | p99 ms | samples/s | vs PyTorch | GFLOP | "
                  "achieved GFLOP/s | of GEMM rate |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in bench["rows"]:
            speed = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
            lines.append(f"| {r['backend']} | {r['precision']} | {'/'.join(map(str, r['shape']))} | "
                         f"{r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['samples_per_s']:.1f} | "
                         f"{speed} | {r['flops'] / 1e9:.3f} | {r['achieved_flops'] / 1e9:.1f} | "
                         f"{_pct(r['fraction_of_measured_peak'])} |")
        for c in bench.get("concurrency", []):
            lines.append(f"\nConcurrency ({c['backend']} {c['precision']}, {'/'.join(map(str, c['shape']))}): "
                         f"{c['one_thread_calls_per_s']:.1f} calls/s on one caller thread, "
                         f"{c['many_threads_calls_per_s']:.1f} on {c['threads']} ({c['ratio']:.2f}x).")
        if bench.get("app"):
            stages = ", ".join(f"{k.replace('_', ' ')} {v:.3f} ms" for k, v in bench["app"]["stages_ms"].items())
            lines.append(f"\nApp, image to answer (median over {bench['app']['scenes']} scenes): "
                         f"{bench['app']['total_ms']:.3f} ms = {stages}.")
        for name, why in bench.get("skipped", {}).items():
            lines.append(f"\nNot timed: {name}: {why}")
        lines.append("")
        for key, title in (("latency", "latency vs shape"), ("speedup", "speed-up over PyTorch"),
                           ("peak", "fraction of peak")):
            if key in pngs:
                lines += [f"![{title}]({pngs[key]})", ""]
    return "\n".join(lines) + "\n"


def write_report(bundle_dir: str | Path, result: Any = None, out_dir: str | Path | None = None) -> list[str]:
    """Write report.md, report.json and the plots into ``out_dir`` (default: the bundle); return their names.

    ``result``: the pipeline's :class:`fusionrt.pipeline.PipelineResult` (gates and stages of this run).
    """
    data = collect(bundle_dir, result)
    bundle_dir = Path(out_dir) if out_dir is not None else Path(bundle_dir)
    pngs: dict[str, str] = {}
    if importlib.util.find_spec("matplotlib") is None:
        data["plots"] = "not drawn: matplotlib is not installed (pip install 'fusionrt[plots]')"
    elif data.get("accuracy"):
        pngs["accuracy"] = plots.accuracy_by_kind(data["accuracy"], bundle_dir / "report-accuracy.png")
        if data["accuracy"]["errors"]:
            pngs["errors"] = plots.error_distribution(data["accuracy"]["errors"], bundle_dir / "report-errors.png")
    if data.get("bench") and "plots" not in data:
        rows = data["bench"]["rows"]
        pngs["latency"] = plots.latency_vs_shape(rows, bundle_dir / "report-latency.png")
        if any(r["speedup_vs_torch"] for r in rows):
            pngs["speedup"] = plots.speedup(rows, bundle_dir / "report-speedup.png")
        pngs["peak"] = plots.peak_fraction(rows, data["bench"]["peaks"], bundle_dir / "report-peak.png")
    atomic_write_json(bundle_dir / REPORT_JSON, data)
    atomic_write_bytes(bundle_dir / REPORT_MD, _markdown(data, pngs).encode())
    return [REPORT_MD, REPORT_JSON, *pngs.values()]
