"""The runtime Session: results, every bad input, bundle faults, threads, backend registry, no torch on ORT."""

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionrt.model import FusionModel
from fusionrt.parity import fusion_feed
from fusionrt.runtime import (
    BACKENDS,
    SCHEMA_VERSION,
    BackendError,
    Bundle,
    BundleError,
    InputError,
    Runner,
    Session,
)


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def session(bundle):
    return Session(bundle)


@pytest.fixture
def copy(bundle, tmp_path):
    """A private copy of the bundle to damage."""
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def _spec():
    """The tiny bundle's fusion contract, built without the bundle so parametrize can use it."""
    from fusionrt.export.contract import fusion_spec

    return fusion_spec(vocab_size=50, visual_dim=12, hidden=32, num_answers=7, max_text_len=16, max_visual_len=8,
                       max_batch=16)


def feed(batch=2, text=5, visual=3, seed=0):
    return fusion_feed(_spec(), batch, text, visual, np.random.default_rng(seed))


def torch_outputs(model, f):
    with torch.no_grad():
        hidden, logits = model(*(torch.from_numpy(f[k]) for k in ("input_ids", "text_mask", "visual_feats",
                                                                  "visual_mask")))
    return {"hidden": hidden.numpy(), "logits": logits.numpy()}


def test_session_describes_its_io(session):
    assert [t.name for t in session.inputs] == ["input_ids", "text_mask", "visual_feats", "visual_mask"]
    assert [t.name for t in session.outputs] == ["hidden", "logits"]
    assert session.inputs[2].shape == ("B", "M", 12) and session.inputs[0].dtype == "int64"
    assert session.outputs[0].shape == ("B", "T", 32)
    assert (session.dims["B"].max, session.dims["T"].max, session.dims["M"].max) == (16, 16, 8)
    assert session.backend == "onnxruntime" and session.precision == "fp32" and session.graph == "fusion"


# The exported graph on each engine against the PyTorch module, within 1e-5 (the export gate is 1e-4).
SERVING_BACKENDS = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module", params=SERVING_BACKENDS)
def served(request, bundle):
    """A Session on each backend that runs the exported graph."""
    return Session(bundle, request.param)


@pytest.mark.parametrize(("batch", "text", "visual"), [(1, 1, 1), (3, 16, 8), (16, 7, 2)])
def test_exported_graph_matches_torch(served, tiny_model, batch, text, visual):
    f = feed(batch, text, visual, seed=batch)
    got, want = served.run(f), torch_outputs(tiny_model, f)
    for name in ("hidden", "logits"):
        assert got[name].shape == want[name].shape and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0)


def test_torch_backend_runs_the_given_module(bundle, tiny_model):
    f = feed()
    got = Session(bundle, "torch", module=tiny_model).run(f)
    np.testing.assert_array_equal(got["logits"], torch_outputs(tiny_model, f)["logits"])


def test_torch_backend_refuses_other_weights_or_no_module(bundle, tiny_model):
    with pytest.raises(BackendError, match="weights with the sha256 recorded"):
        Session(bundle, "torch", module=FusionModel(tiny_model.config))
    with pytest.raises(BackendError, match="module=m"):
        Session(bundle, "torch")


def test_empty_visual_set_is_padded_to_one_masked_slot(served):
    f = feed(batch=2, text=4, visual=1)
    f["visual_mask"][:] = False
    f["visual_feats"][:] = 0
    empty = {**f, "visual_feats": np.zeros((2, 0, 12), np.float32), "visual_mask": np.zeros((2, 0), bool)}
    got, want = served.run(empty), served.run(f)
    np.testing.assert_array_equal(got["logits"], want["logits"])
    assert np.isfinite(got["hidden"]).all()


def _bad(f, **changes):
    out = dict(f)
    for key, value in changes.items():
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


def _cases():
    f = fusion_feed(_spec(), 2, 5, 3, np.random.default_rng(0))
    nan = f["visual_feats"].copy()
    nan[1, 2, 3] = np.nan
    inf = f["visual_feats"].copy()
    inf[0, 0, 0] = -np.inf
    big_id = f["input_ids"].copy()
    big_id[0, 1] = 50
    return [
        ("missing", _bad(f, visual_mask=None), "visual_mask", "an array for input 'visual_mask'", "no such key"),
        ("extra", _bad(f, token_type_ids=np.zeros((2, 5), np.int64)), "token_type_ids", "only the inputs",
         "unexpected input"),
        ("ids int32", _bad(f, input_ids=f["input_ids"].astype(np.int32)), "input_ids", "dtype int64", "dtype int32"),
        ("feats float64", _bad(f, visual_feats=f["visual_feats"].astype(np.float64)), "visual_feats",
         "dtype float32", "dtype float64"),
        ("mask int", _bad(f, text_mask=f["text_mask"].astype(np.int64)), "text_mask", "dtype bool", "dtype int64"),
        ("list", _bad(f, input_ids=f["input_ids"].tolist()), "input_ids", "numpy.ndarray", "list"),
        ("rank", _bad(f, input_ids=f["input_ids"][0]), "input_ids", "rank 2 [B,T]", "rank 1"),
        ("rank 4", _bad(f, visual_feats=f["visual_feats"][None]), "visual_feats", "rank 3", "rank 4"),
        ("static dim", _bad(f, visual_feats=f["visual_feats"][:, :, :11]), "visual_feats", "dim 2 = 12", "11"),
        ("T too long", _bad(f, input_ids=np.zeros((2, 17), np.int64), text_mask=np.ones((2, 17), bool)),
         "input_ids", "dim 1 (T) in [1, 16]", "17"),
        ("T empty", _bad(f, input_ids=np.zeros((2, 0), np.int64), text_mask=np.ones((2, 0), bool)),
         "input_ids", "dim 1 (T) in [1, 16]", "0"),
        ("M too many", _bad(f, visual_feats=np.zeros((2, 9, 12), np.float32), visual_mask=np.ones((2, 9), bool)),
         "visual_feats", "dim 1 (M) in [1, 8]", "9"),
        ("B too large", {k: np.repeat(v, 9, axis=0) for k, v in f.items()}, "input_ids", "dim 0 (B) in [1, 16]",
         "18"),
        ("B differs", _bad(f, visual_mask=f["visual_mask"][:1]), "visual_mask", "dim 0 (B) = 2, the same as in "
         "'input_ids'", "1"),
        ("T differs", _bad(f, text_mask=f["text_mask"][:, :4]), "text_mask", "dim 1 (T) = 5", "4"),
        ("M differs", _bad(f, visual_mask=f["visual_mask"][:, :2]), "visual_mask", "dim 1 (M) = 3", "2"),
        ("NaN", _bad(f, visual_feats=nan), "visual_feats", "finite values", "nan at index [1, 2, 3]"),
        ("Inf", _bad(f, visual_feats=inf), "visual_feats", "finite values", "-inf at index [0, 0, 0]"),
        ("token id", _bad(f, input_ids=big_id), "input_ids", "values in [0, 49]", "values from 0 to 50"),
        ("negative id", _bad(f, input_ids=-f["input_ids"] - 1), "input_ids", "values in [0, 49]", "values from -"),
    ]


@pytest.mark.parametrize(("case", "bad", "name", "expected", "received"), _cases(), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_bad_inputs_are_refused_with_a_clear_error(bundle, tiny_model, backend, case, bad, name, expected, received):
    options = {"module": tiny_model} if backend == "torch" else {}
    s = Session(bundle, backend, **options)
    with pytest.raises(InputError) as info:
        s.run(bad)
    assert info.value.name == name
    assert expected in info.value.expected, info.value
    assert received in info.value.received, info.value
    assert str(info.value).startswith(f"{name}: expected ")


def test_feed_must_be_a_mapping(session):
    with pytest.raises(InputError, match="feed: expected a mapping"):
        session.run([np.zeros(3)])


def test_input_error_is_the_package_error():
    from fusionrt import errors

    assert InputError is errors.InputError and issubclass(InputError, ValueError)


def test_concurrent_runs_from_threads_are_correct(served):
    session = served
    feeds = [feed(batch=1 + i % 4, text=1 + i % 16, visual=1 + i % 8, seed=i) for i in range(16)]
    expected = [session.run(f)["logits"] for f in feeds]
    errors, barrier = [], threading.Barrier(8)

    def worker(k):
        try:
            barrier.wait()
            for rep in range(6):
                i = (k * 5 + rep) % len(feeds)
                np.testing.assert_array_equal(session.run(feeds[i])["logits"], expected[i])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


@pytest.mark.parametrize("backend", SERVING_BACKENDS)
def test_serving_backend_does_not_import_torch(bundle, backend):
    code = (
        "import sys, numpy as np\n"
        "from fusionrt.runtime import Session\n"
        "from fusionrt.parity.grid import fusion_feed\n"
        f"s = Session({str(bundle)!r}, {backend!r})\n"
        "f = fusion_feed(s.runner.graph, 2, 4, 3, np.random.default_rng(0))\n"
        "out = s.run(f)\n"
        "assert out['logits'].shape == (2, 7)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_unknown_backend_lists_the_backends(bundle):
    listed = r"\['onnxruntime', 'openvino', 'tensorrt', 'torch'\]"
    with pytest.raises(BackendError, match=rf"backend: expected one of {listed}, received 'trt'"):
        Session(bundle, "trt")


def test_unknown_graph_and_precision(bundle):
    with pytest.raises(BundleError, match=r"graph: expected one of this bundle's graphs \['fusion'\]"):
        Session(bundle, graph="region_encoder")
    with pytest.raises(BundleError, match=r"precision: expected one of \['fp32'\].*received 'fp16'"):
        Session(bundle, precision="fp16")


def test_unlisted_precision_file_is_named_in_the_error(copy):
    shutil.copy(copy / "fusion.onnx", copy / "fusion.fp16.onnx")
    with pytest.raises(BundleError, match=r"fusion\.fp16\.onnx exists but the manifest does not list it"):
        Session(copy, precision="fp16")


def test_listed_precision_is_loaded(copy):
    """A later precision is one more manifest entry: fusion.{precision}.onnx, hashed like the others."""
    from fusionrt.bundle.manifest import sha256_file

    shutil.copy(copy / "fusion.onnx", copy / "fusion.fp16.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["fusion"]["precisions"]["fp16"] = "fusion.fp16.onnx"
    manifest["files"]["fusion.fp16.onnx"] = {"sha256": sha256_file(copy / "fusion.fp16.onnx"),
                                             "bytes": (copy / "fusion.fp16.onnx").stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert Session(copy, precision="fp16").run(feed())["logits"].shape == (2, 7)
    with pytest.raises(BackendError, match=r"precision: expected one of \['fp32'\] on the torch backend"):
        Session(copy, "torch", precision="fp16")


def test_missing_file(copy):
    (copy / "fusion.onnx").unlink()
    with pytest.raises(BundleError, match=r"fusion\.onnx: expected a file of the bundle at .*\(missing file\)"):
        Session(copy)


def test_altered_file_fails_the_hash(copy):
    data = bytearray((copy / "fusion.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "fusion.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"fusion\.onnx: expected sha256 .*\(altered file\)"):
        Session(copy)


def test_truncated_onnx_file_fails_the_size_check(copy):
    data = (copy / "fusion.onnx").read_bytes()
    (copy / "fusion.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(BundleError, match=r"fusion.onnx: expected .* bytes as in manifest.json.*truncated"):
        Session(copy)


def test_truncated_onnx_file_with_a_matching_manifest_is_refused_on_load(copy):
    """Hashes only prove the file is the one exported; a file that was broken at export still must not crash."""
    from fusionrt.bundle.manifest import sha256_file

    data = (copy / "fusion.onnx").read_bytes()
    (copy / "fusion.onnx").write_bytes(data[: len(data) // 3])
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["fusion.onnx"] = {"sha256": sha256_file(copy / "fusion.onnx"),
                                        "bytes": (copy / "fusion.onnx").stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"fusion\.onnx: expected an ONNX model onnxruntime can load"):
        Session(copy)


def test_newer_schema_version_is_refused(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"expected schema_version <= {SCHEMA_VERSION}.*upgrade"):
        Session(copy)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "manifest.json: expected a file in"),
        ("{not json", "manifest.json: expected JSON"),
        ('{"format": "other"}', "expected format 'fusionrt-bundle'"),
        ('{"format": "fusionrt-bundle", "schema_version": "1"}', "an integer schema_version"),
    ],
)
def test_broken_manifest(copy, content, match):
    if content is None:
        (copy / "manifest.json").unlink()
    else:
        (copy / "manifest.json").write_text(content)
    with pytest.raises(BundleError, match=match):
        Session(copy)


def test_manifest_cannot_point_outside_the_bundle(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["../secret"] = {"sha256": "0" * 64, "bytes": 1}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plain file names"):
        Bundle.open(copy)


def test_not_a_directory(tmp_path):
    with pytest.raises(BundleError, match=r"bundle: expected a directory with manifest\.json"):
        Session(tmp_path / "nothing")


class _ZerosRunner(Runner):
    """A stand-in for a future backend (TensorRT): only the *_impl methods."""

    backend = "zeros"

    def activate_impl(self):
        self.calls = 0

    def infer_impl(self, feed):
        self.calls += 1
        batch = feed["input_ids"].shape[0]
        return {"hidden": np.zeros((batch, feed["input_ids"].shape[1], 32), np.float32),
                "logits": np.zeros((batch, 7), np.float32)}


def test_a_new_backend_slots_in_without_changing_callers(bundle, monkeypatch):
    monkeypatch.setitem(BACKENDS, "zeros", f"{__name__}:_ZerosRunner")
    s = Session(bundle, "zeros")
    assert s.run(feed())["logits"].shape == (2, 7)
    with pytest.raises(InputError, match="visual_feats: expected finite values"):
        s.run({**feed(), "visual_feats": np.full((2, 3, 12), np.nan, np.float32)})
    assert s.runner.calls == 1  # validation ran in the base class, before the backend
