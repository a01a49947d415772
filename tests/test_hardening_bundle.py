"""Readers during updates, and export over a bundle whose manifest is broken."""

import shutil
import threading
from pathlib import Path

from hardening_support import export_tiny, shared_bundle, tiny_model

from fusionrt.calibration.manifest import BundleTransaction
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
