"""The pipeline's stages for a caption checkpoint: export (two decoder graphs + region encoder, verified),
calibrate (ranges from real decoding), fp16, int8 (int8 and int8-cpu), engines, parity with caption gates, a light
generation benchmark and the report.

The stage driver, keys, reuse and locking are :mod:`fusionrt.pipeline.run`'s (``run`` below is its ``_Run``); this
module only supplies what differs for captions. Gates: export verification (logits within 1e-4 of PyTorch on the
shape grid), each precision's budget (exact match and sacrebleu BLEU drop at most 1 point against fp32 PyTorch on
``heldout_scenes`` held-out scenes), and parity per backend and precision (fp32: token-identical greedy captions on
at least 99.5% of ``parity_scenes`` and logits within 1e-4 at every step; the others: their budget).
One PyTorch reference (greedy, recompute) is decoded per run and shared by every measurement.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.calibration.caption import METHOD, RANGES_FILE, calibrate_caption, quantize_caption
from fusionrt.calibration.errors import BudgetExceededError
from fusionrt.caption.captioner import CAPTION_TASK, Captioner
from fusionrt.caption.generate import greedy
from fusionrt.caption.steppers import CAPTION_STEP
from fusionrt.engine.stage import build_all_engines, engine_unavailable_reason
from fusionrt.errors import InputError
from fusionrt.export.caption import export_caption
from fusionrt.export.errors import VerificationError
from fusionrt.io import atomic_path, atomic_write_bytes, atomic_write_json, json_safe
from fusionrt.parity.caption import BUDGET_POINTS, CAPTION_BACKENDS, CaptionReference, caption_parity, caption_reference
from fusionrt.pipeline.result import Gate, stage_key
from fusionrt.report import write_report

GRAPHS_OF = {"fp32": ("fp32",), "fp16": ("fp16",), "int8": ("int8", "int8-cpu")}
PARITY_FILE, BENCH_FILE, PLOT_FILE = "caption_parity.json", "caption_bench.json", "report-caption-logits.png"
BENCH_SCENES = 8  # one batch of 8; B=1 times the first BENCH_SCENES_B1 of them (PyTorch eager is slow there)
BENCH_SCENES_B1 = 2
BENCH_BLOCKS = 3



class CaptionStages:
    """The caption stages of one pipeline run (``run``: :mod:`fusionrt.pipeline.run`'s ``_Run``, untyped here:
    importing it would make the two modules import each other)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.config = run.config
        self._reference: CaptionReference | None = None
        if self.config.calib_method != METHOD:
            raise InputError("--calib-method", f"{METHOD} for a caption checkpoint (its precisions hold their budget "
                             "with it)", repr(self.config.calib_method))
        bad = [b for b in self.config.backends if b not in CAPTION_BACKENDS]
        if bad:
            raise InputError("--backends", f"some of {list(CAPTION_BACKENDS)} for a caption bundle", ",".join(bad))

    def reference(self, scenes: int) -> CaptionReference:
        """fp32 PyTorch greedy on the first ``scenes`` held-out scenes, decoded once per run for the largest need."""
        need = max(self.config.heldout_scenes, self.config.parity_scenes)
        if self._reference is None:
            self.run.note(f"decoding {need} held-out scenes with fp32 PyTorch (the reference of every measurement)")
            self._reference = caption_reference(self.run.bundle(), need, progress=self.run.progress)
        return self._reference.head(scenes)

    def graphs(self) -> list[str]:
        """Every requested precision the bundle's step graph holds now (int8 means int8 and int8-cpu)."""
        present = self.run.bundle().graph(CAPTION_STEP).precisions
        return [g for p in self.config.precisions for g in GRAPHS_OF[p] if g in present]

    # ---- stages ---------------------------------------------------------------------------------
    def export(self) -> tuple[dict[str, Any], list[str]]:
        try:
            export_caption(self.run.checkpoint, self.run.out, progress=self.run.progress)
        except VerificationError as exc:
            return {"verification": {"passed": False, "failures": exc.failures[:20]}}, []
        verification = self.run.refresh().manifest["verification"]
        self.run.recorded = {}  # a fresh bundle: nothing downstream survives an export
        return {"verification": {"passed": True, "graphs": verification["graphs"],
                                 "tolerance": verification["tolerance"]}}, []

    def calibrate(self) -> tuple[dict[str, Any], list[str]]:
        record = calibrate_caption(self.run.out, scenes=self.config.calib_samples, progress=self.run.progress)
        return {"scenes": record["scenes"], "step_feeds": record["step_feeds"],
                "past_lengths": record["past_lengths"], "ranges": RANGES_FILE}, []

    def quantize(self, precision: str) -> tuple[dict[str, Any], list[str]]:
        try:
            report = quantize_caption(self.run.out, GRAPHS_OF[precision],
                                      reference=self.reference(self.config.heldout_scenes), progress=self.run.progress)
            failed = None
        except BudgetExceededError as exc:
            report, failed = exc.report, str(exc)
        self.run.refresh()
        return {"graphs": {p: _brief(r) for p, r in report["precisions"].items()},
                **({"failed": failed} if failed else {})}, []

    def engines(self) -> tuple[dict[str, Any], list[str]]:
        return build_all_engines(self.run.out, self.graphs(), self.run.progress), []

    def parity(self) -> tuple[dict[str, Any], list[str]]:
        bundle, reports, checks = self.run.bundle(), [], []
        reference = self.reference(self.config.parity_scenes)
        for backend in self.config.backends:
            for precision in self.graphs():
                self.run.note(f"caption parity {precision} on {backend} vs fp32 PyTorch")
                started = time.perf_counter()
                report = caption_parity(bundle, precision=precision, reference=reference, backend=backend,
                                        progress=self.run.progress)
                reports.append(report)
                checks.append({"precision": precision, "backend": backend, "passed": report["passed"],
                               **_brief(report), "seconds": round(time.perf_counter() - started, 2)})
        atomic_write_json(self.run.stage_dir / PARITY_FILE, json_safe(reports))
        return {"checks": checks}, [PARITY_FILE]

    def bench(self) -> tuple[dict[str, Any], list[str]]:
        report = bench_generation(self.run.bundle(), self.graphs(), self.reference(BENCH_SCENES),
                                  self.config.threads)
        atomic_write_json(self.run.stage_dir / BENCH_FILE, json_safe(report))
        return {"tokens_per_s": {r["label"]: r["tokens_per_s"] for r in report["rows"]}}, [BENCH_FILE]

    def report(self) -> tuple[dict[str, Any], list[str]]:
        files = write_report(self.run.out, self.run.result, out_dir=self.run.stage_dir)
        files += write_caption_section(self.run.bundle(), self.run.stage_dir)
        return {"files": files}, list(dict.fromkeys(files))


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    """A caption parity report without its per-scene lists (what stage summaries and gates keep)."""
    return {"scenes": report["scenes"], "token_identical": report["token_identical"],
            "first_divergent_step": report["first_divergent_step"], "exact_match": report["exact_match"],
            "bleu": report["bleu"], "logits_max_abs": max(report["per_step_logits_max_abs"], default=0.0),
            "gates": report["gates"], "passed": report["passed"]}


def _measured(brief: dict[str, Any]) -> str:
    bleu = brief["bleu"]
    exact = brief["exact_match"]
    text = (f"token-identical {100 * brief['token_identical']:.2f}%, exact match {100 * exact['candidate']:.2f}% "
            f"(fp32 PyTorch {100 * exact['reference']:.2f}%)")
    if bleu["candidate"] is not None:
        text += f", BLEU {bleu['candidate']:.2f} ({bleu['reference']:.2f})"
    return text + f", logits max abs {brief['logits_max_abs']:.2g} on {brief['scenes']} held-out scenes"


def _failures(brief: dict[str, Any]) -> str:
    return "; ".join(f"{name} {gate['value']:.4g} not {'>=' if 'min' in gate else '<='} "
                     f"{gate.get('min', gate.get('max'))}"
                     for name, gate in brief["gates"].items() if not gate["passed"])


def _export_gates(summary: dict[str, Any]) -> list[Gate]:
    v = summary["verification"]
    if not v["passed"]:
        return [Gate("export verification", "export", "failed", "ONNX Runtime differs from PyTorch on the grid",
                     "\n".join(v["failures"]))]
    worst = "; ".join(f"{graph} " + ", ".join(f"{output} {m['max_abs']:.2g}" for output, m in d["worst"].items())
                      for graph, d in v["graphs"].items())
    return [Gate("export verification", "export", "passed",
                 f"ONNX Runtime vs PyTorch on the shape grid (P=0 and P=max, S=1 and S>1, masked rows), worst max abs "
                 f"error: {worst}")]


def _budget_gates(stage: str) -> Any:
    def gates(summary: dict[str, Any]) -> list[Gate]:
        out = [Gate(f"caption budget {p}", stage, "passed" if b["passed"] else "failed",
                    _failures(b) or f"within {BUDGET_POINTS} point of fp32 PyTorch: {_measured(b)}", _measured(b))
               for p, b in summary["graphs"].items()]
        if summary.get("failed") and not any(g.status == "failed" for g in out):
            out.append(Gate(f"caption budget {stage}", stage, "failed", summary["failed"]))
        return out
    return gates


def _parity_gates(summary: dict[str, Any]) -> list[Gate]:
    return [Gate(f"caption parity {c['precision']} {c['backend']}", "parity", "passed" if c["passed"] else "failed",
                 _failures(c) or _measured(c), json.dumps(c["gates"]), c["seconds"]) for c in summary["checks"]]


def bench_generation(bundle: Any, precisions: list[str], reference: CaptionReference,
                     threads: int | None = None) -> dict[str, Any]:
    """Greedy generation timed per precision (ONNX Runtime, KV cache) and for PyTorch eager with its own cache, on
    the reference's visual inputs: tokens/s at B=1 (``BENCH_SCENES_B1`` scenes one by one) and B=8, time to first
    token at B=1. Light: ``BENCH_BLOCKS``
    blocks of consecutive calls, the median block kept (under load, a ratio from one run is what holds)."""
    import os

    import torch

    from fusionrt.caption.steppers import TorchStepper
    from fusionrt.model.caption_checkpoint import load_caption_checkpoint
    from fusionrt.parity.caption import _source_checkpoint

    visual, mask = reference.batches[0]
    visual, mask = visual[:BENCH_SCENES], mask[:BENCH_SCENES]
    steppers: dict[str, Any] = {}
    for precision in precisions:
        captioner = Captioner(bundle.path, precision, threads=threads)
        steppers[f"onnxruntime {precision}"] = (captioner.stepper, captioner)
    decoder = load_caption_checkpoint(_source_checkpoint(bundle, None)).decoder
    if threads:
        torch.set_num_threads(threads)
    steppers["torch eager (cache)"] = (TorchStepper(decoder), captioner)
    rows = []
    for label, (stepper, captioner) in steppers.items():
        kwargs = {"bos": captioner.bos, "eos": captioner.eos, "max_new_tokens": captioner.max_new_tokens}
        row: dict[str, Any] = {"label": label}
        for batch in (1, 8):
            blocks = []
            for _ in range(BENCH_BLOCKS):
                started, tokens = time.perf_counter(), 0
                for start in range(0, len(visual) if batch > 1 else BENCH_SCENES_B1, batch):
                    tokens += sum(len(r) for r in greedy(stepper, visual[start:start + batch],
                                                         mask[start:start + batch], **kwargs))
                blocks.append(tokens / (time.perf_counter() - started))
                time.sleep(0.05)  # a pause between blocks: ORT threads spin after a call
            row[f"tokens_per_s_b{batch}"] = statistics.median(blocks)
        first = []
        for _ in range(BENCH_BLOCKS * 4):
            started = time.perf_counter()
            stepper.start(visual[:1], mask[:1])
            stepper.step(np.full((1, 1), captioner.bos, dtype=np.int64))
            first.append(1000 * (time.perf_counter() - started))
        row["first_token_ms"] = statistics.median(first)
        row["tokens_per_s"] = row["tokens_per_s_b1"]
        rows.append(row)
    torch_row = rows[-1]
    for row in rows:
        row["vs_torch_b1"] = row["tokens_per_s_b1"] / torch_row["tokens_per_s_b1"]
        row["vs_torch_b8"] = row["tokens_per_s_b8"] / torch_row["tokens_per_s_b8"]
    return {"scenes": len(visual), "scenes_b1": BENCH_SCENES_B1, "blocks": BENCH_BLOCKS, "threads": threads,
            "load_average_before": os.getloadavg()[0], "rows": rows,
            "method": "greedy generation of the same scenes, median of blocks of consecutive calls"}


def _plot(reports: list[dict[str, Any]], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in reports:
        errors = np.maximum(np.asarray(r["per_step_logits_max_abs"]), 1e-9)
        ax.semilogy(np.arange(len(errors)), errors, marker=".", label=r["candidate"].split(" (")[0])
    ax.set_xlabel("decoding step (P)")
    ax.set_ylabel("max |logit - PyTorch fp32| (teacher-forced)")
    ax.set_title("Caption step logits vs PyTorch, per step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name


def write_caption_section(bundle: Any, out_dir: Path) -> list[str]:
    """Append the caption parity and generation tables (and the per-step logit-error plot) to report.md in
    ``out_dir``; return the names of the files written besides it."""
    parity = json.loads((bundle.path / PARITY_FILE).read_text()) if PARITY_FILE in bundle.manifest["files"] else []
    bench = json.loads((bundle.path / BENCH_FILE).read_text()) if BENCH_FILE in bundle.manifest["files"] else None
    lines = ["", "## Captioning: parity against fp32 PyTorch greedy", "",
             f"Budget: exact match and sacrebleu BLEU may drop at most {BUDGET_POINTS} point each; fp32 must be "
             "token-identical on at least 99.5% of scenes with logits within 1e-4 at every step.", "",
             "| candidate | scenes | token-identical | first divergent step | exact match (PyTorch) | BLEU (PyTorch) | "
             "logits max abs | passed |", "|---|---|---|---|---|---|---|---|"]
    for r in parity:
        b = _brief(r)
        bleu = "-" if b["bleu"]["candidate"] is None else f"{b['bleu']['candidate']:.2f} ({b['bleu']['reference']:.2f})"
        lines.append(f"| {r['candidate']} | {b['scenes']} | {100 * b['token_identical']:.2f}% | "
                     f"{b['first_divergent_step'] if b['first_divergent_step'] is not None else '-'} | "
                     f"{100 * b['exact_match']['candidate']:.2f}% ({100 * b['exact_match']['reference']:.2f}%) | "
                     f"{bleu} | {b['logits_max_abs']:.3g} | {b['passed']} |")
    files = []
    if parity and (name := _plot(parity, out_dir / PLOT_FILE)):
        files.append(name)
        lines += ["", f"![caption logit error per step]({name})"]
    if bench:
        lines += ["", "## Captioning: greedy generation (light benchmark)", "",
                  f"{bench['method']}; {bench['scenes']} scenes, {bench['blocks']} blocks, load average "
                  f"{bench['load_average_before']:.2f} before the run.", "",
                  "| engine | tokens/s B=1 | tokens/s B=8 | first token ms | vs PyTorch B=1 | vs PyTorch B=8 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['tokens_per_s_b1']:.0f} | {r['tokens_per_s_b8']:.0f} | "
                  f"{r['first_token_ms']:.2f} | {r['vs_torch_b1']:.2f}x | {r['vs_torch_b8']:.2f}x |"
                  for r in bench["rows"]]
    report_md = out_dir / "report.md"
    atomic_write_bytes(report_md, (report_md.read_text() + "\n".join(lines) + "\n").encode())
    report_json = out_dir / "report.json"
    data = json.loads(report_json.read_text())
    data["caption"] = {"parity": [_brief(r) | {"candidate": r["candidate"]} for r in parity], "bench": bench}
    atomic_write_json(report_json, json_safe(data))
    return files


def run_caption_stages(run: Any) -> None:
    """Run (or reuse) every stage for a caption checkpoint, with the caption gates."""
    stages = CaptionStages(run)
    config = run.config
    run.keys["export"] = stage_key(checkpoint=run.checkpoint_files, task=CAPTION_TASK, exporter="legacy", opset=17)
    run.stage(1, "export", stages.export, _export_gates)
    run.keys["calibrate"] = stage_key(export=run.keys["export"], scenes=config.calib_samples, method=METHOD)
    if "int8" in config.precisions:
        run.stage(2, "calibrate", stages.calibrate)
    else:
        run.skip(2, "calibrate", "int8 not requested (fp16 needs no calibration for a caption bundle)")
    budget = {"exact_match_drop_points": BUDGET_POINTS, "bleu_drop_points": BUDGET_POINTS}
    for index, precision in ((3, "fp16"), (4, "int8")):
        run.keys[precision] = stage_key(calibrate=run.keys["calibrate"] if precision == "int8" else None,
                                        export=run.keys["export"], heldout=config.heldout_scenes, budget=budget)
        if precision in config.precisions:
            run.stage(index, precision, lambda p=precision: stages.quantize(p), _budget_gates(precision))
        else:
            run.skip(index, precision, "not requested")
    reason = engine_unavailable_reason()
    if reason is None:
        run.keys["engines"] = stage_key(graphs=run.graph_hashes([*stages.graphs(), "fp32"]))
        run.stage(5, "engines", stages.engines)
    else:
        run.skip(5, "engines", reason)
        run.result.gates.append(Gate("tensorrt engines", "engines", "skipped", reason))
    graphs = run.graph_hashes([*stages.graphs(), "fp32"])
    run.keys["parity"] = stage_key(graphs=graphs, checkpoint=run.checkpoint_files, scenes=config.parity_scenes,
                                   backends=list(config.backends), budget=budget)
    run.stage(6, "parity", stages.parity, _parity_gates)
    run.keys["bench"] = stage_key(graphs=graphs, threads=config.threads, scenes=[BENCH_SCENES, BENCH_SCENES_B1],
                                  blocks=BENCH_BLOCKS)
    if config.skip_bench:
        run.skip(7, "bench", "--skip-bench")
    else:
        run.stage(7, "bench", stages.bench)
    files = run.bundle().manifest["files"]
    stages_before = ("export", "calibrate", "fp16", "int8", "engines", "parity", "bench")
    run.keys["report"] = stage_key(inputs={n: files[n]["sha256"] for n in (PARITY_FILE, BENCH_FILE) if n in files},
                                   stages={s: run.keys.get(s) for s in stages_before}, bench=not config.skip_bench)
    run.stage(8, "report", stages.report)
