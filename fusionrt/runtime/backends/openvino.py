"""OpenVINO backend (CPU). Imports openvino lazily and never imports torch.

OpenVINO reads the bundle's ONNX graphs as they are: fp32, the TensorRT Q/DQ ``int8`` graph and the
ORT ``int8-cpu`` (U8S8) graph. Its ``hint`` is OpenVINO's inference precision: ``"f32"`` (exact,
within 1e-4 of PyTorch) or ``"bf16"`` (BF16 matmuls where the CPU has AVX-512 BF16 or AMX; OpenVINO
silently keeps f32 where it has not). Because the hint is only a wish, :meth:`OpenVinoRunner.describe`
reports what the compiled model actually runs, per layer type, from its runtime model.
"""

from __future__ import annotations

import os
import queue
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.errors import BackendError, BundleError
from fusionrt.runtime.runner import Runner

HINTS = {"f32": "f32", "bf16": "bf16"}
DEFAULT_HINT = "f32"
DEVICE = "CPU"
# Layer types of the runtime graph that do no arithmetic; left out of the per-layer precision report.
PLUMBING_LAYERS = frozenset({"Const", "Input", "Output", "Reshape", "ShapeOf", "Range", "Convert", "Concatenation"})
_OV_TYPES = {"bool": "boolean", "int32": "i32", "int64": "i64", "float16": "f16", "float32": "f32"}


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendError("backend 'openvino'", "the openvino package (pip install 'fusionrt[openvino]')",
                           f"ImportError: {exc}") from exc
    return openvino


def compiled_from_onnx(path: str | Path, *, hint: str | None = DEFAULT_HINT, threads: int | None = None) -> Any:
    """An OpenVINO ``CompiledModel`` for ``path`` on the CPU, optimized for latency.

    ``hint`` ``None`` leaves OpenVINO's own default (BF16 on CPUs with AVX-512 BF16 or AMX): what a
    user gets without asking. A file OpenVINO cannot read raises :class:`BundleError`.
    """
    ov = import_openvino()
    if hint is not None and hint not in HINTS:
        raise BackendError("hint", f"one of {list(HINTS)} (OpenVINO inference precision)", repr(hint))
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise BackendError("threads", "a positive int (OpenVINO inference threads)", repr(threads))
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # openvino raises RuntimeError subclasses without a documented base
        raise BundleError(Path(path).name, "an ONNX model OpenVINO can read",
                          f"a file it refuses ({type(exc).__name__}: {str(exc).strip()[:300]})") from exc
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = HINTS[hint]
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        return core.compile_model(model, DEVICE, config)
    except Exception as exc:
        raise BackendError(f"openvino {DEVICE}", f"to compile {Path(path).name} with {config}",
                           f"{type(exc).__name__}: {str(exc).strip()[:300]}") from exc


def runtime_precisions(compiled: Any) -> dict[str, dict[str, int]]:
    """How many layers of each computing type run at each precision: ``{"FullyConnected": {"i8": 27}, ...}``.

    Read from the compiled model's runtime graph (rt_info ``layerType`` / ``runtimePrecision``), so it
    is what OpenVINO executes, not what was asked for.
    """
    counts: dict[str, Counter[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        if layer not in PLUMBING_LAYERS:
            counts.setdefault(layer, Counter())[info["runtimePrecision"].astype(str)] += 1
    return {layer: dict(sorted(c.items())) for layer, c in sorted(counts.items())}


class OpenVinoRunner(Runner):
    """Options: ``hint`` (``"f32"`` default, or ``"bf16"``), ``threads`` (inference threads, default all).

    An OpenVINO ``InferRequest`` serves one call at a time, so concurrent callers each take one from
    a pool that grows to the number of callers at once; the compiled model is shared.
    """

    backend = "openvino"

    def __init__(self, bundle: Bundle, graph: str = "fusion", precision: str = "fp32", *,
                 hint: str = DEFAULT_HINT, threads: int | None = None) -> None:
        super().__init__(bundle, graph, precision)
        if hint not in HINTS:
            raise BackendError("hint", f"one of {list(HINTS)} (OpenVINO inference precision)", repr(hint))
        self.hint = hint
        self.threads = threads
        self._path = bundle.graph_path(graph, precision)
        self.compiled: Any = None
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def activate_impl(self) -> None:
        compiled = compiled_from_onnx(self._path, hint=self.hint, threads=self.threads)
        declared = {t.name: _OV_TYPES[t.dtype] for t in (*self.graph.inputs, *self.graph.outputs)}
        found = {port.get_any_name(): port.get_element_type().get_type_name()
                 for port in (*compiled.inputs, *compiled.outputs)}
        if declared != found:
            raise BundleError(self._path.name, f"inputs and outputs {declared} as in manifest.json", str(found))
        self._output_names = [port.get_any_name() for port in compiled.outputs]
        self._requests = queue.SimpleQueue()
        self.compiled = compiled

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # share_outputs=False copies the results out, so the request can serve the next caller.
            result = request.infer(feed, share_inputs=True, share_outputs=False)
            return {name: result[i] for i, name in enumerate(self._output_names)}
        finally:
            self._requests.put(request)

    def deactivate_impl(self) -> None:
        self.compiled = None
        self._requests = queue.SimpleQueue()

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "hint": self.hint, "threads": self.threads or os.cpu_count()}
        if self.compiled is not None:
            info["device"] = import_openvino().Core().get_property(DEVICE, "FULL_DEVICE_NAME")
            info["inference_precision"] = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
            info["runtime_precision"] = runtime_precisions(self.compiled)
        return info
