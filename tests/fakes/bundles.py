"""A tiny exported bundle for engine and TensorRT tests (fp32 graphs; ONNX Runtime computes the fake engine).

Exported once per test process and copied for each caller: bundles are plain directories (tests copy them
all the time), and the export is the slow part of these tests.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

TINY_SIZES = dict(vocab_size=50, visual_dim=12, max_text_len=16, max_visual_len=8, max_batch=16)
_master: list[Path] = []


def _export(directory: Path) -> Path:
    import torch

    from fusionrt.export import export_onnx
    from fusionrt.model import FusionConfig, FusionModel

    torch.manual_seed(0)
    config = FusionConfig(vocab_size=50, hidden=32, layers=2, heads=4, ffn=64, visual_dim=12, num_answers=7,
                          max_text_len=16, max_visual_len=8)
    return Path(export_onnx(FusionModel(config).eval(), directory, **TINY_SIZES))


def export_tiny_bundle(directory: Path) -> Path:
    """A fresh copy of the tiny bundle at ``directory`` (which must not exist yet)."""
    if not _master:
        root = Path(tempfile.mkdtemp(prefix="fusionrt-tiny-"))
        atexit.register(shutil.rmtree, root, True)
        _master.append(_export(root / "bundle"))
    return Path(shutil.copytree(_master[0], directory))
