"""``export_onnx`` (any fusion module) and ``export_checkpoint`` (our model and its region encoder).

An export is: probe the module's forward contract, export each graph, check it structurally, write
the manifest, run the bundle through :class:`fusionrt.runtime.Session` on onnxruntime against the
torch module over a grid of shapes, and only if every point is within tolerance publish the bundle.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fusionrt
from fusionrt.bundle.manifest import BUNDLE_FORMAT, CUSTOM_TASK, SCHEMA_VERSION, VQA_TASK, Bundle, graph_filename
from fusionrt.bundle.reference import ModelReference
from fusionrt.bundle.source import checkpoint_files_sha256, weights_sha256
from fusionrt.bundle.spec import GraphSpec
from fusionrt.export.checks import check_graph
from fusionrt.export.contract import (
    FUSION,
    FUSION_INPUTS,
    REGION_ENCODER,
    example_size,
    fusion_spec,
    max_corner,
    region_encoder_spec,
)
from fusionrt.export.errors import ExportError, VerificationError
from fusionrt.export.exporters import DEFAULT_EXPORTER, EXPORTERS, export_graph
from fusionrt.export.outputs import describe_outputs, probe, probe_sizes
from fusionrt.export.writer import BundleWriter
from fusionrt.io import utc_timestamp
from fusionrt.parity.compare import Tolerance, compare_grid
from fusionrt.parity.grid import GridPoint, grid_points, random_feed
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.session import Session

FUSION_CONTRACT = ("forward(input_ids int64 [B,T], text_mask bool [B,T], visual_feats float32 [B,M,Dv], "
                   "visual_mask bool [B,M]) -> (hidden float32 [B,T,H], logits float32 [B,A])")


@dataclass
class _Graph:
    spec: GraphSpec
    module: Any
    example: tuple[Any, ...]
    info: dict[str, Any] = field(default_factory=dict)
    # the verification grid; None: the spec's default grid plus its max corner
    points: list[GridPoint] | None = None


def _positive(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ExportError(name, "a positive integer", repr(value))


def _fusion_graph(model: Any, *, vocab_size: int, visual_dim: int, max_text_len: int, max_visual_len: int,
                  max_batch: int) -> _Graph:
    """Run the module at two shapes to learn its outputs (names, symbolic shapes) and check its contract."""
    first, second = probe_sizes(max_batch, max_text_len, max_visual_len, visual_dim)
    probes = [probe(model, first, vocab_size, visual_dim, seed=0, empty_visual_row=False),
              probe(model, second, vocab_size, visual_dim, seed=1, empty_visual_row=True)]
    outputs = describe_outputs(model, probes)
    spec = fusion_spec(vocab_size=vocab_size, visual_dim=visual_dim, hidden=0, num_answers=0,
                       max_text_len=max_text_len, max_visual_len=max_visual_len, max_batch=max_batch,
                       outputs=outputs)
    return _Graph(spec, model, probes[0].example)


def _region_graph(encoder: Any, *, max_regions: int, opt_regions: int) -> _Graph:
    import torch

    from fusionrt.model.region_encoder import CROP_SIZE, GEOMETRY_DIM

    spec = region_encoder_spec(crop_size=CROP_SIZE, geometry_dim=GEOMETRY_DIM,
                               feature_dim=encoder.config.feature_dim, max_regions=max_regions,
                               opt_regions=opt_regions)
    count = example_size(6, max_regions, (3, CROP_SIZE, GEOMETRY_DIM, encoder.config.feature_dim))
    generator = torch.Generator().manual_seed(0)
    example = (torch.rand(count, 3, CROP_SIZE, CROP_SIZE, generator=generator),
               torch.rand(count, GEOMETRY_DIM, generator=generator))
    return _Graph(spec, encoder, example)


def _versions(exporter: str) -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    versions = {"fusionrt": fusionrt.__version__, "python": platform.python_version(), "numpy": np.__version__,
                "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    if exporter == "dynamo":
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    return versions


def verification_points(spec: GraphSpec, seed: int = 0) -> list[GridPoint]:
    """The shape grid of ``spec`` plus its declared max corner (every dynamic dim at max together)."""
    points = grid_points(spec, seed=seed)
    corner = max_corner(spec)
    if all(dict(p.sizes) != corner for p in points):
        points.append(GridPoint(corner, random_feed(spec, corner, np.random.default_rng(seed + 1))))
    return points


def _verify(staging: Path, graphs: list[_Graph], tolerance: Tolerance, progress: Progress) -> dict[str, Any]:
    """ONNX Runtime (through the runtime Session, as deployed) vs the torch module on each graph's grid
    and at the max corner the manifest declares."""
    bundle = Bundle.open(staging)
    summary, failures, reports = {}, [], []
    for graph in graphs:
        reference = Session(bundle, "torch", graph.spec.name, module=graph.module)
        candidate = Session(bundle, "onnxruntime", graph.spec.name)
        points = graph.points if graph.points is not None else verification_points(graph.spec)
        result = compare_grid(graph.spec.name, reference, candidate, points, progress,
                              phase=f"verify {graph.spec.name}")
        reports.append(result)
        failures += result.failures(tolerance)
        corner = max_corner(graph.spec)
        summary[graph.spec.name] = {"points": len(result.points), "worst": result.summary(),
                                    "max_corner": " ".join(f"{k}={v}" for k, v in corner.items())
                                    if graph.points is None else "not run (the graph's own grid)"}
    if failures:
        raise VerificationError(
            "export verification",
            f"ONNX Runtime within max abs {tolerance.max_abs:g} of PyTorch at every grid point", failures, reports,
        )
    return summary


def _attempt(out_dir: Path, graphs: list[_Graph], files: dict[str, bytes], manifest: dict[str, Any], opset: int,
             exporter: str, tolerance: Tolerance, progress: Progress) -> Path:
    started = time.perf_counter()
    with BundleWriter(out_dir) as writer:
        for graph in progress.iterate(graphs, f"export ({exporter} exporter, opset {opset})", unit="graph"):
            path = writer.path / graph_filename(graph.spec.name)
            warnings = export_graph(graph.module, graph.example, graph.spec, path, opset=opset, exporter=exporter)
            graph.info = {**check_graph(path, graph.spec, opset), "exporter_warnings": warnings}
        for name, data in files.items():
            writer.write_bytes(name, data)
        opsets = {g.info["opset"] for g in graphs}
        manifest = {
            "format": BUNDLE_FORMAT, "schema_version": SCHEMA_VERSION,
            "created_utc": utc_timestamp(),
            **manifest,
            "opset": opsets.pop() if len(opsets) == 1 else sorted(opsets),
            "exporter": exporter,
            "graphs": {g.spec.name: {**g.spec.to_dict(), **{k: g.info[k] for k in ("opset", "nodes")}}
                       for g in graphs},
            "versions": _versions(exporter),
        }
        writer.write_manifest(manifest)
        verification = _verify(writer.path, graphs, tolerance, progress)
        writer.write_manifest({**manifest, "verification": {
            "reference": "torch", "candidate": "onnxruntime", "tolerance": {"max_abs": tolerance.max_abs},
            "graphs": verification, "export_seconds": round(time.perf_counter() - started, 1),
            "exporter_warnings": {g.spec.name: g.info["exporter_warnings"] for g in graphs},
        }})
        return writer.publish()


def _export(out_dir: str | Path, graphs: list[_Graph], files: dict[str, bytes], manifest: dict[str, Any],
            opset: int, exporter: str, atol: float, progress: Progress) -> Path:
    if exporter not in (*EXPORTERS, "auto"):
        raise ExportError("exporter", f"one of {[*EXPORTERS, 'auto']}", repr(exporter))
    _positive(opset=opset)
    order = [DEFAULT_EXPORTER, *(e for e in EXPORTERS if e != DEFAULT_EXPORTER)] if exporter == "auto" else [exporter]
    # max_abs is the contract's gate; cosine is implied by it at fp32 and not gated here.
    tolerance = Tolerance(max_abs=atol, min_cosine=-1.0)
    errors: list[tuple[str, ExportError]] = []
    for name in order:
        try:
            return _attempt(Path(out_dir), graphs, files, manifest, opset, name, tolerance, progress)
        except VerificationError as exc:
            errors.append((name, exc))
        except ExportError as exc:
            if exc.name == "out_dir":
                raise
            errors.append((name, exc))
        if name != order[-1]:
            progress.note(f"{name} exporter failed ({errors[-1][1]}); trying the next exporter")
    if len(errors) == 1:
        raise errors[0][1]
    failures = [f"{name} exporter: {exc}" for name, exc in errors]
    raise VerificationError("export", "one exporter whose graph passes every check", failures,
                            [getattr(exc, "report", None) for _, exc in errors])


def _output_size(spec: GraphSpec, name: str, rank: int) -> int | None:
    """The fixed last size of output ``name`` when it has the default contract's rank, else None."""
    tensor = next((t for t in spec.outputs if t.name == name), None)
    if tensor is None or len(tensor.shape) != rank or not isinstance(tensor.shape[-1], int):
        return None
    return tensor.shape[-1]


def export_onnx(model: Any, out_dir: str | Path, *, vocab_size: int, visual_dim: int, max_text_len: int,
                max_visual_len: int, max_batch: int = 64, opset: int = 17, exporter: str = "auto",
                atol: float = 1e-4, progress: Progress = SILENT) -> Path:
    """Export any fusion module to a verified bundle at ``out_dir``; return its path.

    ``model``: a ``torch.nn.Module``, or a model reference (``"FILE.py:FACTORY"``, ``"package.module:FACTORY"``
    or a :class:`ModelReference`) whose factory returns one; a reference is recorded in the manifest with the
    sha256 of its file, so parity and the pipeline can re-load the module later. Its ``forward(input_ids int64
    [B,T], text_mask bool [B,T], visual_feats float32 [B,M,visual_dim], visual_mask bool [B,M])`` returns float32
    tensors whose first axis is B (e.g. ``hidden [B,T,H], logits [B,A]``; see :mod:`fusionrt.export.outputs`
    for names and declared shapes); ``vocab_size`` bounds the token ids, ``max_*`` the dynamic dims.
    ``exporter``: ``"legacy"``, ``"dynamo"`` or ``"auto"`` (the measured faster one first, the other
    if it fails). Raises :class:`ExportError` for an unusable module or target (naming the output and shape
    for an output that breaks the contract) and :class:`VerificationError` (with the failing grid points) when
    ONNX Runtime and PyTorch differ by more than ``atol`` on an output; nothing is written then.
    """
    import torch

    reference = None
    if isinstance(model, ModelReference) or (isinstance(model, str) and ":" in model):
        reference = ModelReference.parse(model, "model") if isinstance(model, str) else model
        model = reference.load("model")
    if not isinstance(model, torch.nn.Module):
        raise ExportError("model", "a torch.nn.Module", type(model).__name__)
    _positive(vocab_size=vocab_size, visual_dim=visual_dim, max_text_len=max_text_len,
              max_visual_len=max_visual_len, max_batch=max_batch)
    model.eval()
    graph = _fusion_graph(model, vocab_size=vocab_size, visual_dim=visual_dim, max_text_len=max_text_len,
                          max_visual_len=max_visual_len, max_batch=max_batch)
    config = getattr(model, "config", None)
    class_name = f"{type(model).__module__}.{type(model).__qualname__}"
    source: dict[str, Any] = {"kind": "module", "class": class_name,
                              "weights_sha256": {FUSION: weights_sha256(model)}}
    if reference is not None:
        record = reference.record("model")
        source.update(kind="reference", **record, files={Path(record["file"]).name: record["file_sha256"]})
    manifest = {
        "task": CUSTOM_TASK,
        "model": {
            "class": class_name,
            "vocab_size": vocab_size, "visual_dim": visual_dim, "max_text_len": max_text_len,
            "max_visual_len": max_visual_len, "max_batch": max_batch,
            "hidden": _output_size(graph.spec, "hidden", 3), "num_answers": _output_size(graph.spec, "logits", 2),
            "config": config.to_dict() if hasattr(config, "to_dict") else None,
        },
        "source": source,
    }
    return _export(out_dir, [graph], {}, manifest, opset, exporter, atol, progress)


def checkpoint_model_manifest(model: Any, config: Any, region_encoder: Any, max_batch: int) -> dict[str, Any]:
    """The manifest's ``model`` section for a checkpoint's fusion ``model`` (of ``config``) and region encoder."""
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "vocab_size": config.vocab_size, "visual_dim": config.visual_dim, "max_text_len": config.max_text_len,
        "max_visual_len": config.max_visual_len, "max_batch": max_batch, "hidden": config.hidden,
        "num_answers": config.num_answers, "config": config.to_dict(),
        "region_encoder": {"cnn_dim": region_encoder.config.cnn_dim, "channels": region_encoder.config.channels,
                           "feature_dim": region_encoder.config.feature_dim},
    }


def export_checkpoint(checkpoint_dir: str | Path | None, out_dir: str | Path, *,
                      max_batch: int = 64, opset: int = 17, exporter: str = "auto", atol: float = 1e-4,
                      progress: Progress = SILENT) -> Path:
    """Export a checkpoint (``None``: the shipped one): fusion graph, region-encoder graph with a dynamic
    number of crops, ``tokenizer.json`` and ``answers.json``, verified as :func:`export_onnx` does."""
    from fusionrt.model import SHIPPED_CHECKPOINT, load_checkpoint

    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else SHIPPED_CHECKPOINT
    _positive(max_batch=max_batch)
    source_files = checkpoint_files_sha256(checkpoint_dir) if checkpoint_dir.is_dir() else {}
    checkpoint = load_checkpoint(checkpoint_dir)
    config = checkpoint.fusion.config
    feature_dim = checkpoint.region_encoder.config.feature_dim
    if feature_dim != config.visual_dim:
        raise ExportError("checkpoint", f"a region encoder of feature width visual_dim={config.visual_dim}",
                          f"width {feature_dim}")
    graphs = [
        _fusion_graph(checkpoint.fusion, vocab_size=config.vocab_size, visual_dim=config.visual_dim,
                      max_text_len=config.max_text_len, max_visual_len=config.max_visual_len, max_batch=max_batch),
        _region_graph(checkpoint.region_encoder, max_regions=max_batch * config.max_visual_len,
                      opt_regions=config.max_visual_len),
    ]
    files = {name: (checkpoint_dir / name).read_bytes() for name in ("tokenizer.json", "answers.json")}
    manifest = {
        "task": VQA_TASK,
        "model": checkpoint_model_manifest(checkpoint.fusion, config, checkpoint.region_encoder, max_batch),
        "source": {
            "kind": "checkpoint", "path": str(checkpoint_dir.resolve()), "files": source_files,
            "weights_sha256": {FUSION: weights_sha256(checkpoint.fusion),
                               REGION_ENCODER: weights_sha256(checkpoint.region_encoder)},
        },
    }
    return _export(out_dir, graphs, files, manifest, opset, exporter, atol, progress)


__all__ = ["FUSION_CONTRACT", "FUSION_INPUTS", "export_checkpoint", "export_onnx"]
