"""Readers during updates, and export over a bundle whose manifest is broken."""

import shutil
import threading
from pathlib import Path

from hardening_support import export_tiny, shared_bundle, tiny_model

from fusionrt.bundle.transaction import BundleTransaction
from fusionrt.runtime import Bundle


def test_readers_never_see_a_mix_while_a_writer_replaces_files(tmp_path_factory, tmp_path):
    bundle = Path(shutil.copytree(shared_bundle(tmp_path_factory), tmp_path / "bundle"))
    stop, seen, errors = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            try:
                opened = Bundle.open(bundle)  # verifies every hash
            except Exception as exc:
                errors.append(repr(exc))
                continue
            seen.add(opened.manifest.get("round"))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for k in range(30):
            with BundleTransaction(bundle) as tx:
                tx.new_file("extra.bin").write_bytes(k.to_bytes(8, "big") * 20_000)
                tx.commit(sections={"round": k})
    finally:
        stop.set()
        for t in readers:
            t.join(60)
    assert errors == []
    assert len(seen) > 1  # the readers did see several versions, each verified
    assert Bundle.open(bundle).manifest["round"] == 29
    assert sorted(p.name for p in bundle.iterdir()) == ["extra.bin", "fusion.onnx", "manifest.json"]


def test_export_replaces_a_bundle_whose_manifest_is_broken(tmp_path_factory, tmp_path):
    bundle = Path(shutil.copytree(shared_bundle(tmp_path_factory), tmp_path / "bundle"))
    (bundle / "manifest.json").write_text("{ not json")
    export_tiny(tiny_model(), bundle)
    assert Bundle.open(bundle).manifest["graphs"]["fusion"]["precisions"] == {"fp32": "fusion.onnx"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def _feed_dir(directory: Path, seed: int) -> Path:
    import numpy as np
    from hardening_support import feed

    directory.mkdir()
    np.savez(directory / "set.npz", **feed(batch=32, text=6, visual=4, seed=seed))
    return directory


def test_readers_during_repeated_calibrate_never_see_a_broken_bundle(tmp_path_factory, tmp_path):
    """Before the transaction, calibrate replaced calibration.npz and then rewrote the manifest: a reader
    in between failed the hash check."""
    from fusionrt.calibration import calibrate

    bundle = Path(shutil.copytree(shared_bundle(tmp_path_factory), tmp_path / "bundle"))
    sets = [_feed_dir(tmp_path / "a", 1), _feed_dir(tmp_path / "b", 2)]
    stop, errors, opened = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            try:
                Bundle.open(bundle)
                opened[0] += 1
            except Exception as exc:
                errors.append(repr(exc))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for k in range(16):
            calibrate(bundle, from_dir=sets[k % 2])
    finally:
        stop.set()
        for t in readers:
            t.join(60)
    assert errors == [] and opened[0] > 0
