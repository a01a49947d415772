"""Shared helpers of the hardening tests: a tiny model exported once per test module, feeds, stand-in runners."""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from fusionrt.runtime import Runner

TINY = dict(vocab_size=50, hidden=32, layers=2, heads=4, ffn=64, visual_dim=12, num_answers=7,
            max_text_len=16, max_visual_len=8)
LIMITS = dict(vocab_size=50, visual_dim=12, max_text_len=16, max_visual_len=8, max_batch=16)


def tiny_model():
    import torch

    from fusionrt.model import FusionConfig, FusionModel

    torch.manual_seed(0)
    return FusionModel(FusionConfig(**TINY)).eval()


def export_tiny(model, out: Path) -> Path:
    from fusionrt.export import export_onnx

    return export_onnx(model, out, **LIMITS)


def shared_bundle(tmp_path_factory) -> Path:
    """The tiny model's bundle, exported once per pytest session for every hardening test module (read-only:
    copy it before damaging it)."""
    path = tmp_path_factory.getbasetemp() / "hardening-shared" / "bundle"
    if not (path / "manifest.json").is_file():
        export_tiny(tiny_model(), path)
    return path


def every_precision_model():
    """The tiny random model of :func:`every_precision_bundle` (for the torch backend)."""
    import torch

    from fusionrt.model import FusionConfig, FusionModel

    torch.manual_seed(3)
    return FusionModel(FusionConfig(**TINY)).eval()


def every_precision_bundle(tmp_path_factory) -> Path:
    """A tiny random model's bundle with every fusion graph the pipeline writes (fp32, fp16 with boundary
    Casts, int8 Q/DQ, int8-cpu U8S8) and their measured safe ranges; once per session, read-only."""
    path = tmp_path_factory.getbasetemp() / "every-precision" / "bundle"
    if (path / "manifest.json").is_file():
        return path
    from fusionrt.bundle.transaction import update_manifest
    from fusionrt.calibration.fp16 import convert_mixed_precision
    from fusionrt.calibration.qdq import CPU, TENSORRT, write_qdq
    from fusionrt.calibration.ranges import collect_ranges
    from fusionrt.calibration.safe_range import SECTION, safe_ranges_with
    from fusionrt.parity import fusion_feed
    from fusionrt.runtime import Bundle

    export_tiny(every_precision_model(), path)
    graph = Bundle.open(path).graph("fusion")
    feeds = [fusion_feed(graph, 4, 1 + i % 16, 1 + i % 8, np.random.default_rng(i)) for i in range(8)]
    ranges = collect_ranges(path / "fusion.onnx", feeds)
    for recipe in (TENSORRT, CPU):
        write_qdq(path / "fusion.onnx", path / f"fusion.{recipe.precision}.onnx", ranges, recipe)
    convert_mixed_precision(path / "fusion.onnx", path / "fusion.fp16.onnx")
    files = {p: f"fusion.{p}.onnx" for p in ("fp16", "int8", "int8-cpu")}
    bundle = update_manifest(path, files=list(files.values()), precisions={"fusion": files})
    safe = safe_ranges_with(bundle, {p: path / f for p, f in files.items()})
    update_manifest(path, sections={SECTION: safe})
    return path


def _png(width: int, height: int, pixels: bytes) -> bytes:
    """A 1-bit grayscale PNG of ``pixels`` (zlib-compressed scanlines, each with its filter byte)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds almost no data: what a decompression bomb's header says."""
    return _png(width, height, zlib.compress(b"\0" * 64))


def png_bomb(side: int) -> bytes:
    """A real 1-bit PNG of side x side black pixels: ~17 KB at 12000, 1.6 GB decoded by the old code."""
    row = b"\0" + b"\0" * ((side + 7) // 8)
    return _png(side, side, zlib.compress(row * side, 9))


def feed(batch: int = 2, text: int = 5, visual: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid fusion feed of the tiny contract with prefix masks (row 0 full, later rows padded)."""
    rng = np.random.default_rng(seed)
    text_mask = np.ones((batch, text), bool)
    visual_mask = np.ones((batch, visual), bool)
    text_mask[1:, text - 1:] = False
    visual_mask[1:, visual - 1:] = False
    return {"input_ids": np.where(text_mask, rng.integers(1, 50, (batch, text)), 0).astype(np.int64),
            "text_mask": text_mask,
            "visual_feats": rng.standard_normal((batch, visual, 12)).astype(np.float32),
            "visual_mask": visual_mask}


class GatedRunner(Runner):
    """A backend whose engine call waits on ``gate``; ``deactivate_impl`` drops the engine, as real backends do."""

    backend = "gated"

    def activate_impl(self) -> None:
        self.engine = object()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.activations = getattr(self, "activations", 0) + 1

    def infer_impl(self, feed):
        self.entered.set()
        self.gate.wait(5)
        engine = self.engine
        assert engine is not None, "engine released while a call was running"
        batch, text = feed["input_ids"].shape
        return {"hidden": np.zeros((batch, text, 32), np.float32), "logits": np.zeros((batch, 7), np.float32)}

    def deactivate_impl(self) -> None:
        self.engine = None


# Hypothesis profiles: "ci" (default) is derandomized and small enough that every property test
# together stays under 60 s on 2 cores; "nightly" explores far more. Choose with
# FUSIONRT_HYPOTHESIS_PROFILE=nightly.
def _register_profiles() -> None:
    import os

    from hypothesis import HealthCheck, settings

    quiet = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=quiet,
                              print_blob=True)
    settings.register_profile("nightly", max_examples=1000, deadline=None, suppress_health_check=quiet,
                              print_blob=True)
    settings.load_profile(os.environ.get("FUSIONRT_HYPOTHESIS_PROFILE", "ci"))


_register_profiles()
