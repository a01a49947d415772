"""Checkpoints: a directory of safetensors weights and JSON; never pickle.

Layout: ``config.json`` (format, version, model and region-encoder configs), ``fusion.safetensors``,
``region_encoder.safetensors``, ``tokenizer.json``, ``answers.json`` and, after training,
``metrics.json``. Every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.errors import CheckpointError
from fusionrt.io import atomic_path, atomic_write_bytes, atomic_write_json
from fusionrt.model.config import FusionConfig
from fusionrt.model.fusion import FusionModel
from fusionrt.model.region_encoder import RegionEncoder, RegionEncoderConfig

CHECKPOINT_FORMAT = "fusionrt-checkpoint"
CHECKPOINT_VERSION = 1
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "small"


@dataclass
class Checkpoint:
    """Everything needed to answer questions with the torch model."""

    fusion: FusionModel
    region_encoder: RegionEncoder
    questions: QuestionEncoder
    answers: list[str]
    path: Path | None = None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path.name}: expected a file in {path.parent}, received nothing at {path}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name}: expected JSON, received unreadable content ({exc})") from exc


def _load_weights(module: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path.name}: expected a safetensors file, received nothing at {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError
        raise CheckpointError(f"{path.name}: expected a safetensors file, received unreadable data ({exc})") from exc
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path.name}: expected weights for {type(module).__name__}, received a file missing "
            f"{sorted(missing)[:5]} and with unexpected {sorted(unexpected)[:5]}"
        )


def read_config(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """The checkpoint's ``config.json``, checked for format and version (and for ``task``, when given)."""
    config = _read_json(Path(path) / "config.json")
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"config.json: expected format {CHECKPOINT_FORMAT!r}, received {config.get('format')!r}")
    if config.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"config.json: expected version {CHECKPOINT_VERSION}, received {config.get('version')!r}"
        )
    if task is not None and config.get("task") != task:
        raise CheckpointError(f"config.json: expected task {task!r}, received {config.get('task')!r}")
    return config


def load_model(path: str | Path = SHIPPED_CHECKPOINT) -> FusionModel:
    """Load the fusion model of a checkpoint directory, in eval mode."""
    path = Path(path)
    config = read_config(path)
    try:
        model = FusionModel(FusionConfig.from_dict(config["model"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json: expected a valid 'model' section, received {exc}") from exc
    _load_weights(model, path / "fusion.safetensors")
    return model.eval()


def load_checkpoint(path: str | Path = SHIPPED_CHECKPOINT) -> Checkpoint:
    """Load fusion model, region encoder, tokenizer and answer list of a checkpoint directory."""
    path = Path(path)
    fusion = load_model(path)
    config = read_config(path)
    region_encoder = RegionEncoder(RegionEncoderConfig(**config.get("region_encoder", {})))
    _load_weights(region_encoder, path / "region_encoder.safetensors")
    answers = _read_json(path / "answers.json")
    if not isinstance(answers, list) or len(answers) != fusion.config.num_answers:
        raise CheckpointError(
            f"answers.json: expected a list of {fusion.config.num_answers} answers, received {answers!r:.80}"
        )
    questions = QuestionEncoder.from_file(path / "tokenizer.json", fusion.config.max_text_len)
    return Checkpoint(fusion, region_encoder.eval(), questions, answers, path)


def save_weights(path: str | Path, modules: dict[str, nn.Module]) -> Path:
    """Write ``NAME.safetensors`` of each module into the directory ``path`` (created), each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        with atomic_path(path / f"{name}.safetensors") as tmp:
            save_file(state, str(tmp))
    return path


def region_encoder_section(region_encoder: RegionEncoder) -> dict[str, int]:
    """What ``config.json`` records of a region encoder (its feature width follows from the model section)."""
    return {"cnn_dim": region_encoder.config.cnn_dim, "channels": region_encoder.config.channels}


def write_checkpoint(path: str | Path, modules: dict[str, nn.Module], tokenizer: Any, config: dict[str, Any],
                     metrics: dict[str, Any] | None = None, json_files: dict[str, Any] | None = None) -> Path:
    """A checkpoint directory of any task, each file atomically: ``NAME.safetensors`` per module,
    ``tokenizer.json``, ``json_files`` (name -> content), ``config.json`` (format and version first, then
    ``config``) and ``metrics.json``."""
    path = save_weights(path, modules)
    atomic_write_bytes(path / "tokenizer.json", tokenizer.to_str().encode())
    for name, content in (json_files or {}).items():
        atomic_write_json(path / name, content)
    atomic_write_json(path / "config.json", {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **config})
    if metrics is not None:
        atomic_write_json(path / "metrics.json", metrics)
    return path


def save_checkpoint(checkpoint: Checkpoint, path: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory (each file atomically)."""
    return write_checkpoint(path, {"fusion": checkpoint.fusion, "region_encoder": checkpoint.region_encoder},
                            checkpoint.questions.tokenizer,
                            {"model": checkpoint.fusion.config.to_dict(),
                             "region_encoder": region_encoder_section(checkpoint.region_encoder)},
                            metrics, {"answers.json": list(checkpoint.answers)})
