"""Caption checkpoints: ``config.json`` (format, task "caption", decoder and region-encoder configs),
``caption.safetensors``, ``region_encoder.safetensors``, ``tokenizer.json`` and, after training,
``metrics.json``. Every file is written atomically; nothing is unpickled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrt.data.captions import MAX_CAPTION_TOKENS
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.errors import CheckpointError
from fusionrt.model.caption import CaptionConfig, CaptionDecoder
from fusionrt.model.checkpoint import _load_weights, read_config, region_encoder_section, write_checkpoint
from fusionrt.model.region_encoder import RegionEncoder, RegionEncoderConfig

CAPTION_TASK = "caption"
SHIPPED_CAPTION_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "caption-small"


@dataclass
class CaptionCheckpoint:
    decoder: CaptionDecoder
    region_encoder: RegionEncoder
    tokens: QuestionEncoder
    path: Path | None = None



def load_caption_checkpoint(path: str | Path = SHIPPED_CAPTION_CHECKPOINT) -> CaptionCheckpoint:
    """Decoder, region encoder and tokenizer of a caption checkpoint directory, in eval mode."""
    path = Path(path)
    config = read_config(path, CAPTION_TASK)
    try:
        decoder = CaptionDecoder(CaptionConfig.from_dict(config["model"]))
        region_encoder = RegionEncoder(RegionEncoderConfig(**config.get("region_encoder", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json: expected valid 'model' and 'region_encoder' sections, received {exc}") \
            from exc
    _load_weights(decoder, path / "caption.safetensors")
    _load_weights(region_encoder, path / "region_encoder.safetensors")
    tokens = QuestionEncoder.from_file(path / "tokenizer.json", MAX_CAPTION_TOKENS)
    return CaptionCheckpoint(decoder.eval(), region_encoder.eval(), tokens, path)


def save_caption_checkpoint(checkpoint: CaptionCheckpoint, path: str | Path,
                            metrics: dict[str, Any] | None = None) -> Path:
    return write_checkpoint(path, {"caption": checkpoint.decoder, "region_encoder": checkpoint.region_encoder},
                            checkpoint.tokens.tokenizer,
                            {"task": CAPTION_TASK, "model": checkpoint.decoder.config.to_dict(),
                             "region_encoder": region_encoder_section(checkpoint.region_encoder)}, metrics)
