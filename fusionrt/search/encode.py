"""The per-image work of search, batched through the runtime: detection, region encoding, image embedding.

None of it depends on the text, so an index computes it once per image and stores it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusionrt.bundle.manifest import Bundle
from fusionrt.data.detector import detect_regions
from fusionrt.data.images import load_image
from fusionrt.runtime.session import Session


@dataclass
class EncodedImages:
    """Per image: region features float32 [n_i, Dv]; and image embeddings float32 [B, E] (unit length)."""

    regions: list[np.ndarray]
    embeddings: np.ndarray


def pad_regions(regions: list[np.ndarray], feature_dim: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``visual_feats`` float32 [B,M,Dv] and prefix ``visual_mask`` bool [B,M] (M >= 1) of several images."""
    width = width or max(1, max((len(r) for r in regions), default=0))
    feats = np.zeros((len(regions), width, feature_dim), dtype=np.float32)
    mask = np.zeros((len(regions), width), dtype=bool)
    for row, r in enumerate(regions):
        feats[row, : len(r)] = r
        mask[row, : len(r)] = True
    return feats, mask


class ImageEncoder:
    """Region features and image embeddings of many images (paths or arrays), in batches."""

    def __init__(self, bundle: Bundle, backend: str = "onnxruntime", precision: str = "fp32", **options) -> None:
        self.bundle = bundle
        self.max_regions = int(bundle.model["max_visual_len"])
        self.feature_dim = int(bundle.model["visual_dim"])
        self.region_encoder = Session(bundle, backend, "region_encoder", precision, **options)
        self.image_embed = Session(bundle, backend, "image_embed", precision, **options)
        self.max_crops = self.region_encoder.dims["N"].max
        self.max_batch = self.image_embed.dims["B"].max

    def regions(self, images: list) -> list[np.ndarray]:
        """Region features of each image (detection per image, the region encoder over many crops at once)."""
        detected = [detect_regions(load_image(image), max_regions=self.max_regions) for image in images]
        crops = np.concatenate([d.crops for d in detected]) if detected else np.zeros((0, 3, 32, 32), np.uint8)
        geometry = np.concatenate([d.geometry for d in detected]) if detected else np.zeros((0, 5), np.float32)
        feats = [self.region_encoder.run({"crops": crops[i:i + self.max_crops].astype(np.float32) / 255.0,
                                          "geometry": geometry[i:i + self.max_crops]})["feats"]
                 for i in range(0, len(crops), self.max_crops)]
        flat = np.concatenate(feats) if feats else np.zeros((0, self.feature_dim), np.float32)
        offsets = np.cumsum([0] + [len(d) for d in detected])
        return [flat[offsets[i]:offsets[i + 1]] for i in range(len(detected))]

    def embed(self, regions: list[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(regions), self.max_batch):
            feats, mask = pad_regions(regions[start:start + self.max_batch], self.feature_dim)
            out.append(self.image_embed.run({"visual_feats": feats, "visual_mask": mask})["image_embedding"])
        return np.concatenate(out) if out else np.zeros((0, int(self.bundle.model["embed_dim"])), np.float32)

    def encode(self, images: list) -> EncodedImages:
        regions = self.regions(images)
        return EncodedImages(regions, self.embed(regions))

    def close(self) -> None:
        self.region_encoder.close()
        self.image_embed.close()
