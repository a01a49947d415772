"""``Session``: one graph of a bundle on a backend chosen by name."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.spec import TensorSpec
from fusionrt.errors import BackendError
from fusionrt.runtime.auto import AUTO, AutoChoice, resolve_auto
from fusionrt.runtime.runner import Runner

# name -> "module:class". Modules are imported only when chosen, so each backend's packages stay optional.
BACKENDS: dict[str, str] = {
    "onnxruntime": "fusionrt.runtime.backends.onnxrt:OnnxRuntimeRunner",
    "torch": "fusionrt.runtime.backends.pytorch:TorchRunner",
    "tensorrt": "fusionrt.runtime.backends.tensorrt.runner:TensorRTRunner",
    "openvino": "fusionrt.runtime.backends.openvino:OpenVinoRunner",
}


def runner_class(backend: str) -> type[Runner]:
    """The runner class registered as ``backend``."""
    if backend not in BACKENDS:
        raise BackendError("backend", f"one of {sorted(BACKENDS)}", repr(backend))
    module_name, class_name = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)


class Session:
    """Run one graph of a bundle: ``Session(bundle_dir).run({"input_ids": ..., ...}) -> {"hidden": ..., ...}``.

    ``bundle``: a bundle directory (opened and hash-verified here) or an opened :class:`Bundle`
    (so several sessions share one verification). ``backend``: a name of :data:`BACKENDS`.
    ``graph``: ``"fusion"`` or ``"region_encoder"``. ``precision``: ``"fp32"`` or a precision the
    manifest lists for the graph, or ``"auto"``: the path ``fusionrt tune`` recorded in the manifest as
    fastest within budget (with ``backend="auto"`` the fastest overall, else the fastest on ``backend``;
    see :mod:`fusionrt.runtime.auto`). ``options`` go to the backend's runner (for onnxruntime:
    ``providers``, ``threads``, ``optimization``; for openvino: ``hint``, ``threads``; for torch:
    ``module``, ``checkpoint``).

    ``run`` validates its feed against the manifest (raising :class:`fusionrt.errors.InputError`)
    and is safe to call from several threads at once. ``close`` waits for the calls in flight; after
    it, ``run`` raises :class:`SessionClosedError` (the graph is never reloaded silently).
    """

    def __init__(self, bundle: str | Path | Bundle, backend: str = "onnxruntime", graph: str = "fusion",
                 precision: str = "fp32", **options: Any) -> None:
        if AUTO not in (backend, precision):
            runner_class(backend)  # an unknown backend is refused before the bundle is read
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.auto: AutoChoice | None = None
        if AUTO in (backend, precision):
            self.auto = resolve_auto(self.bundle, backend, graph)
            backend, precision = self.auto.backend, self.auto.precision
            options = {**self.auto.options, **options}
        cls = runner_class(backend)
        self.runner: Runner = cls(self.bundle, graph, precision, **options)
        self.runner.activate()

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def graph(self) -> str:
        return self.runner.graph.name

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Name, dtype and shape (dims as ints or symbols) of each input, in graph order."""
        return self.runner.graph.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.runner.graph.outputs

    @property
    def dims(self) -> Mapping[str, Any]:
        """Range (min / opt / max) of each dynamic dim symbol."""
        return self.runner.graph.dims

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate ``feed``, run the graph, and return each output by name."""
        return self.runner.infer(feed)

    def describe(self) -> dict[str, Any]:
        info = {**self.runner.describe(), "bundle": str(self.bundle.path)}
        if self.auto is not None:
            info["auto"] = {"ms": self.auto.ms, "same_machine": self.auto.same_machine}
        return info

    def close(self) -> None:
        """Refuse new calls, wait for those in flight, release the engine (idempotent)."""
        self.runner.deactivate()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({str(self.bundle.path)!r}, backend={self.backend!r}, graph={self.graph!r}, " \
               f"precision={self.precision!r})"
