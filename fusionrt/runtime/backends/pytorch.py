"""PyTorch eager backend: the reference the exported graphs are compared against.

A bundle holds graphs, not torch modules, so this backend runs the module the bundle was exported
from: the source checkpoint recorded in the manifest (its files must still have the recorded
sha256), the model reference recorded in the manifest (``FILE.py:FACTORY``: the file must still have
the recorded sha256), a reference passed as ``model=`` (given again: the file may have changed), or a
module passed as ``module=``. A module built from a reference or passed in must have the weights
recorded at export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle, sha256_file
from fusionrt.bundle.reference import ModelReference
from fusionrt.bundle.source import weights_sha256
from fusionrt.errors import BackendError, BundleError
from fusionrt.runtime.runner import Runner


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendError("backend 'torch'", "the torch package (pip install 'fusionrt[torch]')",
                           f"ImportError: {exc}") from exc
    return torch


def _check_weights(bundle: Bundle, graph: str, module: Any, what: str) -> Any:
    recorded = bundle.manifest.get("source", {}).get("weights_sha256", {})
    expected = recorded.get(graph) if isinstance(recorded, dict) else None
    if expected is not None and weights_sha256(module) != expected:
        raise BackendError("module", f"weights with the sha256 recorded at export ({expected[:12]}...)",
                           f"{what} with other weights")
    return module


def _load_reference(bundle: Bundle, graph: str, model: str | ModelReference | None) -> Any:
    """The module a reference builds: ``model`` if given (the user named it again), else the recorded one,
    whose file must still hash as recorded."""
    if graph != "fusion":
        raise BackendError("graph", "'fusion' on the torch backend (a model reference builds the fusion module)",
                           repr(graph))
    if model is not None:
        reference = model if isinstance(model, ModelReference) else ModelReference.parse(model)
        return _check_weights(bundle, graph, reference.load(), f"{reference}()")
    source = bundle.manifest["source"]
    reference = ModelReference.parse(str(source.get("reference")), "manifest.json source.reference")
    file = Path(str(source.get("file", reference.module)))
    if not file.is_file():
        raise BundleError("source model", f"the file {file} recorded at export (pass --model REF if it moved)",
                          "nothing")
    if sha256_file(file) != source.get("file_sha256"):
        raise BundleError("source model", f"{file} with the sha256 recorded at export "
                          f"({str(source.get('file_sha256'))[:12]}...); pass --model REF again to use it as it "
                          "is now", "a file that changed since export")
    return _check_weights(bundle, graph, reference.load("manifest.json source.reference"), f"{reference}()")


def load_source_module(bundle: Bundle, graph: str, checkpoint: str | Path | None = None,
                       model: str | ModelReference | None = None) -> Any:
    """The torch module graph ``graph`` was exported from, checked against the manifest's hashes."""
    source = bundle.manifest.get("source", {})
    if source.get("kind") == "reference" or model is not None:
        return _load_reference(bundle, graph, model)
    if source.get("kind") != "checkpoint":
        raise BackendError(
            "module", "the torch.nn.Module this bundle was exported from: Session(..., backend='torch', module=m) "
            "or a model reference (--model FILE.py:FACTORY)",
            f"nothing, and the bundle records no checkpoint or model reference "
            f"(source {source.get('class', source.get('kind'))!r})",
        )
    if checkpoint is None and not isinstance(source.get("path"), str):
        raise BundleError("manifest.json source", "the path of the checkpoint it was exported from",
                          repr(source.get("path")))
    path = Path(checkpoint if checkpoint is not None else source["path"])
    for name, digest in source.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise BundleError("source checkpoint", f"{name} in {path} (pass checkpoint=DIR if it moved)",
                              "nothing")
        if sha256_file(file) != digest:
            raise BundleError("source checkpoint", f"{name} with the sha256 recorded at export",
                              f"a different file at {file}")
    if bundle.task == "match":
        from fusionrt.model.match_checkpoint import load_match_checkpoint

        match = load_match_checkpoint(path)
        modules = {"fusion": match.model.itm, "region_encoder": match.region_encoder,
                   "text_embed": match.model.text_embedder(), "image_embed": match.model.image_embedder}
    else:
        from fusionrt.model import load_checkpoint

        loaded = load_checkpoint(path)
        modules = {"fusion": loaded.fusion, "region_encoder": loaded.region_encoder}
    if graph not in modules:
        raise BackendError("graph", f"one of {sorted(modules)} on the torch backend", repr(graph))
    return modules[graph]


class TorchRunner(Runner):
    """Options: ``module`` (the source module itself), ``model`` (a model reference ``FILE.py:FACTORY``, given
    again) or ``checkpoint`` (where the source checkpoint is now)."""

    backend = "torch"
    precisions = ("fp32",)

    def __init__(self, bundle: Bundle, graph: str = "fusion", precision: str = "fp32", *,
                 module: Any = None, checkpoint: str | Path | None = None,
                 model: str | ModelReference | None = None) -> None:
        super().__init__(bundle, graph, precision)
        self._module_option = module
        self._model = model
        self._checkpoint = checkpoint
        self._input_names = [t.name for t in self.graph.inputs]
        self._output_names = [t.name for t in self.graph.outputs]
        self.module: Any = None

    def activate_impl(self) -> None:
        self._torch = _import_torch()
        module = self._module_option
        if module is None:
            module = load_source_module(self.bundle, self.graph.name, self._checkpoint, self._model)
        else:
            _check_weights(self.bundle, self.graph.name, module, f"a {type(module).__name__}")
        self.module = module.eval()

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        # inference_mode is thread-local, so concurrent callers do not interfere.
        with torch.inference_mode():
            result = self.module(*(torch.from_numpy(feed[name]) for name in self._input_names))
        if isinstance(result, torch.Tensor):
            result = (result,)
        return {name: tensor.detach().cpu().numpy() for name, tensor in zip(self._output_names, result, strict=True)}

    def deactivate_impl(self) -> None:
        self.module = None
