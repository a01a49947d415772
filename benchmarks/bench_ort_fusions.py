"""Does ONNX Runtime's transformer optimizer speed up our fp32 graph on CPU? Parity and timing in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ort_fusions.py BUNDLE [--threads 1]

Runs ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert", num_heads, hidden_size)`` on the
bundle's fusion.onnx, prints which fused operators it made (Attention / MultiHeadAttention would be the
one ORT's own session-level fusions cannot do), the max abs difference to the original graph on a grid
of shapes, and both graphs' medians at B=1 and B=8 (T=16, M=8), timed in blocks. Nothing is written to
the bundle: a variant is kept only if it is faster at 1e-4 parity.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np

from fusionrt.bench.timing import medians, time_blocks
from fusionrt.parity import fusion_feed
from fusionrt.runtime import Bundle
from fusionrt.runtime.backends.onnxrt import session_from_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from onnxruntime.transformers import optimizer

    bundle = Bundle.open(args.bundle)
    graph, config = bundle.graph("fusion"), bundle.model.get("config", bundle.model)
    original = bundle.graph_path("fusion")
    with tempfile.TemporaryDirectory() as tmp:
        optimized_path = Path(tmp) / "fusion.ort-bert.onnx"
        optimized = optimizer.optimize_model(str(original), model_type="bert", num_heads=int(config["heads"]),
                                             hidden_size=int(config["hidden"]), opt_level=0)
        optimized.save_model_to_file(str(optimized_path))
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        ops = collections.Counter(n.op_type for n in optimized.model.graph.node)
        sessions = {name: session_from_onnx(path, providers=["CPUExecutionProvider"], threads=args.threads)
                    for name, path in (("original", original), ("ort-bert optimized", optimized_path))}
        worst = 0.0
        for batch, text, visual in ((1, 1, 1), (3, 16, 8), (8, 32, 16), (2, 5, 3)):
            feed = fusion_feed(graph, batch, text, visual, np.random.default_rng(batch))
            a, b = (s.run(None, feed) for s in sessions.values())
            worst = max(worst, *(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)))
        ms = {}
        for batch in (1, 8):
            feed = fusion_feed(graph, batch, 16, 8, np.random.default_rng(batch))
            feed["text_mask"][:] = feed["visual_mask"][:] = True
            ms[str(batch)] = medians(time_blocks({k: (lambda s=s, f=feed: s.run(None, f)) for k, s in sessions.items()},
                                                 runs=200, warmup=3, block=20))
    print(json.dumps({"fused": fused, "attention_ops": {k: ops[k] for k in ("Attention", "MultiHeadAttention",
                                                                            "Softmax")},
                      "max_abs_difference": worst, "ms": ms}, indent=1))


if __name__ == "__main__":
    main()
