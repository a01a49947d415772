"""PyTorch eager fp32 vs ``fusionrt.runtime.Session`` on onnxruntime fp32, on the same inputs, in one run.

    .venv/bin/python benchmarks/bench_runtime.py [--checkpoint DIR] [--runs 100] [--warmup 20] [--threads 2]

Measures the shipped model at B=1,T=16,M=8 and B=8,T=32,M=8 and the ``base`` preset at random
weights: median latency of torch eager and of the Session (taking turns in blocks, see
:func:`measure`), and the Session's overhead over a bare ``InferenceSession.run`` on the same ORT
session (alternating single calls, see :func:`measure_paired`). Also measured on the shipped model:
which exporter (legacy / dynamo) and which ORT graph-optimization level give the faster graph.
Writes benchmarks/RESULTS.md (and a PNG plot with --plot). Run it on an otherwise idle machine:
the load average before and after is recorded with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusionrt.data.tokenizer import train_tokenizer
from fusionrt.export import export_checkpoint, export_onnx
from fusionrt.io import atomic_write_bytes
from fusionrt.model import SHIPPED_CHECKPOINT, FusionModel, count_parameters, load_checkpoint, preset
from fusionrt.parity import fusion_feed
from fusionrt.runtime import Session
from fusionrt.runtime.validate import FeedValidator

SHAPES = ((1, 16, 8), (8, 32, 8))
SETTLE_SECONDS = 0.05  # lets the previous engine's spinning worker threads go to sleep
NAMES = ("input_ids", "text_mask", "visual_feats", "visual_mask")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def timed(fn, feed) -> float:
    start = time.perf_counter_ns()
    fn(feed)
    return (time.perf_counter_ns() - start) / 1e6


def measure(candidates: dict[str, object], feed: dict[str, np.ndarray], runs: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of ``runs`` calls per candidate, after ``warmup`` calls each.

    Calls are timed in blocks of consecutive calls, the candidates taking turns block by block in
    a rotating order, with a pause between blocks. Alternating single calls would be unfair on two
    cores: torch's OpenMP workers and ORT's intra-op pool keep spinning for a while after a call
    and slow down whichever engine runs next (measured: +50% on the second engine).
    """
    names = list(candidates)
    for fn in candidates.values():
        for _ in range(warmup):
            fn(feed)
    blocks = max(10, runs // 5)
    per_block = -(-runs // blocks)
    times: dict[str, list[float]] = {name: [] for name in names}
    for block in range(blocks):
        for name in names[block % len(names):] + names[: block % len(names)]:
            time.sleep(SETTLE_SECONDS)
            candidates[name](feed)  # wakes this engine's threads; not timed
            times[name].extend(timed(candidates[name], feed) for _ in range(per_block))
    return {name: statistics.median(values) for name, values in times.items()}


def measure_paired(first, second, feed: dict[str, np.ndarray], runs: int,
                   between=None) -> tuple[float, float]:
    """Medians of two callables on the same engine, alternating single calls (order flipped every pair),
    so both see the same machine state; for the Session's overhead over a bare ``InferenceSession.run``.

    ``between`` (untimed) runs before every timed call: an application's own work between inferences.
    Without it, every call follows an ORT run, which leaves numpy's code and data cold: on this
    machine each numpy reduction then costs ~20-30 us instead of ~2 us, and the Session's
    validation (two reductions) is timed at its coldest.
    """
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(runs):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            if between is not None:
                between()
            times[which].append(timed((first, second)[which], feed))
    return statistics.median(times[0]), statistics.median(times[1])


def answerer_preprocessing():
    """The Answerer's own work before its fusion call: detect regions in a scene and encode a question."""
    from fusionrt.data.detector import detect_regions
    from fusionrt.data.tokenizer import QuestionEncoder
    from fusionrt.data.world import generate_scene, render

    image = render(generate_scene(3))
    questions = QuestionEncoder(train_tokenizer(), 32)

    def work():
        detect_regions(image, max_regions=16).crops_float()
        questions.encode("How many red objects are there?")
    return work


def torch_call(module):
    def call(feed):
        with torch.inference_mode():
            return module(*(torch.from_numpy(feed[n]) for n in NAMES))
    return call


def bare_call(session: Session):
    ort_session = session.runner.session
    names = [t.name for t in session.outputs]

    def call(feed):
        return ort_session.run(names, feed)
    return call


def full_feed(session: Session, batch: int, text: int, visual: int) -> dict[str, np.ndarray]:
    """Real-looking batch: every row padded differently, no fully masked row (those are the grid's job)."""
    feed = fusion_feed(session.runner.graph, batch, text, visual, np.random.default_rng(batch * 1000 + text))
    feed["text_mask"][:, 0] = feed["visual_mask"][:, 0] = True
    return feed


def compare(label: str, module, bundle: Path, threads: int, runs: int, warmup: int) -> list[dict]:
    session = Session(bundle, threads=threads)
    rows = []
    for batch, text, visual in SHAPES:
        log(f"  {label}: B={batch} T={text} M={visual}: {warmup} warm-up + {runs} timed calls per engine")
        feed = full_feed(session, batch, text, visual)
        medians = measure({"torch": torch_call(module), "session": session.run}, feed, runs, warmup)
        paired = measure_paired(session.run, bare_call(session), feed, max(runs, 200))
        in_app = measure_paired(session.run, bare_call(session), feed, max(runs, 200), answerer_preprocessing())
        # The Session's own work is validation; timed alone it is not blurred by the engine's variance.
        validator = FeedValidator(session.runner.graph)
        validation_us = 1e3 * statistics.median(timed(validator, feed) for _ in range(max(runs, 1000)))
        rows.append({"model": label, "shape": (batch, text, visual), **medians, "paired_session": paired[0],
                     "bare": paired[1], "app_session": in_app[0], "app_bare": in_app[1],
                     "validation_us": validation_us})
        log(f"    torch {medians['torch']:.3f} ms, session {medians['session']:.3f} ms: speed-up "
            f"{medians['torch'] / medians['session']:.2f}x; paired session {paired[0]:.3f} ms vs bare ORT "
            f"{paired[1]:.3f} ms: overhead {100 * (paired[0] / paired[1] - 1):+.1f}%, with the Answerer's "
            f"pre-processing between calls {100 * (in_app[0] / in_app[1] - 1):+.1f}% "
            f"(validation alone {validation_us:.1f} us)")
    return rows


def variants(checkpoint_dir: Path, work: Path, threads: int, runs: int, warmup: int) -> list[dict]:
    """ORT latency of the shipped model's graph per exporter / opset and per ORT optimization level."""
    model = load_checkpoint(checkpoint_dir).fusion
    config = model.config
    sizes = {"vocab_size": config.vocab_size, "visual_dim": config.visual_dim, "max_text_len": config.max_text_len,
             "max_visual_len": config.max_visual_len}
    bundles = {}
    for exporter, opset in (("legacy", 17), ("legacy", 18), ("dynamo", 18)):
        log(f"  exporting the shipped fusion model with the {exporter} exporter at opset {opset}")
        bundles[(exporter, opset)] = export_onnx(model, work / f"{exporter}{opset}", exporter=exporter, opset=opset,
                                                 **sizes)
    rows = []
    for batch, text, visual in SHAPES:
        cases = {f"{e} opset {o}, ORT all": Session(b, threads=threads) for (e, o), b in bundles.items()}
        for level in ("basic", "extended"):
            cases[f"legacy opset 17, ORT {level}"] = Session(bundles[("legacy", 17)], threads=threads,
                                                              optimization=level)
        feed = full_feed(next(iter(cases.values())), batch, text, visual)
        log(f"  variants at B={batch} T={text} M={visual}: {len(cases)} graphs taking turns")
        medians = measure({name: bare_call(s) for name, s in cases.items()}, feed, runs, warmup)
        for name, ms in medians.items():
            manifest = cases[name].bundle.manifest
            rows.append({"variant": name, "shape": (batch, text, visual), "ms": ms,
                         "nodes": len(_onnx_nodes(cases[name])),
                         "export_seconds": manifest["verification"]["export_seconds"]})
            log(f"    {name}: {ms:.3f} ms")
    return rows


def _onnx_nodes(session: Session) -> list:
    import onnx

    return list(onnx.load(str(session.bundle.graph_path(session.graph, session.precision))).graph.node)


def environment(threads: int) -> list[str]:
    import onnx
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    return [f"- CPU: {cpu}, {os.cpu_count()} logical cores; {threads} threads for torch and for ORT (intra-op)",
            f"- torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, "
            f"numpy {np.__version__}, Python {platform.python_version()}"]


def write_results(path: Path, command: str, env: list[str], rows: list[dict], variant_rows: list[dict],
                  params: dict[str, int], runs: int, warmup: int, plot_path: Path | None = None) -> None:
    lines = ["# Runtime benchmark", "", "Measured by:", "", "```", command, "```", "", *env,
             f"- median of {runs} timed calls per engine after {warmup} warm-up calls, on the same inputs in one "
             "process; engines take turns in blocks of consecutive calls (see `measure` in the script)",
             "- shapes: B (batch), T (text tokens), M (visual regions); rows padded differently, no fully "
             "masked row", "",
             "## PyTorch eager fp32 vs Session(onnxruntime) fp32", "",
             "| model | params | B/T/M | torch eager (ms) | Session ORT (ms) | speed-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {params[r['model']] / 1e6:.2f} M | {'/'.join(map(str, r['shape']))} | "
                     f"{r['torch']:.3f} | {r['session']:.3f} | {r['torch'] / r['session']:.2f}x |")
    if plot_path is not None:
        link = os.path.relpath(plot_path.resolve(), path.resolve().parent)
        lines += ["", f"![torch eager vs Session latency]({link})"]
    lines += ["", "## Session overhead over a bare `InferenceSession.run` (same ORT session, alternating calls)", "",
              "Back to back: each call right after another ORT run. With pre-processing: the Answerer's "
              "region detection and question encoding (untimed) before each call, as in an application. "
              "Validation alone: `FeedValidator` timed in a loop by itself.", "",
              "| model | B/T/M | Session (ms) | bare run (ms) | overhead back to back | Session / bare with "
              "pre-processing (ms) | overhead with pre-processing | validation alone |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {'/'.join(map(str, r['shape']))} | {r['paired_session']:.3f} | "
                     f"{r['bare']:.3f} | {100 * (r['paired_session'] / r['bare'] - 1):+.1f}% | "
                     f"{r['app_session']:.3f} / {r['app_bare']:.3f} | "
                     f"{100 * (r['app_session'] / r['app_bare'] - 1):+.1f}% | "
                     f"{r['validation_us']:.1f} us ({r['validation_us'] / (10 * r['bare']):.1f}%) |")
    if variant_rows:
        lines += ["", "## Exporter and ORT optimization level (shipped model, bare ORT run)", "",
                  "The graphs take turns in blocks with a pause before each block, so absolute times are "
                  "higher than back-to-back calls above; compare within this table. Export time includes "
                  "the grid verification.", "",
                  "| graph | nodes | export + verify (s) | B/T/M | ORT (ms) | vs legacy opset 17, ORT all |",
                  "|---|---|---|---|---|---|"]
        base = {r["shape"]: r["ms"] for r in variant_rows if r["variant"] == "legacy opset 17, ORT all"}
        for r in variant_rows:
            lines.append(f"| {r['variant']} | {r['nodes']} | {r['export_seconds']} | "
                         f"{'/'.join(map(str, r['shape']))} | {r['ms']:.3f} | {r['ms'] / base[r['shape']]:.2f}x |")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{'/'.join(map(str, r['shape']))}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, key, name in ((-0.2, "torch", "torch eager"), (0.2, "session", "Session (ORT)")):
        ax.bar(x + offset, [r[key] for r in rows], 0.4, label=name)
    ax.set_xticks(x, labels)
    ax.set_ylabel("median latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(suffix=".png", dir=path.parent, delete=False) as tmp:
        fig.savefig(tmp.name, dpi=120)
    os.replace(tmp.name, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--runs", type=int, default=100, help="timed calls per engine and shape (at least 50)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-base", action="store_true", help="skip the base preset")
    parser.add_argument("--no-variants", action="store_true", help="skip the exporter / ORT level comparison")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    parser.add_argument("--plot", type=Path, default=None, help="also write a PNG bar chart")
    args = parser.parse_args()
    if args.runs < 50:
        parser.error("--runs: at least 50")
    torch.set_num_threads(args.threads)
    command = "$ " + " ".join([".venv/bin/python", *sys.argv])
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        log(f"warning: 1-minute load average is {load_before:.2f}; other work on the machine skews the timings")
    rows, variant_rows, params = [], [], {}
    with tempfile.TemporaryDirectory(prefix="fusionrt-bench-") as tmp:
        work = Path(tmp)
        log(f"exporting {args.checkpoint}")
        shipped = export_checkpoint(args.checkpoint, work / "shipped")
        model = load_checkpoint(args.checkpoint).fusion
        params["shipped small"] = count_parameters(model)
        rows += compare("shipped small", model, shipped, args.threads, args.runs, args.warmup)
        if not args.no_base:
            torch.manual_seed(0)
            config = preset("base", vocab_size=train_tokenizer().get_vocab_size(), visual_dim=69, num_answers=22)
            base = FusionModel(config).eval()
            params["base (random)"] = count_parameters(base)
            log("exporting the base preset at random weights")
            bundle = export_onnx(base, work / "base", vocab_size=config.vocab_size, visual_dim=69,
                                 max_text_len=config.max_text_len, max_visual_len=config.max_visual_len)
            rows += compare("base (random)", base, bundle, args.threads, args.runs, args.warmup)
        if not args.no_variants:
            variant_rows = variants(args.checkpoint, work, args.threads, args.runs, args.warmup)
    env = [*environment(args.threads),
           f"- 1-minute load average before / after the run: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
           "(the benchmark itself adds up to ~2)"]
    if args.plot is not None:
        plot(args.plot, rows)
        log(f"wrote {args.plot}")
    write_results(args.results, command, env, rows, variant_rows, params, args.runs, args.warmup, args.plot)
    log(f"wrote {args.results}")
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
