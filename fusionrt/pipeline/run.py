"""``run_pipeline``: checkpoint -> verified, quantized, parity-checked, benchmarked bundle with a report.

Stages run in order: export (+ verification), calibrate, fp16, int8, engines, parity, bench, report.
Each finished stage is recorded in the bundle's manifest (``pipeline.stages.NAME``) with a key: the
sha256 of what it depends on (checkpoint file hashes, upstream stage keys, graph file hashes and its
options). A rerun reuses a stage whose key is unchanged, after the whole bundle passed hash
verification; a changed checkpoint or option changes exactly the keys of the stages it affects. A
stage is recorded only after its artifacts are written and registered, so a run killed mid-stage
leaves that stage unrecorded and a rerun redoes it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusionrt.bench import BenchConfig, run_bench
from fusionrt.bench.run import DEFAULT_SHAPES
from fusionrt.bundle.manifest import MANIFEST, VQA_TASK, Bundle, is_bundle
from fusionrt.bundle.reference import ModelReference
from fusionrt.bundle.source import checkpoint_files_sha256, checkpoint_task, directory_sha256
from fusionrt.bundle.transaction import BundleTransaction
from fusionrt.calibration import BUDGETS, METHODS, BudgetExceededError, calibrate, quantize_fp16, quantize_int8
from fusionrt.engine.stage import build_all_engines, engine_unavailable_reason
from fusionrt.errors import FusionrtError, InputError
from fusionrt.export import VerificationError, export_checkpoint, export_onnx
from fusionrt.export.match import export_match_checkpoint
from fusionrt.io import atomic_write_json, json_safe, utc_timestamp
from fusionrt.parity import gates_for, run_parity
from fusionrt.parity.accuracy import accuracy_by_kind
from fusionrt.parity.budgets import CUSTOM_BUDGETS, measured_text
from fusionrt.parity.heldout import FeedHeldout, Heldout, HeldoutEvaluator, HeldoutSet, MemoizedRuns
from fusionrt.pipeline import match as match_stages
from fusionrt.pipeline.caption import CAPTION_TASK, run_caption_stages
from fusionrt.pipeline.lock import bundle_lock
from fusionrt.pipeline.result import Gate, PipelineResult, StageRecord, stage_key
from fusionrt.progress import SILENT, Progress
from fusionrt.report import write_report
from fusionrt.runtime.session import BACKENDS, Session

STAGES = ("export", "calibrate", "fp16", "int8", "engines", "parity", "bench", "report")
PRECISIONS = ("fp32", "fp16", "int8")
# quantize_int8 writes both INT8 graphs: Q/DQ for TensorRT and U8S8 for ONNX Runtime on CPU
GRAPHS_OF = {"fp32": ("fp32",), "fp16": ("fp16",), "int8": ("int8", "int8-cpu")}
PARITY_FILE, ACCURACY_FILE, BENCH_FILE = "parity.json", "accuracy.json", "bench.json"


class GateFailed(FusionrtError):
    """A gate failed: the pipeline stops (exit status 1) and names it."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        super().__init__(f"gate {gate.name!r} failed: {gate.message}")


class PipelineWriteError(InputError):
    """Writing into the bundle failed (permission, disk full): names the path; the previous state is intact."""


@dataclass
class PipelineConfig:
    """Options of one pipeline run (see ``fusionrt pipeline --help``)."""

    out: Path
    checkpoint: Path | None = None
    precisions: Sequence[str] = PRECISIONS
    calib_method: str = "minmax"
    calib_samples: int = 256
    backends: Sequence[str] = ("onnxruntime",)
    skip_bench: bool = False
    force: bool = False
    heldout_scenes: int = 500
    parity_scenes: int = 100
    bench_runs: int = 20
    threads: int | None = None
    torch_options: dict[str, Any] = field(default_factory=dict)
    # A user's own model (task "custom"): its reference, dims and npz feeds instead of a checkpoint.
    model: str | None = None
    calibration: Path | None = None
    heldout: Path | None = None
    dims: dict[str, int] = field(default_factory=dict)  # vocab_size, visual_dim, max_text_len, max_visual_len
    max_batch: int = 64
    # A matching checkpoint (task "match"): the held-out database its budgets and parity run on.
    match_scenes: int = 5000
    match_queries: int = 500
    match_rerank: int = 128

    def check(self) -> None:
        if self.model is not None:
            self._check_model()
        elif self.calibration is not None or self.heldout is not None:
            flag = "--calibration" if self.calibration is not None else "--heldout"
            raise InputError(flag, "feeds only with --model (the shipped model uses its scene world)", "no --model")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or "fp32" not in self.precisions:
            raise InputError("--precisions", f"fp32 plus any of {list(PRECISIONS[1:])}", ",".join(self.precisions))

        if self.calib_method not in METHODS:
            raise InputError("--calib-method", f"one of {list(METHODS)}", repr(self.calib_method))

        bad = [b for b in self.backends if b not in BACKENDS or b == "torch"]
        if bad or not self.backends:
            raise InputError("--backends", f"one or more of {sorted(set(BACKENDS) - {'torch'})} (torch is the "
                             "reference)", ",".join(self.backends))

    def _check_model(self) -> None:
        ModelReference.parse(self.model)
        if self.checkpoint is not None:
            raise InputError("--checkpoint", "either --checkpoint or --model", "both")
        for flag, directory in (("--calibration", self.calibration), ("--heldout", self.heldout)):
            if directory is None or not Path(directory).is_dir():
                raise InputError(flag, "a directory of npz feeds (required with --model)",
                                 f"no directory at {directory}" if directory is not None else "nothing")
        for dim in ("vocab_size", "visual_dim", "max_text_len", "max_visual_len"):
            if not isinstance(self.dims.get(dim), int):
                raise InputError(f"--{dim.replace('_', '-')}", "a positive integer (required with --model)",
                                 repr(self.dims.get(dim)))


class _Run:
    """State of one pipeline run: the bundle dir, recorded stages, results so far."""

    def __init__(self, config: PipelineConfig, progress: Progress, log: Callable[[str], None]) -> None:
        from fusionrt.model import SHIPPED_CHECKPOINT

        self.config = config
        self.progress = progress
        self.log = log
        self.out = Path(config.out).resolve()
        self.reference = ModelReference.parse(config.model) if config.model is not None else None
        # What the stages of a user's model also depend on: its dims and the sha256 of each feeds directory.
        self.custom_key: dict[str, Any] = {}
        if self.reference is not None:
            record = self.reference.record()
            self.checkpoint = Path(record["file"])
            self.checkpoint_files = {self.checkpoint.name: record["file_sha256"]}
            self.custom_key = {"dims": dict(config.dims), "max_batch": config.max_batch}
            self.feeds = {name: directory_sha256(directory)
                          for name, directory in (("calibration", config.calibration), ("heldout", config.heldout))}
        else:
            self.checkpoint = Path(config.checkpoint) if config.checkpoint is not None else SHIPPED_CHECKPOINT
            if not self.checkpoint.is_dir():
                raise InputError("--checkpoint", "a checkpoint directory", f"no directory at {self.checkpoint}")
            self.checkpoint_files = checkpoint_files_sha256(self.checkpoint)
        self.match = match_stages.is_match(self)  # task "match": its own export, budgets and parity
        self.result = PipelineResult(str(self.out))
        self.recorded: dict[str, Any] = {}
        self.keys: dict[str, str] = {}
        self.current: Bundle | None = None  # the bundle as last published (verified at the start, then ours)
        self._heldout: HeldoutSet | None = None
        self._evaluator: HeldoutEvaluator | None = None
        self._reference_runners: dict[str, MemoizedRuns] = {}
        self.stage_dir = self.out / ".pipeline-stage"

    def clean_staging(self) -> None:
        """Remove staging dirs a killed run left behind (we hold the lock: no one else writes here)."""
        for leftover in self.out.glob(".pipeline-stage*") if self.out.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)

    # ---- bundle state -------------------------------------------------------------------------
    def check_target(self) -> None:
        """Refuse a bundle of another checkpoint (unless --force) and a directory of other files."""
        if not self.out.exists():
            return
        if not is_bundle(self.out):
            if self.out.is_dir() and not any(self.out.iterdir()):
                return
            raise InputError("--out", "a new path, an empty directory or a bundle of this checkpoint",
                             f"{self.out}, which holds other files")
        try:
            manifest = json.loads((self.out / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {}
        recorded = manifest.get("source", {}).get("files") if isinstance(manifest, dict) else None
        if recorded != self.checkpoint_files and not self.config.force:
            source = manifest.get("source", {}).get("path", "an unknown source") if isinstance(manifest, dict) \
                else "an unreadable manifest"
            raise InputError("--out", f"a bundle exported from {self.reference or self.checkpoint} (or pass --force "
                             "to replace it)",
                             f"{self.out}, a bundle of another checkpoint ({source})")
        try:
            self.current = Bundle.open(self.out)  # every file's size and sha256: the run's one full check
        except FusionrtError as exc:
            self.log(f"bundle failed verification ({exc}); every stage is redone")
            return
        self.recorded = self.current.manifest.get("pipeline", {}).get("stages", {})

    def record(self, name: str, seconds: float, summary: dict[str, Any], files: Sequence[str] = ()) -> None:
        """Move ``files`` from the stage's staging dir into the bundle, register them and mark stage ``name``
        finished with its key, in one manifest rewrite."""
        with BundleTransaction(self.out, verify=False) as tx:
            for file in files:  # fresh names until the manifest is published: readers never see a mix
                tx.adopt(self.stage_dir / file, file)
            stages = (tx.manifest.get("pipeline") or {}).get("stages", {})
            stages[name] = {"key": self.keys[name], "seconds": round(seconds, 2), "finished_utc": utc_timestamp(),
                            "summary": summary}
            section = {"checkpoint": {"path": str(self.checkpoint), "files": self.checkpoint_files},
                       "stages": stages}
            self.current = tx.commit(sections={"pipeline": section})
        self.recorded = stages

    def reusable(self, name: str) -> dict[str, Any] | None:
        entry = self.recorded.get(name)
        return entry if entry and entry.get("key") == self.keys[name] else None

    def bundle(self) -> Bundle:
        """The bundle as the last stage published it (verified once at the start, then written only by us)."""
        if self.current is None:
            raise InputError("--out", "a bundle (the export stage writes it)", f"nothing usable at {self.out}")
        return self.current

    def refresh(self) -> Bundle:
        """Re-read the manifest after a stage that wrote through its own transaction (export); the other stages'
        APIs publish before :meth:`record`, whose commit refreshes :attr:`current`."""
        self.current = Bundle.open(self.out, verify=False)
        return self.current

    def graph_hashes(self, precisions: Sequence[str]) -> dict[str, str]:
        bundle = self.bundle()
        files = bundle.manifest["files"]
        out = {}
        for graph, spec in bundle.graphs.items():
            for precision in precisions:
                if precision in spec.precisions:
                    out[f"{graph}.{precision}"] = files[spec.precisions[precision]]["sha256"]
        return out

    def graphs(self) -> list[str]:
        """Every requested graph precision the bundle holds now (int8 means int8 and int8-cpu)."""
        present = self.bundle().graph("fusion").precisions
        return [g for p in self.config.precisions for g in GRAPHS_OF[p] if g in present]

    @property
    def custom(self) -> bool:
        """A user's own model (``--model``): its feeds instead of the scene world."""
        return self.reference is not None

    def heldout(self) -> HeldoutSet:
        """The run's one held-out set and fp32 PyTorch reference: fp16, int8, the accuracy tables and parity
        (the scene world's held-out scenes, or a user's held-out feeds)."""
        if self._heldout is None:
            reference = self.reference_runners()["fusion"]
            if self.custom:
                self._heldout = FeedHeldout(self.bundle(), self.config.heldout, self.progress, reference)
            else:
                self._heldout = Heldout(self.bundle(), self.config.heldout_scenes, progress=self.progress,
                                        reference=reference)
        return self._heldout

    def evaluator(self) -> HeldoutEvaluator:
        """The accuracy budgets' view of :meth:`heldout`, for fp16 and int8."""
        if self._evaluator is None and self.match:
            self._evaluator = match_stages.evaluator(self)
        if self._evaluator is None:
            self._evaluator = HeldoutEvaluator(self.bundle(), heldout=self.heldout())
        return self._evaluator

    def reference_runners(self) -> dict[str, MemoizedRuns]:
        """fp32 PyTorch Sessions of every graph, each feed run once for all the comparisons of this run."""
        if not self._reference_runners:
            bundle = self.bundle()
            # A user's model: the reference given to this run (its weights are checked against the manifest's).
            options = {**self.config.torch_options, **({"model": self.reference} if self.custom else {})}
            self._reference_runners = {
                graph: MemoizedRuns(Session(bundle, "torch", graph, "fp32", **options)) for graph in bundle.graphs}
        return self._reference_runners

    def close(self) -> None:
        for runner in self._reference_runners.values():
            runner.close()
        self._reference_runners = {}

    def note(self, text: str) -> None:
        self.progress.note(f"  {text}")

    # ---- stage driver -------------------------------------------------------------------------
    def stage(self, index: int, name: str, run: Callable[[], tuple[dict[str, Any], list[str]]],
              gates: Callable[[dict[str, Any]], list[Gate]] = lambda summary: []) -> None:
        """Reuse stage ``name`` if its key is recorded, else run it; check its gates either way."""
        label = f"[{index}/{len(STAGES)}] {name}"
        reused = self.reusable(name)
        started = time.perf_counter()
        if reused is not None:
            summary, status = reused["summary"], "reused"
            self.log(f"{label}: reused (inputs unchanged, key {self.keys[name][:12]})")
        else:
            self.log(f"{label}: running")
            # A stage writes its own files here; they move into the bundle only once its gates passed.
            self.stage_dir = Path(tempfile.mkdtemp(prefix=".pipeline-stage-", dir=self.out)) \
                if self.out.is_dir() else self.out / ".pipeline-stage"
            try:
                with self.progress.phase(f"{name}", total=None):
                    summary, files = run()
                status = "ran"
            except BaseException:
                shutil.rmtree(self.stage_dir, ignore_errors=True)
                raise
        seconds = time.perf_counter() - started
        checked = gates(summary)
        for gate in checked:
            gate.seconds = gate.seconds or (seconds if status == "ran" else 0.0)
        self.result.gates.extend(checked)
        failed = next((g for g in checked if g.status == "failed"), None)
        if status == "ran":
            try:
                if failed is None:
                    self.record(name, seconds, summary, files)
            finally:
                shutil.rmtree(self.stage_dir, ignore_errors=True)
        self.result.stages.append(StageRecord(name, status, round(seconds, 2), self.keys[name],
                                              summary.get("note", "") if isinstance(summary, dict) else ""))
        self.log(f"{label}: {status} in {seconds:.1f} s" + (f"; gate {failed.name!r} FAILED" if failed else ""))
        if failed is not None:
            raise GateFailed(failed)

    def skip(self, index: int, name: str, reason: str) -> None:
        self.result.stages.append(StageRecord(name, "skipped", 0.0, note=reason))
        self.log(f"[{index}/{len(STAGES)}] {name}: skipped: {reason}")


# ---- the stages ---------------------------------------------------------------------------------

def _export(run: _Run) -> tuple[dict[str, Any], list[str]]:
    try:
        if run.custom:
            export_onnx(run.reference, run.out, **run.config.dims, max_batch=run.config.max_batch,
                        progress=run.progress)
        elif run.match:
            export_match_checkpoint(run.checkpoint, run.out, progress=run.progress)
        else:
            export_checkpoint(run.checkpoint, run.out, progress=run.progress)
    except VerificationError as exc:
        return {"verification": {"passed": False, "failures": exc.failures[:20]}}, []
    verification = run.refresh().manifest["verification"]  # export verified every graph it wrote
    run.recorded = {}  # a fresh bundle: nothing downstream survives an export
    return {"verification": {"passed": True, "graphs": verification["graphs"],
                             "tolerance": verification["tolerance"]}}, []


def _export_gates(summary: dict[str, Any]) -> list[Gate]:
    v = summary["verification"]
    if v["passed"]:
        worst = "; ".join(f"{graph} " + ", ".join(f"{output} {m['max_abs']:.2g}" for output, m in d["worst"].items())
                          for graph, d in v["graphs"].items())
        return [Gate("export verification", "export", "passed",
                     f"ONNX Runtime vs PyTorch on the shape grid, worst max abs error: {worst}")]
    return [Gate("export verification", "export", "failed", "ONNX Runtime differs from PyTorch on the grid",
                 "\n".join(v["failures"]))]


def _calibrate(run: _Run) -> tuple[dict[str, Any], list[str]]:
    record = calibrate(run.out, samples=run.config.calib_samples, from_dir=run.config.calibration,
                       progress=run.progress)
    return {"samples": record["samples"], "sha256": record["sha256"]}, []


def _quantize(run: _Run, precision: str) -> tuple[dict[str, Any], list[str]]:
    try:
        if precision == "fp16":
            report = quantize_fp16(run.out, evaluator=run.evaluator(), progress=run.progress)
            return {"graphs": {"fp16": report["heldout"]}}, []
        report = quantize_int8(run.out, method=run.config.calib_method, evaluator=run.evaluator(),
                               progress=run.progress)
        return {"graphs": {p: g["heldout"] for p, g in report["graphs"].items()}}, []
    except BudgetExceededError as exc:
        graphs = exc.report.get("graphs") or {precision: exc.report.get("heldout", {})}
        return {"graphs": {p: (g.get("heldout", g)) for p, g in graphs.items()}, "failed": str(exc)}, []


def _accuracy_gates(stage: str, label: str = "accuracy budget") -> Callable[[dict[str, Any]], list[Gate]]:
    def gates(summary: dict[str, Any]) -> list[Gate]:
        out = []
        for precision, heldout in summary["graphs"].items():
            failures = heldout.get("failures", [])
            message = measured_text(heldout)
            out.append(Gate(f"{label} {precision}", stage, "failed" if failures else "passed",
                            "; ".join(failures) or message, message))
        if summary.get("failed") and not any(g.status == "failed" for g in out):
            out.append(Gate(f"{label} {stage}", stage, "failed", summary["failed"]))
        return out
    return gates


def _parity(run: _Run) -> tuple[dict[str, Any], list[str]]:
    if run.match:
        return match_stages.parity_stage(run)
    bundle = run.bundle()
    heldout = run.heldout()
    questions = heldout.scene_questions(run.config.parity_scenes) if isinstance(heldout, Heldout) else None
    reports, summary = [], {"checks": []}
    for backend in run.config.backends:
        for precision in run.graphs():
            gates = gates_for(bundle, precision)
            run.note(f"parity {precision} on {backend} vs fp32 PyTorch")
            started = time.perf_counter()
            report = run_parity(bundle, "torch", backend, candidate_precision=precision,
                                scenes=run.config.parity_scenes, gates=gates, questions=questions,
                                reference_runners=run.reference_runners(), heldout=heldout)
            data = json_safe(report.to_dict())
            reports.append(data)
            summary["checks"].append({
                "precision": precision, "backend": backend, "passed": report.passed,
                "failures": report.failure_rows()[:20], "gates": data["gates"],
                "gates_text": "; ".join(text for text, _ in gates.rows()),
                "seconds": round(time.perf_counter() - started, 2),
                "table": report.table()})
    atomic_write_json(run.stage_dir / PARITY_FILE, reports)
    if bundle.task != VQA_TASK:  # accuracy per question kind is the scene world's
        return summary, [PARITY_FILE]
    run.note("accuracy per question kind")
    accuracy = accuracy_by_kind(bundle, run.graphs(), backend=run.config.backends[0],
                                heldout=heldout.subset(run.config.parity_scenes))
    atomic_write_json(run.stage_dir / ACCURACY_FILE, accuracy)
    return summary, [PARITY_FILE, ACCURACY_FILE]


def _parity_gates(summary: dict[str, Any]) -> list[Gate]:
    def passed(check: dict[str, Any]) -> str:  # a stage recorded before gate texts existed has only the dict
        return "grid and held-out data within: " + check.get("gates_text", json.dumps(check.get("gates")))

    return [Gate(f"parity {c['precision']} {c['backend']}", "parity", "passed" if c["passed"] else "failed",
                 "; ".join(c["failures"][:3]) or passed(c), c["table"], c["seconds"]) for c in summary["checks"]]


def _fitted_shapes(bundle: Bundle) -> list[tuple[int, int, int]]:
    """The benchmark's default (B, T, M) shapes, each size capped at the bundle's declared max (a user's model
    may declare a shorter text or a smaller batch than ours)."""
    dims = bundle.graph("fusion").dims
    fitted = [tuple(min(size, dims[d].max) for size, d in zip(shape, "BTM", strict=True)) for shape in DEFAULT_SHAPES]
    return list(dict.fromkeys(fitted))  # type: ignore[arg-type]


def _bench(run: _Run) -> tuple[dict[str, Any], list[str]]:
    options = {**run.config.torch_options, **({"model": run.reference} if run.custom else {})}
    config = BenchConfig(backends=run.config.backends, precisions=run.graphs(), runs=run.config.bench_runs,
                         threads=run.config.threads, concurrency=2, torch_options=options,
                         shapes=_fitted_shapes(run.bundle()))
    report = run_bench(run.bundle(), config)
    atomic_write_json(run.stage_dir / BENCH_FILE, json_safe(report))
    best = {}
    for row in report["rows"]:
        if row["speedup_vs_torch"] is not None and row["backend"] != "torch":
            shape = "/".join(map(str, row["shape"]))
            if row["speedup_vs_torch"] > best.get(shape, (0, ""))[0]:
                best[shape] = (row["speedup_vs_torch"], f"{row['backend']} {row['precision']}")
    return {"best_speedup_vs_torch": best}, [BENCH_FILE]


def _report(run: _Run) -> tuple[dict[str, Any], list[str]]:
    files = write_report(run.out, run.result, out_dir=run.stage_dir)
    return {"files": files}, files


def _run_stages(run: _Run) -> None:
    config = run.config
    # A user's model adds its dims and feeds to the keys; the shipped model's keys stay as they were.
    custom = run.custom_key
    run.keys["export"] = stage_key(checkpoint=run.checkpoint_files, exporter="auto", opset=17, **custom)
    run.stage(1, "export", lambda: _export(run), _export_gates)

    run.keys["calibrate"] = stage_key(export=run.keys["export"], samples=config.calib_samples,
                                      **({"feeds": run.feeds["calibration"]} if custom else {}))
    heldout = {"heldout": run.feeds["heldout"]} if custom else {"heldout": config.heldout_scenes}
    if run.match:
        heldout = match_stages.key_parts(run)
    if {"fp16", "int8"} & set(config.precisions):  # fp16 keeps in FP32 what the calibration data says
        run.stage(2, "calibrate", lambda: _calibrate(run))
    else:
        run.skip(2, "calibrate", "neither fp16 nor int8 requested")

    run.keys["fp16"] = stage_key(calibrate=run.keys["calibrate"], **heldout,
                                 budget=(CUSTOM_BUDGETS if custom else BUDGETS)["fp16"].to_dict())
    label = "match budget" if run.match else "accuracy budget"  # a match run's budgets are retrieval scores
    if "fp16" in config.precisions:
        run.stage(3, "fp16", lambda: _quantize(run, "fp16"), _accuracy_gates("fp16", label))
    else:
        run.skip(3, "fp16", "not requested")
    run.keys["int8"] = stage_key(calibrate=run.keys["calibrate"], method=config.calib_method, **heldout,
                                 budget=(CUSTOM_BUDGETS if custom else BUDGETS)["int8"].to_dict())
    if "int8" in config.precisions:
        run.stage(4, "int8", lambda: _quantize(run, "int8"), _accuracy_gates("int8", label))
    else:
        run.skip(4, "int8", "not requested")
    reason = engine_unavailable_reason()
    if reason is None:
        run.keys["engines"] = stage_key(graphs=run.graph_hashes([*run.graphs(), "fp32"]))
        run.stage(5, "engines", lambda: (build_all_engines(run.out, run.graphs(), run.progress), []))
    else:
        run.skip(5, "engines", reason)
        run.result.gates.append(Gate("tensorrt engines", "engines", "skipped", reason))

    graphs = run.graph_hashes([*run.graphs(), "fp32"])

    gates = {p: gates_for(run.bundle(), p).to_dict() for p in run.graphs()} if not run.match else heldout
    run.keys["parity"] = stage_key(graphs=graphs, checkpoint=run.checkpoint_files, gates=gates,
                                   scenes=config.parity_scenes, backends=list(config.backends),
                                   **({"heldout": run.feeds["heldout"]} if custom else {}))
    run.stage(6, "parity", lambda: _parity(run), _parity_gates)
    run.keys["bench"] = stage_key(graphs=graphs, backends=list(config.backends), runs=config.bench_runs,
                                  threads=config.threads)
    if config.skip_bench:
        run.skip(7, "bench", "--skip-bench")
    else:
        run.stage(7, "bench", lambda: _bench(run))
    manifest_files = run.bundle().manifest["files"]
    inputs = {n: manifest_files[n]["sha256"] for n in (PARITY_FILE, ACCURACY_FILE, BENCH_FILE) if n in manifest_files}
    run.keys["report"] = stage_key(inputs=inputs, stages={s: run.keys.get(s) for s in STAGES[:-1]},
                                   bench=not config.skip_bench)
    run.stage(8, "report", lambda: _report(run))


def run_pipeline(config: PipelineConfig, progress: Progress = SILENT,
                 log: Callable[[str], None] | None = None) -> PipelineResult:
    """Run (or reuse) every stage for ``config``; return the stages and gates.

    Raises :class:`GateFailed` (with ``.gate`` and the partial result as ``.result``) when a gate
    fails, :class:`InputError` for a refused output directory or a bundle locked by another
    pipeline, :class:`PipelineWriteError` naming the path when writing fails (permission, disk full).
    """
    config.check()
    run = _Run(config, progress, log or (lambda text: None))
    with bundle_lock(run.out):
        run.check_target()
        run.clean_staging()
        try:
            if not run.custom and checkpoint_task(run.checkpoint) == CAPTION_TASK:  # task read from the checkpoint
                run_caption_stages(run)
            else:
                _run_stages(run)
        except GateFailed as exc:
            exc.result = run.result  # type: ignore[attr-defined]
            raise
        except OSError as exc:
            path = exc.filename or run.out
            raise PipelineWriteError(str(path), "a writable location with free space (the bundle keeps its "
                                     "previous state)", f"{exc.strerror or exc}") from exc
        finally:
            run.close()
    return run.result
