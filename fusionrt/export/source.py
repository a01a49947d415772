"""Fingerprints of what a bundle was exported from: module weights and checkpoint files."""

from __future__ import annotations

from pathlib import Path

from fusionrt.runtime.backends.pytorch import weights_sha256
from fusionrt.runtime.bundle import sha256_file

__all__ = ["CHECKPOINT_MODEL_FILES", "checkpoint_files_sha256", "weights_sha256"]


# The files that define what a checkpoint computes; metrics and plots may be regenerated freely.
CHECKPOINT_MODEL_FILES = ("config.json", "fusion.safetensors", "region_encoder.safetensors", "tokenizer.json",
                          "answers.json")


def checkpoint_files_sha256(path: str | Path) -> dict[str, str]:
    """sha256 of each of a checkpoint's model-defining files that exists."""
    path = Path(path)
    return {name: sha256_file(path / name) for name in CHECKPOINT_MODEL_FILES if (path / name).is_file()}
