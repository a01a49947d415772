"""PyTorch eager backend: the reference the exported graphs are compared against.

A bundle holds graphs, not torch modules, so this backend runs the module the bundle was exported
from: the source checkpoint recorded in the manifest (its files must still have the recorded
sha256), or a module passed as ``module=`` (its weights must hash to the recorded value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import Bundle, sha256_file
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


def load_source_module(bundle: Bundle, graph: str, checkpoint: str | Path | None = None) -> Any:
    """The torch module graph ``graph`` was exported from, checked against the manifest's hashes."""
    source = bundle.manifest.get("source", {})
    if source.get("kind") != "checkpoint":
        raise BackendError(
            "module", "the torch.nn.Module this bundle was exported from: Session(..., backend='torch', module=m)",
            f"nothing, and the bundle records no checkpoint (source {source.get('class', source.get('kind'))!r})",
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
    """Options: ``module`` (the source module itself) or ``checkpoint`` (where the source checkpoint is now)."""

    backend = "torch"
    precisions = ("fp32",)

    def __init__(self, bundle: Bundle, graph: str = "fusion", precision: str = "fp32", *,
                 module: Any = None, checkpoint: str | Path | None = None) -> None:
        super().__init__(bundle, graph, precision)
        self._module_option = module
        self._checkpoint = checkpoint
        self._input_names = [t.name for t in self.graph.inputs]
        self._output_names = [t.name for t in self.graph.outputs]
        self.module: Any = None

    def activate_impl(self) -> None:
        self._torch = _import_torch()
        module = self._module_option
        if module is None:
            module = load_source_module(self.bundle, self.graph.name, self._checkpoint)
        else:
            recorded = self.bundle.manifest.get("source", {}).get("weights_sha256", {})
            expected = recorded.get(self.graph.name) if isinstance(recorded, dict) else None
            if expected is not None and weights_sha256(module) != expected:
                raise BackendError("module", f"weights with the sha256 recorded at export ({expected[:12]}...)",
                                   f"a {type(module).__name__} with other weights")
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
