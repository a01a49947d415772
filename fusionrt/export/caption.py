"""Export a caption checkpoint to a bundle with a KV cache: two decoder graphs and the region encoder.

- ``caption_visual``: ``visual_feats`` float32 [B,M,Dv], ``visual_mask`` bool [B,M] -> ``visual_key``,
  ``visual_value`` float32 [L,B,heads,M,head_dim]; run once per image.
- ``caption_step``: ``input_ids`` int64 [B,S], ``new_mask`` bool [B,S], ``past_mask`` bool [B,P],
  ``past_key`` / ``past_value`` float32 [L,B,heads,P,head_dim] (P = 0 on the first step), ``visual_key`` /
  ``visual_value``, ``visual_mask`` -> ``logits`` float32 [B,S,V] and ``present_key`` / ``present_value``
  [L,B,heads,K,head_dim] with K = P + S: the past with the new keys appended by a plain Concat (opset 17),
  the form every parser here takes (ORT CPU, OpenVINO; TensorRT 10/11's ONNX parsers list Concat).
- ``caption_step_buffer``: the same step in buffer form (:mod:`fusionrt.model.caption_buffer`): ``input_ids``,
  ``new_mask``, ``position`` int64 [1] (= P), ``cache_mask`` bool [B,C], ``cache_key`` / ``cache_value`` float32
  [L,B,heads,C,head_dim] with C = ``max_text_len`` (a buffer the runtime owns and writes), the visual cache and
  mask -> ``logits`` and ``new_key`` / ``new_value`` [L,B,heads,S,head_dim] (only the new positions). The
  runtime picks the form per backend (:mod:`fusionrt.caption.forms`).
- ``region_encoder``: as in the VQA bundle.

Verification runs ONNX Runtime against PyTorch on a grid of B x P x S x M that includes P = 0, P = max,
S = 1, S > 1, partially masked rows and rows with every key masked; any point past ``atol`` fails the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bundle.manifest import graph_filename
from fusionrt.bundle.source import checkpoint_files_sha256, weights_sha256
from fusionrt.bundle.spec import REGION_ENCODER, DimRange, GraphSpec, TensorSpec
from fusionrt.export.api import _export, _Graph, _region_graph
from fusionrt.export.errors import ExportError
from fusionrt.parity.grid import GridPoint, random_feed
from fusionrt.progress import SILENT, Progress

CAPTION_TASK = "caption"
CAPTION_VISUAL = "caption_visual"
CAPTION_STEP = "caption_step"
CAPTION_STEP_BUFFER = "caption_step_buffer"
STEP_INPUTS = ("input_ids", "new_mask", "past_mask", "past_key", "past_value", "visual_key", "visual_value",
               "visual_mask")
BUFFER_STEP_INPUTS = ("input_ids", "new_mask", "position", "cache_mask", "cache_key", "cache_value", "visual_key",
                      "visual_value", "visual_mask")


def _dims(config: Any, max_batch: int) -> dict[str, DimRange]:
    return {
        "B": DimRange(1, 1, max_batch),
        "M": DimRange(1, max(1, config.max_visual_len // 2), config.max_visual_len, pad_when_empty=True),
        "S": DimRange(1, 1, config.max_text_len),
        "P": DimRange(0, config.max_text_len // 2, config.max_text_len - 1),
        "K": DimRange(1, config.max_text_len // 2, config.max_text_len),
    }


def caption_visual_spec(config: Any, max_batch: int) -> GraphSpec:
    dims = _dims(config, max_batch)
    cache = (config.layers, "B", config.heads, "M", config.hidden // config.heads)
    return GraphSpec(
        CAPTION_VISUAL,
        inputs=(TensorSpec("visual_feats", "float32", ("B", "M", config.visual_dim)),
                TensorSpec("visual_mask", "bool", ("B", "M"), prefix_mask=True)),
        outputs=(TensorSpec("visual_key", "float32", cache), TensorSpec("visual_value", "float32", cache)),
        dims={k: dims[k] for k in ("B", "M")}, precisions={"fp32": graph_filename(CAPTION_VISUAL)})


def caption_step_spec(config: Any, max_batch: int) -> GraphSpec:
    head_dim = config.hidden // config.heads

    def cache(length: str) -> tuple[int | str, ...]:
        return (config.layers, "B", config.heads, length, head_dim)

    return GraphSpec(
        CAPTION_STEP,
        inputs=(
            TensorSpec("input_ids", "int64", ("B", "S"), (0, config.vocab_size - 1)),
            TensorSpec("new_mask", "bool", ("B", "S")),
            TensorSpec("past_mask", "bool", ("B", "P")),
            TensorSpec("past_key", "float32", cache("P")),
            TensorSpec("past_value", "float32", cache("P")),
            TensorSpec("visual_key", "float32", cache("M")),
            TensorSpec("visual_value", "float32", cache("M")),
            TensorSpec("visual_mask", "bool", ("B", "M"), prefix_mask=True),
        ),
        outputs=(TensorSpec("logits", "float32", ("B", "S", config.vocab_size)),
                 TensorSpec("present_key", "float32", cache("K")),
                 TensorSpec("present_value", "float32", cache("K"))),
        dims=_dims(config, max_batch), precisions={"fp32": graph_filename(CAPTION_STEP)})


def caption_step_buffer_spec(config: Any, max_batch: int) -> GraphSpec:
    head_dim = config.hidden // config.heads
    capacity = config.max_text_len

    def cache(length: int | str) -> tuple[int | str, ...]:
        return (config.layers, "B", config.heads, length, head_dim)

    dims = _dims(config, max_batch)
    return GraphSpec(
        CAPTION_STEP_BUFFER,
        inputs=(
            TensorSpec("input_ids", "int64", ("B", "S"), (0, config.vocab_size - 1)),
            TensorSpec("new_mask", "bool", ("B", "S")),
            TensorSpec("position", "int64", (1,), (0, capacity - 1)),
            TensorSpec("cache_mask", "bool", ("B", capacity)),
            TensorSpec("cache_key", "float32", cache(capacity)),
            TensorSpec("cache_value", "float32", cache(capacity)),
            TensorSpec("visual_key", "float32", cache("M")),
            TensorSpec("visual_value", "float32", cache("M")),
            TensorSpec("visual_mask", "bool", ("B", "M"), prefix_mask=True),
        ),
        outputs=(TensorSpec("logits", "float32", ("B", "S", config.vocab_size)),
                 TensorSpec("new_key", "float32", cache("S")),
                 TensorSpec("new_value", "float32", cache("S"))),
        dims={k: dims[k] for k in ("B", "S", "M")}, precisions={"fp32": graph_filename(CAPTION_STEP_BUFFER)})


def _mask_rows(feed: dict[str, np.ndarray], batch: int) -> None:
    """Make some rows hard: partial visual sets, a row without regions, a row whose text keys are all masked,
    and (at B >= 8) a row with no key at all."""
    visual = feed["visual_mask"]
    visual[:] = True
    if visual.shape[1] > 1:
        visual[1 % batch, visual.shape[1] // 2:] = False
    if batch >= 2:
        visual[-1] = False
    text = np.concatenate([feed["past_mask"], feed["new_mask"]], axis=1)
    text[0] = True
    if batch >= 4:
        text[-2] = False
    if batch >= 8:
        text[-3] = False
        visual[-3] = False
    past = feed["past_mask"].shape[1]
    feed["past_mask"], feed["new_mask"] = text[:, :past].copy(), text[:, past:].copy()


def step_points(spec: GraphSpec, seed: int = 0) -> list[GridPoint]:
    """B in {1,2,8} x P in {0, 1, middle, max} x S in {1, 4, max - P} x M in {1, max}, with P + S within the
    position table, each feed with masked rows (see :func:`_mask_rows`)."""
    rng = np.random.default_rng(seed)
    dims = spec.dims
    points = []
    for batch in (1, 2, 8):
        for past in dict.fromkeys((0, 1, dims["P"].max // 2, dims["P"].max)):
            for new in dict.fromkeys((1, 4, dims["K"].max - past)):
                if not 1 <= new <= dims["K"].max - past:
                    continue
                for visual in (1, dims["M"].max):
                    sizes = {"B": batch, "S": new, "P": past, "M": visual}
                    feed = random_feed(spec, sizes, rng)
                    feed["past_key"] = rng.standard_normal(feed["past_key"].shape).astype(np.float32)
                    feed["past_value"] = rng.standard_normal(feed["past_value"].shape).astype(np.float32)
                    feed["visual_key"] = rng.standard_normal(feed["visual_key"].shape).astype(np.float32)
                    feed["visual_value"] = rng.standard_normal(feed["visual_value"].shape).astype(np.float32)
                    _mask_rows(feed, batch)
                    points.append(GridPoint(sizes, feed))
    return points


def buffer_points(spec: GraphSpec, step_spec: GraphSpec, seed: int = 0) -> list[GridPoint]:
    """The concat form's grid (:func:`step_points`) in buffer form: the past written at slots ``0 .. P-1`` of
    the buffer, random stale values in the slots after it (what a longer earlier caption leaves behind),
    which the graph must ignore."""
    rng = np.random.default_rng(seed + 1)
    capacity = int(spec.input("cache_key").shape[3])
    points = []
    for point in step_points(step_spec, seed):
        feed, past = point.feed, point.sizes["P"]
        batch = point.sizes["B"]
        buffers = {}
        for name in ("key", "value"):
            layers, rows, heads, _, head_dim = feed[f"past_{name}"].shape
            buffer = rng.standard_normal((layers, rows, heads, capacity, head_dim))
            buffer[:, :, :, :past] = feed[f"past_{name}"]
            buffers[name] = buffer.astype(np.float32)
        cache_mask = np.zeros((batch, capacity), dtype=bool)
        cache_mask[:, :past] = feed["past_mask"]
        points.append(GridPoint({"B": batch, "S": point.sizes["S"], "M": point.sizes["M"]}, {
            "input_ids": feed["input_ids"], "new_mask": feed["new_mask"], "position": np.array([past], np.int64),
            "cache_mask": cache_mask, "cache_key": buffers["key"], "cache_value": buffers["value"],
            "visual_key": feed["visual_key"], "visual_value": feed["visual_value"],
            "visual_mask": feed["visual_mask"]}))
    return points


def visual_points(spec: GraphSpec, seed: int = 0) -> list[GridPoint]:
    rng = np.random.default_rng(seed)
    points = []
    for batch in (1, 2, 8, spec.dims["B"].max):
        for visual in (1, spec.dims["M"].max // 2, spec.dims["M"].max):
            sizes = {"B": batch, "M": visual}
            feed = random_feed(spec, sizes, rng)
            feed["visual_feats"] = rng.standard_normal(feed["visual_feats"].shape).astype(np.float32)
            lengths = rng.integers(1, visual + 1, size=batch)
            lengths[0] = visual
            if batch >= 2:
                lengths[-1] = 0
            feed["visual_mask"] = np.arange(visual)[None, :] < lengths[:, None]
            points.append(GridPoint(sizes, feed))
    return points


def export_caption(checkpoint_dir: str | Path | None, out_dir: str | Path, *, max_batch: int = 16,
                   opset: int = 17, exporter: str = "legacy", atol: float = 1e-4,
                   progress: Progress = SILENT) -> Path:
    """Export a caption checkpoint (``None``: the shipped one) to a verified bundle at ``out_dir``."""
    import torch

    from fusionrt.model.caption import StepGraph, VisualCacheGraph
    from fusionrt.model.caption_buffer import BufferStepGraph
    from fusionrt.model.caption_checkpoint import SHIPPED_CAPTION_CHECKPOINT, load_caption_checkpoint

    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else SHIPPED_CAPTION_CHECKPOINT
    checkpoint = load_caption_checkpoint(checkpoint_dir)
    config = checkpoint.decoder.config
    if checkpoint.region_encoder.config.feature_dim != config.visual_dim:
        raise ExportError("checkpoint", f"a region encoder of feature width visual_dim={config.visual_dim}",
                          f"width {checkpoint.region_encoder.config.feature_dim}")
    visual_module, step_module = VisualCacheGraph(checkpoint.decoder).eval(), StepGraph(checkpoint.decoder).eval()
    visual_spec, step_spec = caption_visual_spec(config, max_batch), caption_step_spec(config, max_batch)
    buffer_module, buffer_spec = BufferStepGraph(checkpoint.decoder).eval(), caption_step_buffer_spec(config, max_batch)
    # Example sizes all distinct and > 1 so the tracer keeps every dim symbolic.
    example_visual = next(p for p in visual_points(visual_spec) if p.sizes["B"] == 2 and p.sizes["M"] > 2)
    example_step = next(p for p in step_points(step_spec) if p.sizes["B"] == 2 and p.sizes["P"] > 1
                        and p.sizes["S"] == 4 and p.sizes["M"] > 4)
    buffer_grid = buffer_points(buffer_spec, step_spec)
    example_buffer = next(p for p in buffer_grid if p.sizes["B"] == 2 and p.feed["position"][0] > 1
                          and p.sizes["S"] == 4 and p.sizes["M"] > 4)

    def tensors(point: GridPoint, names: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(torch.from_numpy(point.feed[name]) for name in names)

    graphs = [
        _Graph(visual_spec, visual_module, tensors(example_visual, ("visual_feats", "visual_mask")),
               points=visual_points(visual_spec)),
        _Graph(step_spec, step_module, tensors(example_step, STEP_INPUTS), points=step_points(step_spec)),
        _Graph(buffer_spec, buffer_module, tensors(example_buffer, BUFFER_STEP_INPUTS), points=buffer_grid),
        _region_graph(checkpoint.region_encoder, max_regions=max_batch * config.max_visual_len,
                      opt_regions=config.max_visual_len),
    ]
    manifest = {
        "task": CAPTION_TASK,
        "model": {
            "class": f"{type(checkpoint.decoder).__module__}.{type(checkpoint.decoder).__qualname__}",
            "vocab_size": config.vocab_size, "visual_dim": config.visual_dim, "max_text_len": config.max_text_len,
            "max_visual_len": config.max_visual_len, "max_batch": max_batch, "hidden": config.hidden,
            "layers": config.layers, "heads": config.heads, "bos_id": config.bos_id, "eos_id": config.eos_id,
            "pad_id": config.pad_id, "config": config.to_dict(),
            "region_encoder": {"cnn_dim": checkpoint.region_encoder.config.cnn_dim,
                               "channels": checkpoint.region_encoder.config.channels,
                               "feature_dim": checkpoint.region_encoder.config.feature_dim},
            "cache": {"form": "concat", "graphs": {"visual": CAPTION_VISUAL, "step": CAPTION_STEP,
                                                   "step_buffer": CAPTION_STEP_BUFFER},
                      "capacity": config.max_text_len},
        },
        "source": {
            "kind": "checkpoint", "path": str(checkpoint_dir.resolve()),
            "files": checkpoint_files_sha256(checkpoint_dir),
            "weights_sha256": {CAPTION_VISUAL: weights_sha256(visual_module),
                               CAPTION_STEP: weights_sha256(step_module),
                               CAPTION_STEP_BUFFER: weights_sha256(buffer_module),
                               REGION_ENCODER: weights_sha256(checkpoint.region_encoder)},
        },
    }
    files = {"tokenizer.json": (checkpoint_dir / "tokenizer.json").read_bytes()}
    return _export(out_dir, graphs, files, manifest, opset, exporter, atol, progress)
