"""Caption sets built through the real pre-processing: render, detect, sort regions left to right, tokenize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusionrt.data.captions import caption_text, region_order
from fusionrt.data.detector import Regions, detect_regions
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.data.world import generate_scene, render
from fusionrt.progress import SILENT, Progress


def ordered_regions(image: np.ndarray, max_regions: int | None = None) -> Regions:
    """The detector's regions of ``image`` in caption order (left to right, then top to bottom)."""
    regions = detect_regions(image, max_regions=max_regions)
    order = region_order(regions.boxes)
    return Regions(regions.boxes[order], regions.crops[order], regions.geometry[order], regions.areas[order])


@dataclass
class CaptionSet:
    """Regions of many scenes (concatenated, in caption order, indexed by ``region_offsets``) and one caption
    per scene: ``input_ids`` int64 [S,T] from [CLS] to [SEP], padded with [PAD]; ``text_mask`` bool [S,T]."""

    seeds: np.ndarray  # int64 [S]
    crops: np.ndarray  # uint8 [R,3,32,32]
    geometry: np.ndarray  # float32 [R,5]
    region_offsets: np.ndarray  # int64 [S+1]
    input_ids: np.ndarray
    text_mask: np.ndarray
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def build_caption_set(seeds: range, tokens: QuestionEncoder, progress: Progress = SILENT,
                      description: str = "caption scenes") -> CaptionSet:
    """Render, detect and caption every scene of ``seeds``."""
    crops, geometry, offsets, captions = [], [], [0], []
    for seed in progress.iterate(seeds, description, unit="scene"):
        scene = generate_scene(seed)
        regions = ordered_regions(render(scene))
        crops.append(regions.crops)
        geometry.append(regions.geometry)
        offsets.append(offsets[-1] + len(regions))
        captions.append(caption_text(scene))
    input_ids, text_mask = tokens.encode_batch(captions)
    return CaptionSet(np.asarray(list(seeds), dtype=np.int64), np.concatenate(crops), np.concatenate(geometry),
                      np.asarray(offsets, dtype=np.int64), input_ids, text_mask, captions)
