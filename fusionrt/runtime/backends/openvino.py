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


def _ports_by_name(filename: str, declared: tuple, ports: Any) -> dict[str, int]:
    """Index of the port carrying each declared tensor (by membership in the port's names), dtype checked."""
    found: dict[str, int] = {}
    for tensor in declared:
        index = next((i for i, port in enumerate(ports) if tensor.name in port.get_names()), None)
        if index is None or ports[index].get_element_type().get_type_name() != _OV_TYPES[tensor.dtype]:
            seen = {sorted(p.get_names())[0]: p.get_element_type().get_type_name() for p in ports}
            raise BundleError(filename, f"a port named {tensor.name!r} of type {_OV_TYPES[tensor.dtype]} "
                                        "as in manifest.json", f"ports {seen}")
        found[tensor.name] = index
    if len(found) != len(ports):
        raise BundleError(filename, f"exactly the ports {[t.name for t in declared]} as in manifest.json",
                          f"{len(ports)} ports")
    return found


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
        # A port has several names: a converted graph (fp16) puts a Cast behind an input, and OpenVINO's
        # "any" name is then the cast's (graph_input_cast_2); the manifest's name is one of the port's names.
        self._input_ports = _ports_by_name(self._path.name, self.graph.inputs, compiled.inputs)
        self._output_ports = _ports_by_name(self._path.name, self.graph.outputs, compiled.outputs)
        self._output_names = [t.name for t in self.graph.outputs]
        self._requests = queue.SimpleQueue()
        self.compiled = compiled

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # share_outputs=False copies the results out, so the request can serve the next caller.
            try:
                result = request.infer({self._input_ports[name]: array for name, array in feed.items()},
                                       share_inputs=True, share_outputs=False)
            except Exception as exc:  # openvino raises RuntimeError subclasses without a documented base
                raise BackendError(f"openvino run of {self._path.name}",
                                   "a feed the graph accepts (the manifest's ranges may not match the graph)",
                                   f"{type(exc).__name__}: {str(exc).strip()[:300]}") from exc
            return {name: result[self._output_ports[name]] for name in self._output_names}
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
