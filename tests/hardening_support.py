"""Shared helpers of the hardening tests: a tiny model exported once per test module, feeds, stand-in runners."""

from __future__ import annotations

import threading
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
