"""ONNX Runtime backend. Imports onnxruntime lazily and never imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.errors import BackendError, BundleError
from fusionrt.runtime.backends.ort_providers import CPU, captured_stdout, check_providers, provider_list
from fusionrt.runtime.runner import Runner

OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
# ORT logs which provider it skipped at warning level 2; 3 keeps the console for real errors.
_LOG_ERRORS_ONLY = 3
_ORT_TYPES = {"bool": "tensor(bool)", "int32": "tensor(int32)", "int64": "tensor(int64)",
              "float16": "tensor(float16)", "float32": "tensor(float)"}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError("backend 'onnxruntime'", "the onnxruntime package (pip install 'fusionrt[onnx]')",
                           f"ImportError: {exc}") from exc
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build and machine have it, else CPU. TensorRT is its own backend."""
    available = import_onnxruntime().get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session_from_onnx(path: str | Path, *, providers: list[str] | None = None, threads: int | None = None,
                      optimization: str = "all", provider_options: list[dict[str, Any]] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path``; a file ORT cannot load raises :class:`BundleError`."""
    ort = import_onnxruntime()
    if optimization not in OPTIMIZATION_LEVELS:
        raise BackendError("optimization", f"one of {list(OPTIMIZATION_LEVELS)}", repr(optimization))
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    options.log_severity_level = _LOG_ERRORS_ONLY
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers or default_providers(),
                                    provider_options=provider_options)
    except Exception as exc:  # onnxruntime raises pybind exceptions (InvalidProtobuf, Fail, ...) without a base
        raise BundleError(Path(path).name, "an ONNX model onnxruntime can load",
                          f"a file it refuses ({type(exc).__name__}: {str(exc).strip()[:300]})") from exc


class OnnxRuntimeRunner(Runner):
    """Options: ``providers`` (short names ``tensorrt`` / ``cuda`` / ``cpu`` or ORT's full names; default CUDA if
    this onnxruntime has it, then CPU), ``provider_options`` (provider -> options, names validated; TensorRT's
    profile shapes and caches come from the manifest), ``allow_fallback`` (warn instead of refusing when a GPU
    provider that was asked for does not load), ``threads`` (intra-op), ``optimization``."""

    backend = "onnxruntime"

    def __init__(self, bundle: Bundle, graph: str = "fusion", precision: str = "fp32", *,
                 providers: list[str] | None = None, threads: int | None = None, optimization: str = "all",
                 provider_options: dict[str, dict[str, Any]] | None = None, allow_fallback: bool = False) -> None:
        super().__init__(bundle, graph, precision)
        self._options = {"threads": threads, "optimization": optimization}
        # None: the defaults, which may fall back (nothing was asked for); a list: exactly these, checked
        self._providers = None if providers is None else provider_list(providers, bundle, self.graph, precision,
                                                                       provider_options)
        self._allow_fallback = allow_fallback
        self._path = bundle.graph_path(graph, precision)
        self._output_names = [t.name for t in self.graph.outputs]
        self.session: Any = None

    def _open_session(self) -> Any:
        if self._providers is None:
            return session_from_onnx(self._path, **self._options)
        requested = [name for name, _ in self._providers]
        available = import_onnxruntime().get_available_providers()
        loadable = [(n, o) for n, o in self._providers if n in available]
        # ORT would warn and drop a provider this build lacks; refuse (or warn) first, naming it
        check_providers(requested, [n for n, _ in loadable], [], available, self._allow_fallback)
        loadable = loadable or [(CPU, {})]
        with captured_stdout() as printed:
            session = session_from_onnx(self._path, providers=[n for n, _ in loadable],
                                        provider_options=[o for _, o in loadable], **self._options)
        check_providers(requested, session.get_providers(), printed, available, self._allow_fallback)
        return session

    def activate_impl(self) -> None:
        session = self._open_session()
        declared = {t.name: _ORT_TYPES[t.dtype] for t in (*self.graph.inputs, *self.graph.outputs)}
        found = {v.name: v.type for v in (*session.get_inputs(), *session.get_outputs())}
        if declared != found:
            raise BundleError(self._path.name, f"inputs and outputs {declared} as in manifest.json", str(found))
        shapes = {v.name: v.shape for v in (*session.get_inputs(), *session.get_outputs())}
        for tensor in (*self.graph.inputs, *self.graph.outputs):
            graph_shape = shapes[tensor.name]
            if len(graph_shape) != len(tensor.shape) or any(
                    isinstance(want, int) and isinstance(got, int) and want != got
                    for want, got in zip(tensor.shape, graph_shape, strict=False)):
                raise BundleError(self._path.name, f"{tensor.name} of shape {tensor.shape_text()} as in manifest.json",
                                  f"shape {graph_shape} in the graph")
        self.session = session

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe; no lock on the hot path.
        try:
            return dict(zip(self._output_names, self.session.run(self._output_names, feed), strict=True))
        except Exception as exc:  # onnxruntime's InvalidArgument / Fail / RuntimeException share no public base
            raise BackendError(f"onnxruntime run of {self._path.name}",
                               "a feed the graph accepts (the manifest's ranges may not match the graph)",
                               f"{type(exc).__name__}: {str(exc).strip()[:300]}") from exc

    def deactivate_impl(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.session is not None:
            info["providers"] = self.session.get_providers()
        return info
