"""`fusionrt triton`: repositories for the three backends, each config.pbtxt parsed by Triton's ModelConfig."""

import hashlib
import json
import os
from pathlib import Path

import pytest
from google.protobuf import text_format
from triton_support import run_fusionrt, shipped_bundle
from tritonclient.grpc import model_config_pb2 as mc

from fusionrt.errors import InputError
from fusionrt.runtime import Bundle
from fusionrt.serve import RepositoryOptions, ServeError, find_triton, write_repository

TRITON_TYPES = {"bool": mc.TYPE_BOOL, "int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return Bundle.open(shipped_bundle(tmp_path_factory))


@pytest.fixture(scope="module")
def fake_plan(tmp_path_factory):
    """Not an engine: no TensorRT here. Triton reads the plan only at load time, in an NGC container."""
    path = tmp_path_factory.mktemp("plan") / "fusion.plan"
    path.write_bytes(b"not a real TensorRT engine")
    return path


def parse(path: Path) -> mc.ModelConfig:
    """Triton's own schema: unknown fields and wrong types raise ParseError."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("backend", ["python", "onnxruntime", "tensorrt"])
def test_every_config_parses_and_matches_the_bundle_contract(bundle, fake_plan, tmp_path, backend):
    options = RepositoryOptions(backend=backend, instances=2, max_batch=32, queue_delay_us=700,
                                plan=str(fake_plan) if backend == "tensorrt" else None)
    repo = write_repository(bundle, tmp_path / "repo", options)
    configs = {name: parse(repo / name / "config.pbtxt") for name in ("fusion", "region_encoder", "answer")}
    assert {c.name for c in configs.values()} == set(configs)

    fusion = configs["fusion"]
    spec = bundle.graph("fusion")
    assert fusion.max_batch_size == 32
    assert [(t.name, t.data_type, list(t.dims)) for t in fusion.input] == [
        ("input_ids", mc.TYPE_INT64, [-1]), ("text_mask", mc.TYPE_BOOL, [-1]),
        ("visual_feats", mc.TYPE_FP32, [-1, 69]), ("visual_mask", mc.TYPE_BOOL, [-1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in fusion.output] == [
        ("hidden", mc.TYPE_FP32, [-1, 256]), ("logits", mc.TYPE_FP32, [22])]
    assert [t.name for t in fusion.input] == [t.name for t in spec.inputs]
    assert fusion.dynamic_batching.max_queue_delay_microseconds == 700
    assert list(fusion.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32]

    version = repo / "fusion" / "1"
    if backend == "python":
        assert fusion.backend == "python" and not fusion.platform
        assert [(g.count, g.kind) for g in fusion.instance_group] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
        assert all(t.allow_ragged_batch for t in fusion.input)  # model.py pads requests of different T / M
        assert sha256(version / "bundle" / "fusion.onnx") == bundle.manifest["files"]["fusion.onnx"]["sha256"]
        assert "fusionrt.serve.python_models import SessionModel" in (version / "model.py").read_text()
    elif backend == "onnxruntime":
        assert fusion.platform == "onnxruntime_onnx" and fusion.default_model_filename == "model.onnx"
        assert sha256(version / "model.onnx") == bundle.manifest["files"]["fusion.onnx"]["sha256"]
        assert not any(t.allow_ragged_batch for t in fusion.input)  # ORT cannot run ragged batches
    else:
        assert fusion.platform == "tensorrt_plan" and (version / "model.plan").read_bytes() == fake_plan.read_bytes()
        # one instance per optimization profile, so instances never share a profile's context
        assert [(g.count, g.kind, list(g.profile)) for g in fusion.instance_group] == [
            (1, mc.ModelInstanceGroup.KIND_GPU, ["0"]), (1, mc.ModelInstanceGroup.KIND_GPU, ["1"])]

    region = configs["region_encoder"]
    assert [(t.name, list(t.dims)) for t in region.input] == [("crops", [3, 32, 32]), ("geometry", [5])]
    assert region.max_batch_size == 32 * 16  # crops: every region of a full batch of questions in one call
    answer = configs["answer"]
    assert answer.backend == "python"
    assert [(t.name, t.data_type) for t in answer.input] == [("image", mc.TYPE_STRING), ("question", mc.TYPE_STRING)]
    assert [t.name for t in answer.output] == ["answer", "probability", "probabilities"]
    assert Bundle.open(repo / "answer" / "1" / "bundle").manifest == bundle.manifest


def test_dynamic_batching_off_and_repository_replaced(bundle, tmp_path):
    out = tmp_path / "repo"
    write_repository(bundle, out)
    (out / "stale").mkdir()
    write_repository(bundle, out, RepositoryOptions(queue_delay_us=None))
    assert not (out / "stale").exists()
    config = parse(out / "fusion" / "config.pbtxt")
    assert not config.HasField("dynamic_batching")
    assert json.loads((out / "fusionrt.json").read_text())["options"]["queue_delay_us"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging or old copy left


@pytest.mark.parametrize(("options", "name"), [
    (RepositoryOptions(backend="openvino"), "backend"),
    (RepositoryOptions(max_batch=65), "max_batch"),
    (RepositoryOptions(instances=0), "instances"),
    (RepositoryOptions(backend="tensorrt"), "plan"),
    (RepositoryOptions(answer_calls="ensemble"), "answer_calls"),
])
def test_bad_options_are_refused_before_writing(bundle, tmp_path, options, name):
    with pytest.raises(InputError) as caught:
        write_repository(bundle, tmp_path / "repo", options)
    assert caught.value.name == name
    assert list(tmp_path.iterdir()) == []


def test_a_directory_fusionrt_did_not_write_is_not_replaced(bundle, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="did not write"):
        write_repository(bundle, tmp_path / "repo")
    assert (tmp_path / "repo" / "mine.txt").read_text() == "keep"


def test_cli_writes_a_repository_and_refuses_a_missing_precision(bundle, tmp_path):
    done = run_fusionrt("triton", str(bundle.path), "--out", str(tmp_path / "repo"), "--max-batch", "8", "-q")
    assert done.returncode == 0, done.stderr
    assert parse(tmp_path / "repo" / "answer" / "config.pbtxt").max_batch_size == 8
    done = run_fusionrt("triton", str(bundle.path), "--out", str(tmp_path / "r2"), "--precision", "fp16")
    assert done.returncode == 2 and "precision" in done.stderr and "fp16" in done.stderr


def test_without_pytriton_serve_says_how_to_get_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("pytriton") is not None:
        pytest.skip("this interpreter has pytriton")
    with pytest.raises(ServeError) as caught:
        find_triton()
    assert "fusionrt[serve]" in str(caught.value) and "NGC" in str(caught.value)
    (tmp_path / "repo" / "fusion").mkdir(parents=True)  # a repository with a model: only pytriton is missing
    (tmp_path / "repo" / "fusion" / "config.pbtxt").write_text('name: "fusion"\n')
    done = run_fusionrt("serve", str(tmp_path / "repo"))
    assert done.returncode == 2 and "fusionrt[serve]" in done.stderr


def test_repository_hard_links_instead_of_copies(bundle, tmp_path):
    repo = write_repository(bundle, tmp_path / "repo")
    linked = repo / "region_encoder" / "1" / "bundle" / "fusion.onnx"
    if os.stat(linked).st_dev == os.stat(bundle.path / "fusion.onnx").st_dev:
        assert os.path.samefile(linked, bundle.path / "fusion.onnx")


def test_a_bundle_of_another_task_gets_one_model_per_graph_and_no_scene_app(tiny_bundle, tmp_path):
    """Dispatch on the manifest: a user's fusion module (task "custom") has no region encoder or tokenizer, so
    its repository serves the graphs it lists and no `answer` model (which would need the scene world)."""
    repo = write_repository(tiny_bundle, tmp_path / "repo")
    marker = json.loads((repo / "fusionrt.json").read_text())
    assert marker["models"] == ["fusion"]
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["fusion"]
    assert (repo / "fusion" / "config.pbtxt").is_file()
