"""GPU check: what a GPU machine of ours can test, in one run with a deadline, one JSON written after every step.

    python3 scripts/gpu_check.py --out DIR [--deadline-s 420]

Steps, each in its own child process (a crash, a hang or a missing package costs that step only; a step past
its time is killed and recorded as failed, and the next one runs):
  probe             Python, packages, the CUDA device as cuda-python and torch see it, TensorRT or why not
  cuda_layer        our CUDA layer (runtime.backends.tensorrt.cuda) on the real driver: stream, device buffer
                    round trip through pinned memory, an event ordering two streams, a CUDA graph
                    capturing a memcpy and a PyTorch kernel (captures > 0, replayed on new data, compared)
  torch_eager       the PyTorch fusion model on CUDA, fp32 / fp16 / bf16 eager at the bench shapes
  torch_cuda_graph  the same, replayed from CUDA graphs (fp32, fp16)
  torch_compile     the same through torch.compile (fp32)
  tensorrt_build    export, fp16 graph, fusionrt build fp32 / fp16          } only where TensorRT and a GPU exist;
  tensorrt_run      Session(backend="tensorrt") vs PyTorch, timed, parity } skipped by name otherwise
Timings: ms per call, device tensors in and out, calls enqueued back to back in blocks of CALLS (synchronized
at the end of each block, a pause between blocks), median over blocks; ratios are within this one run.
Without a CUDA device every GPU step is skipped, saying why, and the JSON is still written. Exit 0 when no
step failed, 1 otherwise. ``--inject STEP=error|timeout`` makes a step fail on purpose (tests of this harness).
This script depends on nothing but the standard library; fusionrt, torch and the rest are imported in the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_DEADLINE_S = 420.0  # the whole run, under 8 minutes with room for the machine's own start
STEP_LIMITS_S = {"probe": 60, "cuda_layer": 60, "torch_eager": 90, "torch_cuda_graph": 90, "torch_compile": 150,
                 "tensorrt_build": 240, "tensorrt_run": 120}
MIN_STEP_S = 10  # a step is not started with less time than this left
WARMUP, BLOCKS, CALLS, PAUSE_S = 10, 5, 50, 0.02
RESULT = "gpu_check.json"


# ---- steps (run in a child process: `gpu_check.py --step NAME --work DIR --result FILE`) ----

def step_probe(work: Path) -> dict[str, Any]:
    import importlib.metadata

    facts: dict[str, Any] = {"python": platform.python_version(), "executable": Path(sys.executable).name,
                             "platform": platform.platform(), "packages": {}}
    for name in ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "cuda-bindings", "cuda-python",
                 "tensorrt", "tensorrt-lean", "polygraphy", "tokenizers", "safetensors"):
        try:
            facts["packages"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            facts["packages"][name] = None
    from fusionrt.runtime.backends.tensorrt.device import cuda_device

    try:
        facts["cuda_device"] = cuda_device().to_dict()
    except Exception as exc:  # no cuda-python, no driver, no device: all mean "no device"
        facts["cuda_device"], facts["cuda_device_error"] = None, f"{type(exc).__name__}: {exc}"
    try:
        import torch

        facts["torch_cuda"] = torch.cuda.is_available()
        if facts["torch_cuda"]:
            facts["torch_device"] = torch.cuda.get_device_name(0)
            facts["torch_cuda_version"] = torch.version.cuda
    except ImportError as exc:
        facts["torch_cuda"], facts["torch_error"] = False, str(exc)
    try:
        from fusionrt.engine.build import require_build_environment

        facts["tensorrt"] = require_build_environment().tensorrt_version
    except Exception as exc:
        facts["tensorrt"], facts["tensorrt_missing"] = None, f"{type(exc).__name__}: {exc}"
    return facts


def step_cuda_layer(work: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from fusionrt.runtime.backends.tensorrt.cuda import DeviceBuffer, Event, GraphLauncher, PinnedBuffer, Stream
    from fusionrt.runtime.backends.tensorrt.device import check, cuda_device, import_cudart

    cudart = import_cudart()
    device = cuda_device(0, cudart)
    check(cudart, cudart.cudaSetDevice(device.index), "cudaSetDevice")
    torch.cuda.set_device(device.index)
    out: dict[str, Any] = {"device": device.to_dict()}
    stream, other = Stream(cudart), Stream(cudart)
    count = 1 << 20
    host_in, host_out = PinnedBuffer(cudart), PinnedBuffer(cudart)
    buffer = DeviceBuffer(cudart)
    expected = np.random.default_rng(0).standard_normal(count).astype(np.float32)
    source = host_in.view((count,), np.float32)
    source[...] = expected
    buffer.reserve(source.nbytes)
    buffer.upload(source, stream)
    back = host_out.view((count,), np.float32)
    back[...] = 0
    buffer.download(back, stream)
    stream.synchronize()
    out["round_trip_equal"] = bool(np.array_equal(back, expected))

    # an event orders two streams: a kernel on `stream`, a copy of its result on `other` after it
    a = torch.from_numpy(expected).cuda()
    b = torch.empty_like(a)
    torch.cuda.synchronize()  # `a` was copied on torch's stream; ours does not wait for it implicitly
    torch_stream = torch.cuda.ExternalStream(stream.ptr)
    with torch.cuda.stream(torch_stream):
        torch.mul(a, 3.0, out=b)
    done = Event(cudart)
    done.record(stream.handle)
    done.make_wait(other.handle)
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(cudart, cudart.cudaMemcpyAsync(back.ctypes.data, b.data_ptr(), back.nbytes, kind, other.handle), "copy")
    other.synchronize()
    out["event_orders_streams"] = bool(np.allclose(back, expected * 3.0))

    # a CUDA graph capturing our memcpy (pinned host -> device buffer -> torch tensor) and a PyTorch kernel
    x, y = torch.empty_like(a), torch.empty_like(a)
    torch.cuda.synchronize()
    to_tensor = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice

    def work_fn() -> bool:
        buffer.upload(source, stream)
        check(cudart, cudart.cudaMemcpyAsync(x.data_ptr(), buffer.ptr, source.nbytes, to_tensor, stream.handle),
              "copy to tensor")
        with torch.cuda.stream(torch_stream):
            torch.add(x, 1.0, out=y)
        return True

    launcher = GraphLauncher(cudart)
    launcher.run("graph", work_fn, stream)  # warm-up run, then capture
    stream.synchronize()
    first = bool(torch.allclose(y.cpu(), torch.from_numpy(expected) + 1.0))
    source[...] = expected * 2.0  # new data in the same pinned memory: the replayed graph must read it
    launcher.run("graph", work_fn, stream)
    stream.synchronize()
    replayed = bool(torch.allclose(y.cpu(), torch.from_numpy(expected * 2.0) + 1.0))
    out.update(graph_captures=launcher.captures, graph_first_run_equal=first, graph_replay_equal=replayed,
               graph_replay_ms=_time(lambda: launcher.run("graph", work_fn, stream), stream.synchronize))
    launcher.release()
    for item in (buffer, host_in, host_out):
        item.free()
    done.destroy()
    stream.destroy()
    other.destroy()
    if not (out["round_trip_equal"] and out["event_orders_streams"] and first and replayed and launcher.captures > 0):
        raise AssertionError(f"cuda layer results differ: {out}")
    return out


def _time(call: Callable[[], Any], synchronize: Callable[[], Any]) -> float:
    """Median ms per call over BLOCKS blocks of CALLS back-to-back calls (synchronized per block)."""
    import statistics

    for _ in range(WARMUP):
        call()
    synchronize()
    per_call = []
    for _ in range(BLOCKS):
        time.sleep(PAUSE_S)
        start = time.perf_counter()
        for _ in range(CALLS):
            call()
        synchronize()
        per_call.append((time.perf_counter() - start) * 1e3 / CALLS)
    return round(statistics.median(per_call), 4)


def _model_and_feeds() -> tuple[Any, dict[str, list[Any]]]:
    """The shipped fusion model on CUDA (fp32) and device feeds at the bench shapes."""
    import torch

    from fusionrt.app import SHIPPED_BUNDLE
    from fusionrt.bench.run import DEFAULT_SHAPES, bench_feed
    from fusionrt.bundle.manifest import Bundle
    from fusionrt.model import load_model

    bundle = Bundle.open(SHIPPED_BUNDLE)
    names = ("input_ids", "text_mask", "visual_feats", "visual_mask")
    feeds = {}
    for shape in DEFAULT_SHAPES:
        feed = bench_feed(bundle, *shape)
        feeds["B={},T={},M={}".format(*shape)] = [torch.from_numpy(feed[n]).cuda() for n in names]
    return load_model().cuda().eval(), feeds


def _cast(args: list[Any], dtype: Any) -> list[Any]:
    return [a.to(dtype) if a.is_floating_point() else a for a in args]


def _compare(got: Any, reference: Any) -> dict[str, float]:
    logits, ref = got[1].float(), reference[1].float()
    return {"logits_max_abs": round(float((logits - ref).abs().max()), 6),
            "argmax_agreement": round(float((logits.argmax(-1) == ref.argmax(-1)).float().mean()), 4)}


def step_torch_eager(work: Path) -> dict[str, Any]:
    import copy

    import torch

    model, feeds = _model_and_feeds()
    models = {"fp32": model, "fp16": copy.deepcopy(model).half(), "bf16": copy.deepcopy(model).to(torch.bfloat16)}
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    rows: dict[str, Any] = {}
    with torch.inference_mode():
        for shape, args in feeds.items():
            reference = model(*args)
            row = rows[shape] = {}
            for precision, module in models.items():
                cast = _cast(args, dtypes[precision])
                row[precision] = {"ms": _time(lambda m=module, a=cast: m(*a), torch.cuda.synchronize),
                                  **_compare(module(*cast), reference)}
            base = row["fp32"]["ms"]
            for precision in models:
                row[precision]["speedup_vs_fp32"] = round(base / row[precision]["ms"], 3)
    return {"shapes": rows}


def step_torch_cuda_graph(work: Path) -> dict[str, Any]:
    import torch

    model, feeds = _model_and_feeds()
    half = __import__("copy").deepcopy(model).half()
    rows: dict[str, Any] = {}
    with torch.inference_mode():
        for shape, args in feeds.items():
            reference = model(*args)
            row = rows[shape] = {"eager fp32 ms": _time(lambda a=args: model(*a), torch.cuda.synchronize)}
            for precision, module, dtype in (("fp32", model, torch.float32), ("fp16", half, torch.float16)):
                static = _cast(args, dtype)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up on a side stream, as torch's docs ask before capture
                    for _ in range(3):
                        module(*static)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outputs = module(*static)
                graph.replay()
                torch.cuda.synchronize()
                row[f"graph {precision}"] = {"ms": _time(graph.replay, torch.cuda.synchronize),
                                             **_compare(outputs, reference)}
                row[f"graph {precision}"]["speedup_vs_eager_fp32"] = round(
                    row["eager fp32 ms"] / row[f"graph {precision}"]["ms"], 3)
    return {"shapes": rows}


def step_torch_compile(work: Path) -> dict[str, Any]:
    import torch

    model, feeds = _model_and_feeds()
    compiled = torch.compile(model, dynamic=False)
    rows: dict[str, Any] = {}
    with torch.inference_mode():
        for shape, args in feeds.items():
            reference = model(*args)
            start = time.perf_counter()
            outputs = compiled(*args)
            torch.cuda.synchronize()
            compile_s = round(time.perf_counter() - start, 1)
            eager = _time(lambda a=args: model(*a), torch.cuda.synchronize)
            ms = _time(lambda a=args: compiled(*a), torch.cuda.synchronize)
            rows[shape] = {"compile_s": compile_s, "ms": ms, "eager fp32 ms": eager,
                           "speedup_vs_eager_fp32": round(eager / ms, 3), **_compare(outputs, reference)}
    return {"shapes": rows}


def _fusionrt(*args: str, timeout: float) -> None:
    done = subprocess.run([sys.executable, "-m", "fusionrt", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fusionrt {' '.join(args)}: exit {done.returncode}: {(done.stdout + done.stderr)[-800:]}")


def step_tensorrt_build(work: Path) -> dict[str, Any]:
    bundle = work / "bundle"
    start = time.perf_counter()
    _fusionrt("export", "--out", str(bundle), "--max-batch", "32", "-q", timeout=120)
    _fusionrt("quantize", str(bundle), "--precision", "fp16", "--no-sensitivity", "-q", timeout=120)
    built = {}
    for precision in ("fp32", "fp16"):
        begin = time.perf_counter()
        _fusionrt("build", str(bundle), "--precision", precision, "--graph", "fusion", "-q", timeout=300)
        built[precision] = round(time.perf_counter() - begin, 1)
    return {"bundle": str(bundle), "build_s": built, "seconds": round(time.perf_counter() - start, 1)}


def step_tensorrt_run(work: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from fusionrt.bench.run import DEFAULT_SHAPES, bench_feed
    from fusionrt.runtime import Bundle, Session

    bundle = Bundle.open(work / "bundle")
    reference = Session(bundle, backend="torch")
    rows: dict[str, Any] = {}
    for precision in ("fp32", "fp16"):
        for graphs in (False, True):
            name = f"tensorrt {precision}{' + CUDA graphs' if graphs else ''}"
            with Session(bundle, backend="tensorrt", precision=precision, cuda_graphs=graphs, max_contexts=1) as s:
                for shape in DEFAULT_SHAPES:
                    feed = bench_feed(bundle, *shape)
                    got, ref = s.run(feed), reference.run(feed)
                    row = rows.setdefault("B={},T={},M={}".format(*shape), {})
                    row[name] = {"numpy_in_out_ms": _time(lambda f=feed, s=s: s.run(f), lambda: None),
                                 "logits_max_abs": round(float(np.abs(got["logits"] - ref["logits"]).max()), 6)}
                    if not graphs:
                        tensors = {n: torch.from_numpy(a).cuda() for n, a in feed.items()}
                        row[name]["device_in_out_ms"] = _time(lambda t=tensors, s=s: s.runner.infer_torch(t),
                                                              torch.cuda.synchronize)
    return {"shapes": rows}


STEPS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "probe": step_probe, "cuda_layer": step_cuda_layer, "torch_eager": step_torch_eager,
    "torch_cuda_graph": step_torch_cuda_graph, "torch_compile": step_torch_compile,
    "tensorrt_build": step_tensorrt_build, "tensorrt_run": step_tensorrt_run,
}


def run_step_here(name: str, work: Path, result: Path, inject: str | None) -> int:
    """Child side: run one step, write {"result": ...} or {"error": ...} to ``result``."""
    try:
        if inject == "timeout":
            time.sleep(10_000)
        if inject == "error":
            raise RuntimeError(f"injected failure of step {name}")
        payload: dict[str, Any] = {"result": STEPS[name](work)}
    except BaseException as exc:  # the parent records any failure, whatever it is
        payload = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    write_json(result, payload)
    return 0


# ---- parent: run the steps in order against the deadline, JSON after every step ----

def write_json(path: Path, data: Any) -> None:
    """Atomically (temp file + rename): a reader never sees half a file. Standard library only, on purpose."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1, default=str)
    os.replace(tmp, path)


def say(text: str) -> None:
    print(f"gpu_check: {text}", file=sys.stderr, flush=True)


def why_skipped(name: str, report: dict[str, Any]) -> str | None:
    """The reason a step cannot run here (from the probe and earlier steps), or None."""
    probe = report["steps"].get("probe", {}).get("result") or {}
    if name == "probe":
        return None
    if not probe:
        return "no probe result (failed or not run): nothing known about this machine"
    if name == "cuda_layer" and probe.get("cuda_device") is None:
        return f"no CUDA device for cuda-python ({probe.get('cuda_device_error')})"
    if name.startswith("torch") and not probe.get("torch_cuda"):
        return "torch sees no CUDA device"
    if name.startswith("tensorrt") and not probe.get("tensorrt"):
        return f"no TensorRT with a GPU here ({probe.get('tensorrt_missing')})"
    if name == "tensorrt_run" and report["steps"].get("tensorrt_build", {}).get("status") != "ok":
        return "tensorrt_build did not succeed"
    return None


def run_all(out: Path, deadline_s: float, only: list[str], injected: dict[str, str],
            step_limit_s: float | None = None) -> int:
    start = time.perf_counter()
    report: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "deadline_s": deadline_s,
                              "timing": f"median ms per call over {BLOCKS} blocks of {CALLS} back-to-back calls",
                              "steps": {}, "skipped": [], "failed": [], "finished": False}
    path = out / RESULT
    write_json(path, report)
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        work = Path(tmp)
        for name in only:
            left = deadline_s - (time.perf_counter() - start)
            reason = None if name in injected else why_skipped(name, report)  # an injected failure always runs
            if reason is None and left < MIN_STEP_S:
                reason = f"deadline: {left:.0f} s left of {deadline_s:.0f} s"
            if reason is not None:
                report["steps"][name] = {"status": "skipped", "reason": reason}
                report["skipped"].append(name)
                say(f"{name}: skipped ({reason})")
            else:
                limit = min(STEP_LIMITS_S[name], left, step_limit_s or left)
                report["steps"][name] = run_child(name, work, limit, injected.get(name))
                if report["steps"][name]["status"] != "ok":
                    report["failed"].append(name)
            report["seconds"] = round(time.perf_counter() - start, 1)
            write_json(path, report)
    report["finished"] = True
    write_json(path, report)
    say(f"wrote {path} in {report['seconds']} s: failed {report['failed'] or 'none'}, "
        f"skipped {report['skipped'] or 'none'}")
    return 1 if report["failed"] else 0


def run_child(name: str, work: Path, limit: float, inject: str | None) -> dict[str, Any]:
    result = work / f"{name}.result.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--work", str(work),
               "--result", str(result), *(["--inject", f"{name}={inject}"] if inject else [])]
    begin = time.perf_counter()
    # its own process group: a step's own children (fusionrt commands) die with it when it is killed
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        tail, code = child.communicate(timeout=limit)[0][-1500:], child.returncode
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        tail = child.communicate()[0] or ""
        record = {"status": "failed", "error": f"timed out after {limit:.0f} s (killed)", "output": tail[-1500:]}
    else:
        payload = json.loads(result.read_text()) if result.is_file() else {}
        if "result" in payload:
            record = {"status": "ok", "result": payload["result"]}
        else:
            record = {"status": "failed", "error": payload.get("error", f"exit {code} without a result"),
                      "traceback": payload.get("traceback"), "output": tail}
    record["seconds"] = round(time.perf_counter() - begin, 1)
    say(f"{name}: {record['status']} in {record['seconds']} s" + (f" ({record['error']})" if "error" in record else ""))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for gpu_check.json (created)")
    parser.add_argument("--deadline-s", type=float, default=DEFAULT_DEADLINE_S, help="whole run (default 420)")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset, in order")
    parser.add_argument("--step-limit-s", type=float, default=None, help="cap on every step's own limit")
    parser.add_argument("--inject", action="append", default=[], metavar="STEP=error|timeout",
                        help="make a step fail on purpose (tests of the harness)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    injected = dict(item.split("=", 1) for item in args.inject)
    if args.step:
        return run_step_here(args.step, Path(args.work), Path(args.result), injected.get(args.step))
    if not args.out:
        parser.error("--out DIR is required")
    only = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in only if s not in STEPS]
    if unknown or any(v not in ("error", "timeout") or k not in STEPS for k, v in injected.items()):
        parser.error(f"--steps/--inject: expected steps among {list(STEPS)} and error|timeout, received "
                     f"{unknown or injected}")
    return run_all(Path(args.out), args.deadline_s, only, injected, args.step_limit_s)


if __name__ == "__main__":
    sys.exit(main())
