"""Checkpoints of the matching model: ``config.json`` (task "match"), ``match.safetensors`` (ITM fusion and
dual-encoder heads), ``region_encoder.safetensors``, ``tokenizer.json`` and, after training, ``metrics.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.errors import CheckpointError
from fusionrt.model.checkpoint import _load_weights, read_config, region_encoder_section, write_checkpoint
from fusionrt.model.config import FusionConfig
from fusionrt.model.match import MatchHeadConfig, MatchModel
from fusionrt.model.region_encoder import RegionEncoder, RegionEncoderConfig

MATCH_TASK = "match"
SHIPPED_MATCH_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "match"


@dataclass
class MatchCheckpoint:
    """The matching model, the region encoder whose features it reads, and the query tokenizer."""

    model: MatchModel
    region_encoder: RegionEncoder
    queries: QuestionEncoder
    path: Path | None = None


def load_match_checkpoint(path: str | Path = SHIPPED_MATCH_CHECKPOINT) -> MatchCheckpoint:
    """Load a matching checkpoint directory (eval mode)."""
    path = Path(path)
    config = read_config(path, MATCH_TASK)
    try:
        model = MatchModel(FusionConfig.from_dict(config["model"]), MatchHeadConfig(**config["heads"]))
        region_encoder = RegionEncoder(RegionEncoderConfig(**config["region_encoder"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json: expected 'model', 'heads' and 'region_encoder' sections, "
                              f"received {exc}") from exc
    _load_weights(model, path / "match.safetensors")
    _load_weights(region_encoder, path / "region_encoder.safetensors")
    queries = QuestionEncoder.from_file(path / "tokenizer.json", model.config.max_text_len)
    return MatchCheckpoint(model.eval(), region_encoder.eval(), queries, path)


def save_match_checkpoint(checkpoint: MatchCheckpoint, path: str | Path,
                          metrics: dict[str, Any] | None = None) -> Path:
    """Write a matching checkpoint directory, each file atomically."""
    return write_checkpoint(path, {"match": checkpoint.model, "region_encoder": checkpoint.region_encoder},
                            checkpoint.queries.tokenizer,
                            {"task": MATCH_TASK, "model": checkpoint.model.config.to_dict(),
                             "heads": asdict(checkpoint.model.heads),
                             "region_encoder": region_encoder_section(checkpoint.region_encoder)}, metrics)
