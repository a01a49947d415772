"""Crash points: a writer SIGKILLed anywhere leaves the bundle openable and verified, as before or as after.

Every named point of the update transaction (``FUSIONRT_FAULT_POINT``) is hit in a forked child that
kills itself there; then real ``fusionrt calibrate``, ``quantize`` and ``export`` processes are killed at
some of them. After each kill the bundle must open (every hash verified) in exactly the old or the new
state, and the next update must remove whatever the dead writer left.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionrt.bundle.transaction import (
    FAULT_POINTS,
    JOURNAL_FILE,
    LOCK_FILE,
    BundleLockedError,
    BundleTransaction,
    update_manifest,
)
from fusionrt.calibration import calibrate
from fusionrt.data.world import ANSWERS
from fusionrt.export import export_checkpoint
from fusionrt.model import Checkpoint, FusionConfig, FusionModel, RegionEncoder, save_checkpoint
from fusionrt.runtime import Bundle

REPO = Path(__file__).resolve().parent.parent
KILLED = -signal.SIGKILL


@pytest.fixture(scope="module")
def base(tmp_path_factory, question_encoder):
    """A small random checkpoint, its bundle with a calibration set, and a second set to calibrate from."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("crash")
    config = FusionConfig(vocab_size=question_encoder.vocab_size, hidden=32, layers=2, heads=4, ffn=64)
    checkpoint = save_checkpoint(Checkpoint(FusionModel(config).eval(), RegionEncoder().eval(), question_encoder,
                                            list(ANSWERS)), root / "checkpoint")
    bundle = export_checkpoint(checkpoint, root / "bundle")
    calibrate(bundle, samples=32, min_samples=32)
    with np.load(bundle / "calibration.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["visual_feats"] = arrays["visual_feats"] + np.float32(0.01)  # a different set: a different sha256
    (root / "feeds").mkdir()
    np.savez(root / "feeds" / "set.npz", **arrays)
    return {"checkpoint": checkpoint, "bundle": bundle, "feeds": root / "feeds"}


@pytest.fixture
def bundle(base, tmp_path):
    return Path(shutil.copytree(base["bundle"], tmp_path / "bundle"))


def _state(bundle: Path) -> dict:
    """The manifest of the bundle, opened with every file's hash verified (raises BundleError otherwise)."""
    return Bundle.open(bundle).manifest


def _assert_clean(bundle: Path) -> None:
    listed = set(Bundle.open(bundle).manifest["files"])
    on_disk = {p.name for p in bundle.iterdir()} - {"manifest.json", LOCK_FILE}
    assert on_disk == listed, f"left behind: {sorted(on_disk - listed)}"


def _published(point: str) -> bool:
    return FAULT_POINTS.index(point) >= FAULT_POINTS.index("manifest-published")


def _fusionrt(args: list[str], point: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FUSIONRT_TEST_THREADS": "1"}
    if point:
        env["FUSIONRT_FAULT_POINT"] = point
    return subprocess.run([sys.executable, "-m", "fusionrt", *args, "-q"], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_writer_killed_at_each_point_leaves_old_or_new(bundle, point, monkeypatch):
    before = _state(bundle)
    new_tokenizer = (bundle / "tokenizer.json").read_bytes().replace(b"{", b"{ ", 1)
    monkeypatch.setenv("FUSIONRT_FAULT_POINT", point)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child dies at the fault point
        try:
            with BundleTransaction(bundle) as tx:
                tx.new_file("tokenizer.json").write_bytes(new_tokenizer)
                tx.commit(sections={"note": "new"})
        finally:
            os._exit(3)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {point}"
    after = _state(bundle)
    assert after.get("note") == ("new" if _published(point) else None)
    tokenizer = Bundle.open(bundle).file("tokenizer.json").read_bytes()
    assert tokenizer == (new_tokenizer if _published(point) else (bundle / "tokenizer.json").read_bytes())
    if not _published(point):
        assert after == before
    monkeypatch.delenv("FUSIONRT_FAULT_POINT")
    update_manifest(bundle, sections={"after": 1})  # the next writer cleans up
    _assert_clean(bundle)
    assert Bundle.open(bundle).file("tokenizer.json").name == "tokenizer.json"


@pytest.mark.parametrize("point", ["files-written", "manifest-published", "names-linked"])
def test_fusionrt_calibrate_killed(base, bundle, point):
    old = _state(bundle)["calibration"]["sha256"]
    result = _fusionrt(["calibrate", str(bundle), "--from", str(base["feeds"])], point)
    assert result.returncode == KILLED, result.stderr[-2000:]
    now = _state(bundle)["calibration"]["sha256"]
    assert now == old if not _published(point) else now != old
    assert calibrate(bundle, from_dir=base["feeds"])["sha256"] != old  # and the next run works and cleans up
    _assert_clean(bundle)


def test_fusionrt_quantize_killed_after_publishing(bundle):
    result = _fusionrt(["quantize", str(bundle), "--precision", "fp16", "--heldout-scenes", "8"],
                       "garbage-collected")
    assert result.returncode == KILLED, result.stderr[-2000:]
    assert _state(bundle)["graphs"]["fusion"]["precisions"]["fp16"] == "fusion.fp16.onnx"
    update_manifest(bundle)
    _assert_clean(bundle)


def test_fusionrt_quantize_killed_before_publishing(bundle):
    before = _state(bundle)
    result = _fusionrt(["quantize", str(bundle), "--precision", "fp16", "--heldout-scenes", "8"], "files-written")
    assert result.returncode == KILLED, result.stderr[-2000:]
    assert _state(bundle) == before
    update_manifest(bundle)
    _assert_clean(bundle)


@pytest.mark.parametrize("point", ["export-staged", "manifest-published"])
def test_fusionrt_export_over_a_bundle_killed(base, bundle, point):
    before = _state(bundle)
    result = _fusionrt(["export", "--checkpoint", str(base["checkpoint"]), "--out", str(bundle),
                        "--max-batch", "2"], point)
    assert result.returncode == KILLED, result.stderr[-2000:]
    after = _state(bundle)
    if point == "export-staged":
        assert after == before
    else:  # the new export: max batch 2, and the calibration set of the old graph is gone
        assert after["model"]["max_batch"] == 2 and "calibration.npz" not in after["files"]
    update_manifest(bundle)
    _assert_clean(bundle)


def test_a_second_writer_waits_then_refuses_clearly(bundle):
    with BundleTransaction(bundle), pytest.raises(BundleLockedError, match=r"update in progress by process \d+"), \
            BundleTransaction(bundle, timeout=0.3):
        pass
    update_manifest(bundle, sections={"later": True})  # the lock is free again
    assert _state(bundle)["later"] is True
    assert not (bundle / LOCK_FILE).exists()


def test_a_second_process_cannot_interleave(bundle):
    """A writer process sleeping inside its transaction holds the lock: ours waits, then sees its result."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FUSIONRT_FAULT_POINT": "files-written:sleep",
           "FUSIONRT_FAULT_SLEEP": "2"}
    code = ("import sys; from fusionrt.bundle.transaction import update_manifest; "
            "update_manifest(sys.argv[1], sections={'writer': 'first'})")
    first = subprocess.Popen([sys.executable, "-c", code, str(bundle)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (bundle / JOURNAL_FILE).exists() and time.monotonic() < deadline:  # it is inside its update
            time.sleep(0.02)
        with BundleTransaction(bundle, timeout=120) as tx:
            assert tx.manifest.get("writer") == "first"  # we waited for the whole first update
            tx.commit(sections={"writer": "second"})
    finally:
        first.wait(120)
    assert first.returncode == 0
    assert _state(bundle)["writer"] == "second"
