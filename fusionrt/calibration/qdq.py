"""Write Q/DQ graphs from one set of ranges: the TensorRT recipe and the ONNX Runtime CPU recipe.

TensorRT (``int8``): symmetric INT8 activations (per tensor) and weights (per output channel),
both inputs of every MatMul/Gemm quantized (LayerNorm outputs included: TensorRT fuses the Quantize into
the LayerNorm kernel, and a GEMM with a float activation would run in float), the attention MatMuls
(QK^T, attn.V) too by default, no Q/DQ on their outputs, one dedicated Q/DQ pair per consumer, bias
left in float (docs/tensorrt.md, CORRECTION line; the options were measured, see benchmarks/RESULTS.md).
CPU (``int8-cpu``): U8S8, asymmetric UINT8 activations and per-channel INT8 weights, which ORT fuses
into integer MatMul kernels (field-notes.md: S8S8 is 2-3x slower than fp32 there, U8S8 faster).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrt.calibration.errors import QuantizationError
from fusionrt.calibration.ranges import Ranges, ort_method, save_ort_cache
from fusionrt.io import atomic_path

QUANTIZED_OPS = ("MatMul", "Gemm")
RESIDUAL_OPS = ("Add", "LayerNormalization")


@dataclass(frozen=True)
class Recipe:
    """One way of placing Q/DQ nodes; ``precision`` names the bundle file ``fusion.<precision>.onnx``."""

    precision: str
    activation: str  # "QInt8" | "QUInt8"
    symmetric_activations: bool
    quantize_outputs: bool
    dedicated_pairs: bool
    # TensorRT rules applied after onnxruntime placed the pairs (see :func:`enforce_matmul_only`).
    matmul_consumers_only: bool = False
    # Q/DQ on QK^T and attn.V (MatMuls of two activations); False leaves them in float.
    attention_matmuls: bool = True
    # Q/DQ also on the inputs of residual Adds and LayerNorms, as ModelOpt places them (measured, not default).
    residual_layernorm_inputs: bool = False

    @property
    def op_types(self) -> tuple[str, ...]:
        """Op types whose inputs this recipe quantizes (and whose ranges it needs)."""
        return QUANTIZED_OPS + (RESIDUAL_OPS if self.residual_layernorm_inputs else ())

    def options(self) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType

        extra: dict[str, Any] = {
            "ActivationSymmetric": self.symmetric_activations,
            "WeightSymmetric": True,
            "DedicatedQDQPair": self.dedicated_pairs,
            "QuantizeBias": False,
            # MatMul B is [K, N]: its output channels are axis 1. Gemm is handled by onnxruntime
            # from its transB attribute.
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
        }
        if not self.quantize_outputs:
            extra["OpTypesToExcludeOutputQuantization"] = list(self.op_types)
        return {"activation_type": getattr(QuantType, self.activation), "weight_type": QuantType.QInt8,
                "per_channel": True, "extra_options": extra}


TENSORRT = Recipe("int8", "QInt8", symmetric_activations=True, quantize_outputs=False, dedicated_pairs=True,
                  matmul_consumers_only=True)
CPU = Recipe("int8-cpu", "QUInt8", symmetric_activations=False, quantize_outputs=False, dedicated_pairs=False)
RECIPES = {r.precision: r for r in (TENSORRT, CPU)}


def quantizable_nodes(fp32_path: str | Path) -> list[str]:
    """Names of the MatMul/Gemm nodes of the graph, in graph order (the candidates for exclusion)."""
    import onnx

    model = onnx.load(str(fp32_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS]


def activation_matmuls(fp32_path: str | Path) -> list[str]:
    """MatMul/Gemm nodes none of whose inputs is a weight (an initializer): QK^T and attn.V."""
    import onnx

    model = onnx.load(str(fp32_path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and not weights & set(n.input)]


def residual_adds(fp32_path: str | Path) -> tuple[list[str], list[str]]:
    """(Adds of two activations that do not feed a Softmax: the residual Adds and the embedding sum;
    every other Add: Linear biases, the attention mask bias)."""
    import onnx

    model = onnx.load(str(fp32_path), load_external_data=False)
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                              for o in n.output}
    to_softmax = {n.input[0] for n in model.graph.node if n.op_type == "Softmax"}
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    residual = [n.name for n in adds if not constants & set(n.input) and n.output[0] not in to_softmax]
    return residual, [n.name for n in adds if n.name not in residual]


def enforce_matmul_only(model: Any, allowed: Sequence[str] = QUANTIZED_OPS) -> dict[str, int]:
    """Remove activation Q/DQ pairs onnxruntime placed where TensorRT's rules forbid them, in place.

    onnxruntime also gives Concat and Shape consumers of a MatMul input a pair (with ``DedicatedQDQPair``
    its own, or a DequantizeLinear shared with the MatMul): those consumers are rewired to the float
    tensor, the MatMul keeps its DequantizeLinear. Weight DQs (on initializers) are left alone.
    """
    graph = model.graph
    nodes = list(graph.node)  # one list of the node objects: positions below index into it
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    removed = {"non_matmul_consumers": 0}
    drop: set[int] = set()
    for d, dq in enumerate(nodes):
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in producer:
            continue
        q = nodes[producer[dq.input[0]]]
        if q.op_type != "QuantizeLinear":
            continue
        users = [nodes[u] for u in consumers.get(dq.output[0], [])]
        refused = [u for u in users if u.op_type not in allowed]
        for user in refused:  # e.g. the Concat beside the Q projection reading a LayerNorm output
            for k, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[k] = q.input[0]
        removed["non_matmul_consumers"] += len(refused)
        if len(refused) == len(users):
            drop.add(d)
    kept = [n for i, n in enumerate(nodes) if i not in drop]
    read = {name for n in kept for name in n.input} | {o.name for o in graph.output}
    kept = [n for n in kept if not (n.op_type == "QuantizeLinear" and n.output[0] not in read)]
    used = {name for n in kept for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    kept_copies = [type(n)() for n in kept]
    for copy, node in zip(kept_copies, kept, strict=True):
        copy.CopyFrom(node)  # copies: clearing graph.node would invalidate the originals
    del graph.node[:]
    graph.node.extend(kept_copies)
    return removed


def write_qdq(fp32_path: str | Path, out_path: str | Path, ranges: Ranges, recipe: Recipe,
              exclude: Sequence[str] = ()) -> Path:
    """Quantize ``fp32_path`` with ``recipe`` from ``ranges`` (no calibration run) and write ``out_path``
    atomically. ``exclude``: MatMul/Gemm node names left in float. Temporary files stay in a temp dir."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    fp32_path = Path(fp32_path)
    if not fp32_path.is_file():
        raise QuantizationError("fp32 graph", f"an ONNX file at {fp32_path}", "nothing")
    known = set(quantizable_nodes(fp32_path))
    unknown = sorted(set(exclude) - known)
    if unknown:
        raise QuantizationError("exclude", "MatMul/Gemm node names of the graph", repr(unknown[:5]))
    if not recipe.attention_matmuls:
        exclude = [*exclude, *(n for n in activation_matmuls(fp32_path) if n not in exclude)]
    if recipe.residual_layernorm_inputs:
        exclude = [*exclude, *residual_adds(fp32_path)[1]]
    with tempfile.TemporaryDirectory(prefix="fusionrt-quant-") as tmp:
        # quantize_static writes "<model>-inferred.onnx" next to its input: give it a copy in the temp dir.
        model = Path(tmp) / "model.onnx"
        shutil.copyfile(fp32_path, model)
        cache = save_ort_cache(ranges, Path(tmp) / "ranges.json")
        out = Path(tmp) / "quantized.onnx"
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # "please pre-process" warnings on every call
        try:
            quantize_static(str(model), str(out), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(recipe.op_types), nodes_to_exclude=list(exclude),
                            calibrate_method=ort_method(ranges.method), calibration_cache_path=str(cache),
                            **recipe.options())
        except Exception as exc:
            raise QuantizationError(f"{recipe.precision} graph", "onnxruntime quantize_static to succeed",
                                    f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        finally:
            logging.getLogger().setLevel(quiet)
        if recipe.matmul_consumers_only:
            import onnx

            model = onnx.load(str(out))
            enforce_matmul_only(model, recipe.op_types)
            onnx.checker.check_model(model)
            onnx.save(model, str(out))
        with atomic_path(out_path) as target:
            shutil.copyfile(out, target)
    return Path(out_path)
