"""Configuration of the fusion model and its presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FusionConfig:
    """Hyper-parameters of :class:`fusionrt.model.FusionModel`.

    ``visual_dim`` is the width of one region feature (CNN output plus box geometry);
    ``max_text_len`` bounds the learned position table; ``max_visual_len`` is the largest
    visual set the exported graphs and the runtime accept.
    """

    vocab_size: int = 128
    hidden: int = 256
    layers: int = 4
    heads: int = 8
    ffn: int = 1024
    visual_dim: int = 69
    num_answers: int = 22
    max_text_len: int = 32
    max_visual_len: int = 16
    mask_fill: float = -1.0e4
    layer_norm_eps: float = 1.0e-5

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden: expected a multiple of heads={self.heads}, received {self.hidden}")
        for name in ("vocab_size", "hidden", "layers", "heads", "ffn", "visual_dim", "num_answers",
                     "max_text_len", "max_visual_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, received {getattr(self, name)}")
        # A fill that overflows float16 (-1e9, -inf) turns masks into NaN after FP16 conversion.
        if not -65504.0 <= self.mask_fill < 0:
            raise ValueError(
                f"mask_fill: expected a negative value representable in float16, received {self.mask_fill}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionConfig:
        return config_from_dict(cls, data, "model config")


def config_from_dict(cls: Any, data: dict[str, Any], what: str) -> Any:
    """``cls(**data)`` for a config dataclass, refusing keys it does not have (naming them and the known ones)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**data)


PRESETS: dict[str, FusionConfig] = {
    "small": FusionConfig(hidden=256, layers=4, heads=8, ffn=1024),
    "base": FusionConfig(hidden=512, layers=8, heads=8, ffn=2048),
    "large": FusionConfig(hidden=768, layers=12, heads=12, ffn=3072),
}


def preset(name: str, **overrides: Any) -> FusionConfig:
    """Return the named preset (``small``, ``base``, ``large``) with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, received {name!r}")
    return dataclasses.replace(PRESETS[name], **overrides)
