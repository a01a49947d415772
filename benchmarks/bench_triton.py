"""Load test of a real Triton server against the local Session, in one run, loopback only.

    .venv/bin/python benchmarks/bench_triton.py [--bundle DIR] [--clients 8] [--seconds 5] \\
        [--python .venv-serve/bin/python] [--json OUT] [--plot OUT.png]

N client processes send one-row requests back to back for a bounded time (each block ``--seconds``,
a pause between blocks), for: the fusion model alone and the whole ``answer`` pipeline (PNG +
question -> answer), over HTTP and gRPC, with dynamic batching on and off, and the answer model
calling the two graphs by BLS or running them itself, and a few more queue delays (fusion, gRPC).
The ceiling, measured in the same run before and after the server blocks (mean of the two): the local
:class:`fusionrt.runtime.Session` (fusion) and the same torch-free pipeline without Triton (answer),
driven by N threads. Prints p50 / p99 latency, requests per second and the ratio
to the local ceiling, as a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAUSE_SECONDS = 1.0
PROTOCOLS = ("http", "grpc")
SCENE_SEEDS = range(1_000_000, 1_000_016)  # held-out range start (fusionrt.data.world.SPLIT_SIZE)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def fusion_payload() -> dict[str, np.ndarray]:
    """One row at the bundle's opt sizes (T=16, M=8), fully unmasked."""
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(4, 100, (1, 16), dtype=np.int64), "text_mask": np.ones((1, 16), bool),
            "visual_feats": rng.standard_normal((1, 8, 69)).astype(np.float32), "visual_mask": np.ones((1, 8), bool)}


def answer_payloads() -> list[tuple[bytes, str]]:
    from PIL import Image

    from fusionrt.data.questions import questions_for
    from fusionrt.data.world import generate_scene, render

    out = []
    for seed in SCENE_SEEDS:
        scene = generate_scene(seed)
        buffer = io.BytesIO()
        Image.fromarray(render(scene)).save(buffer, format="PNG")
        out.append((buffer.getvalue(), questions_for(scene, np.random.default_rng(seed))[0].text))
    return out


def _client_inputs(module, model: str, payload) -> list[list]:
    """Prepared InferInputs: one set for fusion, one per (PNG, question) for answer."""
    if model == "fusion":
        inputs = []
        for name, value in payload.items():
            tensor = module.InferInput(name, list(value.shape), "BOOL" if value.dtype == bool else
                                       {"int64": "INT64", "float32": "FP32"}[value.dtype.name])
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return [inputs]
    variants = []
    for image, question in payload:
        a = module.InferInput("image", [1, 1], "BYTES")
        a.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        b = module.InferInput("question", [1, 1], "BYTES")
        b.set_data_from_numpy(np.array([[question.encode()]], dtype=np.object_))
        variants.append([a, b])
    return variants


def client_process(protocol: str, url: str, model: str, payload, start_at: float,
                   seconds: float) -> tuple[list[float], bool]:
    """One client: back-to-back requests from ``start_at`` for ``seconds``; latencies in ms, and whether
    it was ready late (then its share of the window is short and the block is reported as such)."""
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    client = module.InferenceServerClient(url)
    variants = _client_inputs(module, model, payload)
    client.infer(model, variants[0])  # connection set up outside the timed window
    late = time.time() > start_at
    time.sleep(max(0.0, start_at - time.time()))
    latencies, end, i = [], start_at + seconds, 0
    while time.time() < end:
        start = time.perf_counter()
        client.infer(model, variants[i % len(variants)])
        latencies.append((time.perf_counter() - start) * 1e3)
        i += 1
    return latencies, late


def summarize(latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"requests": len(ordered), "rps": len(ordered) / seconds, "p50_ms": statistics.median(ordered),
            "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def load(pool, clients: int, protocol: str, url: str, model: str, payloads, seconds: float) -> dict[str, float]:
    start_at = time.time() + 4.0  # every client connected and warm before the window opens
    jobs = [pool.apply_async(client_process, (protocol, url, model, payloads[i % len(payloads)], start_at, seconds))
            for i in range(clients)]
    results = [job.get(timeout=seconds + 120) for job in jobs]
    late = sum(late for _, late in results)
    if late:
        log(f"  warning: {late} of {clients} clients were ready after the window opened")
    time.sleep(PAUSE_SECONDS)
    return {**summarize([x for latencies, _ in results for x in latencies], seconds), "late_clients": late}


def local_ceiling(bundle: Path, clients: int, seconds: float) -> dict[str, dict[str, float]]:
    """The same work without Triton: N threads on one Session (fusion) / one torch-free pipeline (answer)."""
    from fusionrt.app import BundlePipeline
    from fusionrt.serve.answering import answer_logits, image_from_bytes, prepare, question_from_bytes

    pipeline = BundlePipeline(bundle)
    payloads = answer_payloads()
    feed = fusion_payload()

    def fusion_call(_i: int) -> None:
        pipeline.fusion.run(feed)

    def answer_call(i: int) -> None:
        image, question = payloads[i % len(payloads)]
        prepared = prepare(image_from_bytes(image), question_from_bytes(question.encode()), pipeline.questions,
                           pipeline.max_visual_len)
        answer_logits(pipeline, [prepared], 64)

    out = {}
    for model, call in (("fusion", fusion_call), ("answer", answer_call)):
        call(0)
        latencies: list[list[float]] = [[] for _ in range(clients)]
        end = time.time() + seconds

        def worker(k: int, call=call, end=end, latencies=latencies) -> None:
            i = k
            while time.time() < end:
                start = time.perf_counter()
                call(i)
                latencies[k].append((time.perf_counter() - start) * 1e3)
                i += clients

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out[model] = summarize([x for part in latencies for x in part], seconds)
        time.sleep(PAUSE_SECONDS)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5))
    for ax, model in zip(axes, ("fusion", "answer"), strict=True):
        picked = [r for r in rows if r["model"] == model]
        labels = [r["setup"].replace(", ", "\n").replace(" (mean", "\n(mean") for r in picked]
        colors = ["tab:gray" if r["setup"].startswith("local") else "tab:blue" for r in picked]
        ax.barh(labels, [r["rps"] for r in picked], color=colors)
        for y, r in enumerate(picked):
            ax.text(r["rps"], y, f" {r['rps']:.0f}  ({100 * r['ratio']:.0f}%)", va="center", fontsize=8)
        ax.set_title(f"{model}: requests/s (share of local)")
        ax.invert_yaxis()
        ax.set_xlim(0, max(r["rps"] for r in picked) * 1.35)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None, help="bundle (default: export the shipped model)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured block")
    parser.add_argument("--python", default=str(ROOT / ".venv-serve" / "bin" / "python"),
                        help="serving interpreter (nvidia-pytriton + fusionrt)")
    parser.add_argument("--queue-delay-us", type=int, default=None, help="dynamic batching delay (default: ours)")
    parser.add_argument("--sweep-delays", default="500,8000",
                        help="more queue delays (us) tried on the fusion model over gRPC, comma-separated")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    from fusionrt.serve import RepositoryOptions, TritonServer, write_repository
    from fusionrt.serve.repository import DEFAULT_QUEUE_DELAY_US

    delay = DEFAULT_QUEUE_DELAY_US if args.queue_delay_us is None else args.queue_delay_us
    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    bundle = args.bundle
    if bundle is None:
        from fusionrt.export import export_checkpoint

        log("exporting the shipped model")
        bundle = export_checkpoint(None, work / "bundle")
    load_before = os.getloadavg()
    log(f"local ceiling: {args.clients} threads x {args.seconds} s per model")
    ceiling_before = local_ceiling(bundle, args.clients, args.seconds)
    sweep = [int(d) for d in args.sweep_delays.split(",") if d]
    # (label, options, models, protocols); the answer model's calls only matter to the answer rows
    setups = [
        (f"batching on ({delay} us)", RepositoryOptions(queue_delay_us=delay), ("fusion", "answer"), PROTOCOLS),
        ("batching off", RepositoryOptions(queue_delay_us=None), ("fusion", "answer"), PROTOCOLS),
        (f"batching on ({delay} us), answer runs both graphs itself",
         RepositoryOptions(queue_delay_us=delay, answer_calls="local"), ("answer",), PROTOCOLS),
        *((f"batching on ({d} us)", RepositoryOptions(queue_delay_us=d), ("fusion",), ("grpc",)) for d in sweep),
    ]
    scenes = answer_payloads()
    # fusion: every client the same row; answer: each client cycles through its own 4 of the 16 scenes
    payloads = {"fusion": [fusion_payload()], "answer": [scenes[i::4] for i in range(4)]}
    measured = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.clients) as pool:
        for name, options, models, protocols in setups:
            repo = write_repository(bundle, work / "repo", options)
            with TritonServer(repo, python=args.python) as server:
                log(f"{name}: server pid {server.pid}")
                for model in models:
                    for protocol in protocols:
                        url = f"127.0.0.1:{server.http_port if protocol == 'http' else server.grpc_port}"
                        result = load(pool, args.clients, protocol, url, model, payloads[model], args.seconds)
                        measured.append({"model": model, "setup": f"{name}, {protocol}", **result})
                        log(f"  {model} {protocol}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
                            f"p99 {result['p99_ms']:.1f} ms")
    log("local ceiling again (the machine is shared: its load moves)")
    ceiling_after = local_ceiling(bundle, args.clients, args.seconds)
    ceiling = {m: {k: (ceiling_before[m][k] + ceiling_after[m][k]) / 2 for k in ceiling_before[m]}
               for m in ceiling_before}
    rows = [{"model": m, "setup": "local (mean of before/after)", **ceiling[m], "ratio": 1.0} for m in ceiling]
    rows += [{**r, "ratio": r["rps"] / ceiling[r["model"]]["rps"]} for r in measured]
    rows.sort(key=lambda r: r["model"] != "fusion")
    print(f"{args.clients} clients, {args.seconds:g} s per block, one-row requests, 1 instance per model, "
          f"load average before {load_before[0]:.2f} / after {os.getloadavg()[0]:.2f} (machine shared); local "
          f"req/s before / after: fusion {ceiling_before['fusion']['rps']:.0f} / {ceiling_after['fusion']['rps']:.0f}, "
          f"answer {ceiling_before['answer']['rps']:.0f} / {ceiling_after['answer']['rps']:.0f}\n")
    print("| model | setup | req/s | p50 ms | p99 ms | share of local |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['setup']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{100 * r['ratio']:.0f}% |")
    if args.json:
        args.json.write_text(json.dumps({"clients": args.clients, "seconds": args.seconds, "queue_delay_us": delay,
                                         "local_before": ceiling_before, "local_after": ceiling_after,
                                         "rows": rows}, indent=2))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
