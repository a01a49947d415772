"""Fingerprints of what a bundle was exported from: module weights and checkpoint files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fusionrt.bundle.manifest import sha256_file

__all__ = ["CHECKPOINT_MODEL_FILES", "checkpoint_files_sha256", "checkpoint_task", "directory_sha256", "weights_sha256"]


# The files besides its weights that define what a checkpoint computes; metrics and plots may be regenerated
# freely. Every ``*.safetensors`` file counts as weights whatever its name (fusion, caption, match, region
# encoder, and any task's to come), so a new task cannot leave its weights out of the fingerprint.
CHECKPOINT_MODEL_FILES = ("config.json", "tokenizer.json", "answers.json")


def checkpoint_files_sha256(path: str | Path) -> dict[str, str]:
    """sha256 of each of a checkpoint's model-defining files that exists: its weights and CHECKPOINT_MODEL_FILES."""
    path = Path(path)
    names = sorted({*CHECKPOINT_MODEL_FILES, *(f.name for f in path.glob("*.safetensors"))})
    return {name: sha256_file(path / name) for name in names if (path / name).is_file()}


def checkpoint_task(path: str | Path | None) -> str:
    """The task a checkpoint's config.json records, read without torch: "vqa" when it records none, or when there
    is no readable config.json (loading the checkpoint then reports what is wrong with it)."""
    try:
        recorded = json.loads((Path(path) / "config.json").read_text()).get("task") if path is not None else None
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if isinstance(recorded, str) else "vqa"


def directory_sha256(path: str | Path, pattern: str = "*.npz") -> str:
    """One sha256 over the names and contents of the files matching ``pattern`` in ``path`` (a feeds directory):
    what a pipeline stage keys on, so changing, adding or removing a feed redoes the stages that read them."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob(pattern)):
        digest.update(f"{file.name}|{sha256_file(file)}|".encode())
    return digest.hexdigest()


def weights_sha256(module: Any) -> str:
    """sha256 over every state-dict entry (name, dtype, shape, bytes) in name order: the fingerprint of a
    module's weights recorded at export and checked when a Session runs a module passed as ``module=``."""
    import torch  # only called with a torch module in hand

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{list(value.shape)}|".encode())
        # Bytes through a uint8 view: numpy has no bfloat16, and .numpy() would refuse it.
        digest.update(value.reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()
