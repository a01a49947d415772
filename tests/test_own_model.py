"""A user's own fusion module and data through every stage: model references, outputs described by the module,
held-out npz feeds for budgets and parity, the pipeline on examples/hf_cross_attention.py, contract breakers."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from torch import nn

from fusionrt.bundle.manifest import CUSTOM_TASK, Bundle
from fusionrt.bundle.reference import ModelReference
from fusionrt.calibration import CalibrationError, calibrate, quantize_fp16
from fusionrt.errors import BundleError, InputError
from fusionrt.export import ExportError, export_onnx
from fusionrt.parity import gates_for, run_parity
from fusionrt.parity.heldout import FeedHeldout, HeldoutEvaluator
from fusionrt.runtime import Session

ROOT = Path(__file__).resolve().parents[1]
DIMS = {"vocab_size": 40, "visual_dim": 6, "max_text_len": 8, "max_visual_len": 5, "max_batch": 4}

# A user's file: what `--model FILE.py:make_model` imports. Weights are seeded inside the factory.
USER_FILE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """Token embedding + one single-head cross-attention over projected regions; returns hidden states only."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.proj = nn.Linear(6, 16)

    def forward(self, input_ids, text_mask, visual_feats, visual_mask):
        text = self.embed(input_ids) * text_mask[..., None]
        visual = self.proj(visual_feats)
        bias = (~visual_mask)[:, None, :].float() * -1.0e4
        attended = (text @ visual.transpose(1, 2) / 4.0 + bias).softmax(-1) @ visual
        has_visual = visual_mask.any(dim=1)[:, None, None]
        return torch.where(has_visual, text + attended, text)


def make_model():
    torch.manual_seed(0)
    return Tiny().eval()
'''


def write_feeds(directory: Path, files: int, rows: int, seed: int, labels: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(files):
        t, m = int(rng.integers(2, 9)), int(rng.integers(1, 6))
        text_mask = np.arange(t)[None] < rng.integers(1, t + 1, rows)[:, None]
        visual_mask = np.arange(m)[None] < rng.integers(0, m + 1, rows)[:, None]
        arrays = {"input_ids": np.where(text_mask, rng.integers(1, 40, (rows, t)), 0).astype(np.int64),
                  "text_mask": text_mask, "visual_feats": rng.standard_normal((rows, m, 6)).astype(np.float32),
                  "visual_mask": visual_mask}
        if labels is not None:
            arrays["labels"] = rng.integers(0, labels, rows).astype(np.int64)
        np.savez(directory / f"f{index}.npz", **arrays)
    return directory


@pytest.fixture(scope="module")
def user_bundle(tmp_path_factory):
    """A bundle exported from a model reference to a user's file (hidden states only), with feeds."""
    root = tmp_path_factory.mktemp("own")
    (root / "user_model.py").write_text(USER_FILE)
    reference = f"{root / 'user_model.py'}:make_model"
    path = export_onnx(reference, root / "bundle", exporter="legacy", **DIMS)
    return root, reference, path


def test_reference_is_recorded_with_the_files_sha256_and_reloaded(user_bundle):
    _, reference, path = user_bundle
    bundle = Bundle.open(path)
    source = bundle.manifest["source"]
    assert bundle.task == CUSTOM_TASK and source["kind"] == "reference"
    assert source["reference"] == reference and source["file_sha256"] == ModelReference.parse(reference).sha256()
    # outputs described by the module: hidden states only, not refused
    assert [(t.name, t.shape) for t in bundle.graph("fusion").outputs] == [("hidden", ("B", "T", 16))]
    feed = {"input_ids": np.array([[3, 4, 0]]), "text_mask": np.array([[True, True, False]]),
            "visual_feats": np.ones((1, 2, 6), np.float32), "visual_mask": np.array([[True, False]])}
    got = Session(bundle, "torch").run(feed)["hidden"]  # re-loaded from the recorded reference
    np.testing.assert_allclose(got, Session(bundle, "onnxruntime").run(feed)["hidden"], atol=1e-5)


def test_changed_file_is_refused_unless_the_reference_is_given_again(tmp_path):
    moved = tmp_path / "copy"
    (tmp_path / "user_model.py").write_text(USER_FILE)
    reference = f"{tmp_path / 'user_model.py'}:make_model"
    export_onnx(reference, moved, exporter="legacy", **DIMS)
    (tmp_path / "user_model.py").write_text(USER_FILE + "\n# edited after export\n")
    feed = {"input_ids": np.array([[1]]), "text_mask": np.array([[True]]),
            "visual_feats": np.zeros((1, 1, 6), np.float32), "visual_mask": np.array([[True]])}
    with pytest.raises(BundleError, match=r"source model: expected .*user_model.py with the sha256 recorded at "
                                          r"export .*pass --model REF again.* received a file that changed"):
        Session(moved, "torch").run(feed)
    assert Session(moved, "torch", model=reference).run(feed)["hidden"].shape == (1, 1, 16)


@pytest.mark.parametrize(("text", "match"), [
    ("model.py", r"--model: expected FILE.py:FACTORY or package.module:FACTORY, received 'model.py'"),
    ("a-b:make", r"--model: expected FILE.py:FACTORY"),
    ("nowhere.py:make", r"--model: expected a Python file .* received no file at nowhere.py"),
    ("json:loads", r"--model: expected json:loads\(\) returning a torch.nn.Module"),
])
def test_bad_references_are_refused_naming_the_flag(text, match):
    with pytest.raises(InputError, match=match):
        ModelReference.parse(text).load()


def test_unlabelled_feeds_gate_cosine_only_and_labels_need_logits(tmp_path, user_bundle):
    _, _, path = user_bundle
    heldout = FeedHeldout(Bundle.open(path), write_feeds(tmp_path / "h", 2, 6, 1))
    assert heldout.labels is None and heldout.logits_output is None and heldout.rows == 12
    evaluator = HeldoutEvaluator(Bundle.open(path), heldout=heldout)
    budget = evaluator.default_budget("fp16")
    assert budget.max_drop_points is None and budget.min_agreement is None and budget.min_cosine == 0.999
    measured = evaluator.measure_path(path / "fusion.onnx")
    assert measured.agreement is None and measured.cosine["hidden"] > 0.99999 and not measured.failures(budget)
    with pytest.raises(InputError, match=r"f0.npz labels: expected labels only for a model with a logits-like "
                                         r"output \[B, A\], received outputs \['hidden \[B,T,16\]'\]"):
        FeedHeldout(Bundle.open(path), write_feeds(tmp_path / "l", 1, 4, 2, labels=3))


def test_feed_errors_name_the_file(tmp_path, user_bundle):
    _, _, path = user_bundle
    bundle = Bundle.open(path)
    bad = write_feeds(tmp_path / "bad", 1, 4, 3)
    np.savez(bad / "f1.npz", input_ids=np.zeros((2, 3), np.int64))
    with pytest.raises(InputError, match=r"f1.npz: expected arrays named \['input_ids', 'text_mask', "):
        FeedHeldout(bundle, bad)
    with pytest.raises(InputError, match="--heldout: expected a directory of npz feeds, received no directory"):
        FeedHeldout(bundle, tmp_path / "missing")
    with pytest.raises(InputError, match=r"--heldout: expected a directory of held-out npz feeds for a bundle of "
                                         r"task 'custom'"):
        quantize_fp16(path, keep_fp32_nodes=[])  # no calibration needed: the held-out data is what is missing
    with pytest.raises(CalibrationError, match="--from: expected a directory of npz feeds for a bundle of task"):
        calibrate(path)


def test_custom_bundle_quantizes_and_parity_checks_on_its_feeds(tmp_path, user_bundle):
    _, _, path = user_bundle
    work = tmp_path / "b"
    shutil.copytree(path, work)
    calibrate(work, from_dir=write_feeds(tmp_path / "c", 4, 8, 4))
    heldout_dir = write_feeds(tmp_path / "h", 3, 8, 5)
    report = quantize_fp16(work, heldout=heldout_dir)
    assert report["heldout"]["rows"] == 24 and report["heldout"]["budget"] == {"min_cosine": 0.999}
    bundle = Bundle.open(work)
    gates = gates_for(bundle, "fp16")
    assert gates.limit("min_cosine", "hidden").source == "manifest" and not gates.scenes
    result = run_parity(bundle, "torch", "onnxruntime", candidate_precision="fp16",
                        heldout=FeedHeldout(bundle, heldout_dir))
    assert result.passed and result.scenes.label == "held-out feeds" and result.scenes.questions == 24
    assert "held-out feeds (24 rows)" in result.table()


# ---- contract breakers: refused with the output and its shape -------------------------------------------------

class DeclaredWrongRank(nn.Module):
    fusion_outputs: ClassVar = {"hidden": "B T H", "logits": "B A"}

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 8)

    def forward(self, input_ids, text_mask, visual_feats, visual_mask):
        hidden = self.embed(input_ids)
        return hidden, hidden[:, :1, :3]  # logits [B, 1, 3]: rank 3, declared rank 2


class NanOnEmptyRegions(DeclaredWrongRank):
    fusion_outputs: ClassVar = None

    def forward(self, input_ids, text_mask, visual_feats, visual_mask):
        scores = visual_feats.sum(-1).masked_fill(~visual_mask, float("-inf"))
        pooled = (scores.softmax(-1)[..., None] * visual_feats).sum(1)  # NaN where every region is masked
        return self.embed(input_ids) + pooled[:, None, :1], pooled


class BakedTextLength(DeclaredWrongRank):
    fusion_outputs: ClassVar = {"hidden": "B T H", "logits": "B A"}

    def forward(self, input_ids, text_mask, visual_feats, visual_mask):
        hidden = self.embed(input_ids)[:, :1].expand(-1, 5, -1)  # T fixed at 5, whatever the input's T
        return hidden, hidden[:, 0, :3]


class PerTokenLogits(DeclaredWrongRank):
    fusion_outputs: ClassVar = None

    def forward(self, input_ids, text_mask, visual_feats, visual_mask):
        pooled = (visual_feats * visual_mask[..., None]).sum(1)[:, None, :1]
        hidden = self.embed(input_ids) * text_mask[..., None] + pooled
        return hidden, hidden[..., :3] * 2.0  # logits of another rank: [B, T, 3]


@pytest.mark.parametrize(("module", "match"), [
    (DeclaredWrongRank, r"model output 'logits': expected rank 2 \(B A\) as declared in fusion_outputs, received "
                        r"shape \[2, 1, 3\] at B=2, T=5, M=3"),
    (NanOnEmptyRegions, r"model output 'hidden': expected finite values on every row, also a row whose visual_mask "
                        r"is all False \(row 3\), received NaN/inf in rows \[3\] of shape \[4, 7, 8\] "
                        r"at B=4, T=7, M=2"),
    (BakedTextLength, r"model output 'hidden' axis 1: expected the size of T as declared in fusion_outputs, "
                      r"received 5 at B=2, T=5, M=3, 5 at B=4, T=7, M=2"),
])
def test_contract_breakers_are_refused_naming_output_and_shape(tmp_path, module, match):
    with pytest.raises(ExportError, match=match):
        export_onnx(module().eval(), tmp_path / "b", **DIMS)
    assert not (tmp_path / "b").exists()


def test_logits_of_another_rank_are_described_not_refused(tmp_path):
    path = export_onnx(PerTokenLogits().eval(), tmp_path / "b", exporter="legacy", **DIMS)
    outputs = Bundle.open(path).graph("fusion").outputs
    assert [(t.name, t.shape) for t in outputs] == [("hidden", ("B", "T", 8)), ("logits", ("B", "T", 3))]
    assert Bundle.open(path).model["num_answers"] is None


# ---- the worked example, end to end through the CLI ----------------------------------------------------------

def _transformers_or_skip() -> None:
    if importlib.util.find_spec("transformers") is None:
        if os.environ.get("CI"):
            pytest.fail("transformers is missing: CI installs the 'examples' extra (setup.sh, fusionrt[all])")
        pytest.skip("transformers not installed (pip install 'fusionrt[examples]')")


@pytest.mark.slow
def test_example_pipeline_end_to_end(tmp_path):
    _transformers_or_skip()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "examples/write_feeds.py", "--out", str(tmp_path / "feeds"),
                    "--calibration-files", "2", "--heldout-files", "6"], cwd=ROOT, env=env, check=True)
    command = [sys.executable, "-m", "fusionrt", "pipeline", "-q", "--model",
               "examples/hf_cross_attention.py:make_model", "--calibration", str(tmp_path / "feeds/calibration"),
               "--heldout", str(tmp_path / "feeds/heldout"), "--vocab-size", "1000", "--visual-dim", "32",
               "--max-text-len", "16", "--max-visual-len", "12", "--max-batch", "8", "--bench-runs", "5",
               "--out", str(tmp_path / "bundle"), "--junit", str(tmp_path / "junit.xml")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cases = ET.parse(tmp_path / "junit.xml").getroot().findall("testcase")
    names = {c.get("name"): c for c in cases}
    assert {"export verification", "accuracy budget fp16", "accuracy budget int8", "accuracy budget int8-cpu",
            "parity fp16 onnxruntime", "parity int8-cpu onnxruntime"} <= set(names)
    assert not any(c.find("failure") is not None for c in cases)
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    assert skipped in ([], ["tensorrt engines"])  # engines only where there is TensorRT and a GPU
    manifest = Bundle.open(tmp_path / "bundle").manifest
    assert manifest["task"] == CUSTOM_TASK and manifest["source"]["kind"] == "reference"
    measured = {"fp16": manifest["quantization"]["fp16"]["heldout"],
                **{p: g["heldout"] for p, g in manifest["quantization"]["int8"]["graphs"].items()}}
    for precision, heldout in measured.items():  # budgets measured on the example's 96 held-out rows, with labels
        assert heldout["rows"] == 96 and heldout["labels"] and heldout["passed"], (precision, heldout)
        assert set(heldout["budget"]) == {"max_drop_points", "min_agreement", "min_cosine"}
    parity = json.loads((tmp_path / "bundle/parity.json").read_text())
    assert all(r["passed"] and r["scenes"]["on"] == "held-out feeds" and r["scenes"]["questions"] == 96
               for r in parity)
    assert "bench.json" in manifest["files"] and "report.md" in manifest["files"]
    again = subprocess.run([c for c in command if c != "-q"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    # keys include the model file's and the feeds' hashes, unchanged here: every stage is reused
    for stage in ("export", "calibrate", "fp16", "int8", "parity", "bench"):
        assert f"] {stage}: reused (inputs unchanged" in again.stderr, again.stderr[-3000:]


def test_cli_parity_on_heldout_feeds_and_export_needs_the_dims(tmp_path, user_bundle, capsys):
    from fusionrt.cli import main

    _, reference, path = user_bundle
    heldout = write_feeds(tmp_path / "h", 2, 4, 6)
    assert main(["parity", str(path), "--heldout", str(heldout), "-q"]) == 0
    assert "held-out feeds (8 rows)" in capsys.readouterr().out
    assert main(["export", "--model", reference, "--out", str(tmp_path / "b"), "--vocab-size", "40"]) == 2
    assert "--visual-dim: expected a positive integer (required with --model), received nothing" in \
        capsys.readouterr().err
