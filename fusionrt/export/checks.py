"""Structural checks of an exported graph: ONNX full check, then names, dtypes and dims against the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.spec import GraphSpec
from fusionrt.export.errors import VerificationError


def _dims_text(value: Any) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
            for d in value.type.tensor_type.shape.dim]


def check_graph(path: Path, spec: GraphSpec, opset: int | None = None) -> dict[str, Any]:
    """Run ``onnx.checker`` (full check: with strict shape inference) and check that every input and
    output has the contract's name, dtype, static sizes and symbolic dim names, and that the graph's
    opset is the one asked for (the dynamo exporter keeps 18 when it cannot down-convert). Returns the graph's opset,
    IR version and node count; raises :class:`VerificationError` listing every mismatch."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError and protobuf errors share no base
        raise VerificationError(path.name, "a graph that passes onnx.checker (full check)",
                                [f"{type(exc).__name__}: {str(exc).strip()[:600]}"]) from exc
    model = onnx.load(str(path))
    failures = []
    for kind, declared, values in (("input", spec.inputs, model.graph.input), ("output", spec.outputs,
                                                                              model.graph.output)):
        found = [v.name for v in values]
        if found != [t.name for t in declared]:
            failures.append(f"{kind}s: expected {[t.name for t in declared]}, received {found}")
            continue
        for tensor, value in zip(declared, values, strict=True):
            elem = value.type.tensor_type.elem_type
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name if elem else "undefined"
            if dtype != tensor.dtype:
                failures.append(f"{kind} {tensor.name}: expected dtype {tensor.dtype}, received {dtype}")
            dims = _dims_text(value)
            if len(dims) != len(tensor.shape):
                failures.append(f"{kind} {tensor.name}: expected shape {tensor.shape_text()}, received {dims}")
                continue
            for axis, (want, got) in enumerate(zip(tensor.shape, dims, strict=True)):
                if want == got:
                    continue
                if isinstance(want, str) and isinstance(got, int):
                    failures.append(f"{kind} {tensor.name} dim {axis}: expected symbolic {want!r}, received fixed "
                                    f"size {got} (the exporter froze it)")
                else:
                    failures.append(f"{kind} {tensor.name} dim {axis}: expected {want!r}, received {got!r}")
    found_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and found_opset != opset:
        failures.append(f"opset: expected {opset}, received {found_opset} (the exporter could not convert to it)")
    if failures:
        raise VerificationError(path.name, "inputs, outputs and opset as the contract declares them", failures)
    return {"opset": found_opset, "ir_version": model.ir_version, "nodes": len(model.graph.node)}
