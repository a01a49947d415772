"""Property: a damaged bundle is refused by Bundle.open with a BundleError naming the file, and nothing
outside the bundle is read or written; a Session on an edited manifest fails only with typed errors."""

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from hardening_support import shared_bundle
from hypothesis import given
from hypothesis import strategies as st

from fusionrt.errors import FusionrtError
from fusionrt.runtime import Bundle, BundleError, Session

FILES = ("fusion.onnx", "manifest.json")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return shared_bundle(tmp_path_factory)


def _copy(pristine: Path, tmp_path_factory) -> Path:
    return Path(shutil.copytree(pristine, tmp_path_factory.mktemp("b") / "bundle"))


def _open_refused(bundle: Path, name: str) -> BundleError:
    with pytest.raises(BundleError) as info:
        Bundle.open(bundle)
    assert name in info.value.name or name in str(info.value), (name, str(info.value))
    return info.value


@given(st.sampled_from(FILES), st.integers(0, 2**31), st.integers(1, 255))
def test_a_flipped_byte_is_refused_naming_the_file(pristine, tmp_path_factory, name, where, mask):
    bundle = _copy(pristine, tmp_path_factory)
    data = bytearray((bundle / name).read_bytes())
    data[where % len(data)] ^= mask
    (bundle / name).write_bytes(bytes(data))
    try:
        Bundle.open(bundle)
    except BundleError as exc:
        assert name in str(exc) or "manifest.json" in str(exc)
    else:  # only a manifest byte that does not change its meaning (JSON whitespace, say) may pass
        assert name == "manifest.json"
        json.loads(data)


@given(st.sampled_from(FILES), st.floats(0, 0.999))
def test_a_truncated_file_is_refused_naming_it(pristine, tmp_path_factory, name, keep):
    bundle = _copy(pristine, tmp_path_factory)
    data = (bundle / name).read_bytes()
    (bundle / name).write_bytes(data[: int(len(data) * keep)])
    _open_refused(bundle, name)


def test_each_deleted_file_is_refused_naming_it(pristine, tmp_path_factory):
    for name in [p.name for p in pristine.iterdir()]:
        bundle = _copy(pristine, tmp_path_factory)
        (bundle / name).unlink()
        _open_refused(bundle, name)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
FIELDS = [("schema_version",), ("format",), ("files",), ("graphs",), ("model",),
          ("files", "fusion.onnx", "sha256"), ("files", "fusion.onnx", "bytes"), ("files", "fusion.onnx"),
          ("graphs", "fusion", "inputs"), ("graphs", "fusion", "inputs", 0, "dtype"),
          ("graphs", "fusion", "inputs", 0, "shape"), ("graphs", "fusion", "inputs", 0, "shape", 0),
          ("graphs", "fusion", "inputs", 2, "shape", 2), ("graphs", "fusion", "inputs", 0, "dynamic", "B", "max"),
          ("graphs", "fusion", "inputs", 0, "dynamic", "B", "min"), ("graphs", "fusion", "inputs", 0, "value_range"),
          ("graphs", "fusion", "inputs", 1, "mask"), ("graphs", "fusion", "outputs", 1, "shape", 1),
          ("graphs", "fusion", "precisions"), ("graphs", "fusion", "precisions", "fp32")]


@given(st.sampled_from(FIELDS), JSON)
def test_an_edited_manifest_field_fails_only_with_typed_errors(pristine, tmp_path_factory, field, value):
    bundle = _copy(pristine, tmp_path_factory)
    manifest = json.loads((bundle / "manifest.json").read_text())
    node = manifest
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    try:
        with Session(bundle) as session:
            session.describe()
    except FusionrtError as exc:
        if field[:2] == ("files", "fusion.onnx"):
            assert isinstance(exc, BundleError)


@pytest.mark.parametrize("name", ["fusion.onnx", "manifest.json"])
def test_a_symlink_leading_outside_is_refused_without_reading_it(pristine, tmp_path_factory, name):
    bundle = _copy(pristine, tmp_path_factory)
    outside = tmp_path_factory.mktemp("outside")
    fifo = outside / "secret"
    os.mkfifo(fifo)  # reading it would block: a refusal that reads first shows up as a hang
    (bundle / name).unlink()
    (bundle / name).symlink_to(fifo)
    errors = []

    def open_bundle():
        try:
            Bundle.open(bundle)
        except BundleError as exc:
            errors.append(exc)

    opener = threading.Thread(target=open_bundle, daemon=True)
    opener.start()
    opener.join(20)
    assert not opener.is_alive(), "Bundle.open read the file the link points to"
    assert name in str(errors[0]) and "outside" in str(errors[0])
    assert [p.name for p in outside.iterdir()] == ["secret"]


@given(st.sampled_from(["../secret", "/etc/passwd", "sub/fusion.onnx", "..", ".", "manifest.json"]))
def test_paths_that_leave_the_bundle_are_refused(pristine, tmp_path_factory, bad):
    bundle = _copy(pristine, tmp_path_factory)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][bad] = {"sha256": "0" * 64, "bytes": 1}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    _open_refused(bundle, "manifest.json")
