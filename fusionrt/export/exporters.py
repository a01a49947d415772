"""torch -> ONNX with either exporter, and the dim symbols renamed to the contract's.

``legacy`` is the TorchScript tracer (``dynamo=False`` with ``dynamic_axes``), ``dynamo`` is
``torch.export`` with ``torch.export.Dim`` ranges. Both are kept: the tracer freezes whatever the
forward turns into Python numbers and records one branch of data-dependent control flow (caught by
the grid verification), ``torch.export`` refuses such code outright. Which one is tried first is
:data:`DEFAULT_EXPORTER`, chosen by measurement (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fusionrt.bundle.spec import GraphSpec
from fusionrt.export.errors import ExportError
from fusionrt.io import atomic_write_bytes

EXPORTERS = ("legacy", "dynamo")
# Measured on the shipped model (benchmarks/RESULTS.md, several runs): in ONNX Runtime the two graphs run
# within ~5% of each other with no consistent winner (dynamo ~3% slower at B=8; -6%..+4% at B=1), but
# legacy exports and verifies ~5x faster and yields opset 17, which the dynamo exporter cannot
# down-convert this graph to (it stays at 18).
DEFAULT_EXPORTER = "legacy"
_TWO_GIB = 2**31


def _legacy(module: Any, args: tuple[Any, ...], spec: GraphSpec, opset: int) -> Any:
    import onnx
    import torch

    dynamic_axes = {t.name: {axis: d for axis, d in enumerate(t.shape) if isinstance(d, str)}
                    for t in (*spec.inputs, *spec.outputs)}
    buffer = io.BytesIO()
    torch.onnx.export(
        module, args, buffer, dynamo=False, input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs], dynamic_axes=dynamic_axes, opset_version=opset,
        do_constant_folding=True,
    )
    return onnx.load_from_string(buffer.getvalue())


def _dynamo(module: Any, args: tuple[Any, ...], spec: GraphSpec, opset: int) -> Any:
    import torch

    dims = {symbol: torch.export.Dim(symbol, min=r.min, max=r.max) for symbol, r in spec.dims.items()}
    dynamic_shapes = tuple({axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)}
                           for t in spec.inputs)
    program = torch.onnx.export(
        module, args, dynamo=True, verbose=False, dynamic_shapes=dynamic_shapes,
        input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs], opset_version=opset,
        external_data=False, optimize=True, report=False, verify=False,
    )
    return program.model_proto


def rename_dims(model: Any, spec: GraphSpec) -> None:
    """Rename the exporter's dim symbols on graph inputs and outputs (and wherever else they appear) to the
    contract's (``B``, ``T``, ``M``, ``N``). Frozen dims are left as they are for the checks to report."""
    mapping: dict[str, str] = {}
    by_name = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        tensor = by_name.get(value.name)
        if tensor is None:
            continue
        for want, dim in zip(tensor.shape, value.type.tensor_type.shape.dim, strict=False):
            if isinstance(want, str) and dim.HasField("dim_param") and dim.dim_param != want:
                mapping.setdefault(dim.dim_param, want)
    if not mapping:
        return
    # Symbols also appear inside expressions of intermediate shapes ("s0 + s1"): replace whole identifiers.
    pattern = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = pattern.sub(lambda m: mapping.get(m.group(0), m.group(0)), dim.dim_param)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """The dynamo exporter logs its opset fallback and version-converter tracebacks as warnings; the checks
    report what matters (the resulting opset), so keep the console for errors while exporting."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_graph(module: Any, args: tuple[Any, ...], spec: GraphSpec, path: Path, *, opset: int,
                 exporter: str) -> list[str]:
    """Export ``module`` at example ``args`` to ``path`` (atomically); return the exporter's distinct warnings."""
    if exporter not in EXPORTERS:
        raise ExportError("exporter", f"one of {list(EXPORTERS)}", repr(exporter))
    with warnings.catch_warnings(record=True) as caught, _quiet_loggers("torch.onnx", "torch.export", "onnxscript"):
        warnings.simplefilter("always")
        try:
            model = (_legacy if exporter == "legacy" else _dynamo)(module, args, spec, opset)
        except Exception as exc:  # both exporters raise many unrelated types; report whatever it was
            raise ExportError(f"{spec.name} graph", f"torch.onnx.export ({exporter}) to succeed",
                              f"{type(exc).__name__}: {str(exc).strip()[:600]}") from exc
    rename_dims(model, spec)
    model.producer_name = "fusionrt"
    data = model.SerializeToString() if model.ByteSize() < _TWO_GIB else None
    if data is None:
        raise ExportError(f"{spec.name} graph", "a graph under 2 GiB (one file per graph)",
                          f"{model.ByteSize()} bytes")
    atomic_write_bytes(path, data)
    # The tracer's TracerWarnings say where it froze a value: keep them for the report.
    return list(dict.fromkeys(str(w.message).splitlines()[0][:200] for w in caught
                              if not issubclass(w.category, DeprecationWarning | FutureWarning)))
