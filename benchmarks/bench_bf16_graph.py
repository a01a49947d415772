"""Does a BF16 ONNX graph add anything over OpenVINO's bf16 hint on the fp32 graph? Measured, one run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_bf16_graph.py BUNDLE [--threads 1] [--heldout-scenes 300]

BUNDLE must be calibrated (``fusionrt calibrate``). The BF16 graph is ``convert_mixed_precision(fp32,
dtype="bfloat16")`` with the FP32 keep-set measured on the calibration set (``fp32_keep_set``, as for the
FP16 graph): what ``--precision bf16`` would write. Prints whether ONNX Runtime's CPU kernels load it, its
held-out accuracy on OpenVINO against fp32 PyTorch, and OpenVINO's latency on it vs the fp32 graph with the
f32 and bf16 hints (B=1 and B=8, T=16, M=8, timed in blocks). Nothing is added to the bundle.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from fusionrt.bench.timing import medians, time_blocks
from fusionrt.calibration import HeldoutEvaluator, convert_mixed_precision, fp32_keep_set
from fusionrt.parity import fusion_feed
from fusionrt.runtime import Bundle
from fusionrt.runtime.backends.openvino import compiled_from_onnx, runtime_precisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heldout-scenes", type=int, default=300)
    args = parser.parse_args()
    bundle = Bundle.open(args.bundle)
    fp32 = bundle.graph_path("fusion")
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        bf16 = Path(tmp) / "fusion.bf16.onnx"
        keep = fp32_keep_set(args.bundle)
        result["conversion"] = convert_mixed_precision(fp32, bf16, dtype="bfloat16", keep_fp32_nodes=list(keep))
        result["bytes"] = {"fp32": fp32.stat().st_size, "bf16": bf16.stat().st_size}
        try:
            import onnxruntime as ort

            ort.InferenceSession(str(bf16), providers=["CPUExecutionProvider"])
            result["onnxruntime_cpu"] = "loads"
        except Exception as exc:  # onnxruntime raises pybind errors without a base; the message is the finding
            result["onnxruntime_cpu"] = f"refused: {str(exc).strip()[:160]}"
        engines = {"bf16 graph, f32 hint": compiled_from_onnx(bf16, hint="f32", threads=args.threads),
                   "bf16 graph, bf16 hint": compiled_from_onnx(bf16, hint="bf16", threads=args.threads),
                   "fp32 graph, f32 hint": compiled_from_onnx(fp32, hint="f32", threads=args.threads),
                   "fp32 graph, bf16 hint": compiled_from_onnx(fp32, hint="bf16", threads=args.threads)}
        result["ran"] = {k: runtime_precisions(c).get("FullyConnected") for k, c in engines.items()}
        requests = {k: c.create_infer_request() for k, c in engines.items()}

        def run(request):
            return lambda feed: {"logits": request.infer(feed, share_outputs=False)[1]}

        evaluator = HeldoutEvaluator(bundle, args.heldout_scenes)
        result["heldout"] = {k: evaluator.measure(run(r)).to_dict() for k, r in requests.items()}
        result["ms"] = {}
        for batch in (1, 8):
            feed = fusion_feed(bundle.graph("fusion"), batch, 16, 8, np.random.default_rng(batch))
            feed["text_mask"][:] = feed["visual_mask"][:] = True
            calls = {k: (lambda r=r, f=feed: r.infer(f)) for k, r in requests.items()}
            result["ms"][str(batch)] = medians(time_blocks(calls, runs=6 * 8, warmup=3, block=8))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
