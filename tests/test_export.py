"""Export: manifest, symbolic dims, grid verification, foreign modules, faults; end to end on the shipped model."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fusionrt.app import Answerer, BundlePipeline, TorchPipeline
from fusionrt.bundle.manifest import VQA_TASK, sha256_file
from fusionrt.data.questions import questions_for
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.export import ExportError, VerificationError, export_checkpoint, export_onnx
from fusionrt.model import SHIPPED_CHECKPOINT, FusionConfig, FusionModel
from fusionrt.parity import fusion_feed
from fusionrt.runtime import Bundle, Session

TINY = FusionConfig(vocab_size=50, hidden=32, layers=2, heads=4, ffn=64, visual_dim=12, num_answers=7,
                    max_text_len=16, max_visual_len=8)
SIZES = {"vocab_size": 50, "visual_dim": 12, "max_text_len": 16, "max_visual_len": 8}


class BagOfRegions(nn.Module):
    """A user's own fusion model: no attention, gated masked means; other argument names, same contract."""

    def __init__(self, vocab=50, visual_dim=12, hidden=24, answers=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.visual = nn.Linear(visual_dim, hidden)
        self.gate = nn.Linear(2 * hidden, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, answers))

    def forward(self, ids, words, regions, present):
        words_f, present_f = words.unsqueeze(-1).float(), present.unsqueeze(-1).float()
        visual = (self.visual(regions) * present_f).sum(1) / present_f.sum(1).clamp(min=1.0)
        text = self.embed(ids)
        both = torch.cat([text, visual[:, None, :].expand_as(text)], dim=-1)
        hidden = torch.sigmoid(self.gate(both)) * text * words_f
        return hidden, self.head(hidden.sum(1) / words_f.sum(1).clamp(min=1.0))


class FrozenLength(BagOfRegions):
    """Turns the text length into a Python int: the tracer bakes in the example's T."""

    def __init__(self):
        super().__init__()
        self.positions = nn.Parameter(torch.randn(16, 24))

    def forward(self, ids, words, regions, present):
        hidden, _ = super().forward(ids, words, regions, present)
        hidden = hidden + self.positions[: int(ids.shape[1])]
        return hidden, self.head(hidden.mean(1))


class BranchOnMask(BagOfRegions):
    """Python control flow on data: the tracer records the example's branch only."""

    def forward(self, ids, words, regions, present):
        hidden, logits = super().forward(ids, words, regions, present)
        if bool(present.all()):
            logits = logits * 2.0
        return hidden, logits


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = FusionModel(TINY).eval()
    return model, export_onnx(model, tmp_path_factory.mktemp("tiny") / "bundle", **SIZES)


def test_bundle_files_and_manifest(tiny_bundle):
    _, path = tiny_bundle
    manifest = json.loads((path / "manifest.json").read_text())
    assert sorted(p.name for p in path.iterdir()) == ["fusion.onnx", "manifest.json"]
    assert manifest["format"] == "fusionrt-bundle" and manifest["schema_version"] == 1
    assert manifest["opset"] == 17 and manifest["exporter"] in ("legacy", "dynamo")
    assert manifest["model"]["config"] == TINY.to_dict()
    assert manifest["model"]["class"] == "fusionrt.model.fusion.FusionModel"
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime"}
    assert manifest["files"]["fusion.onnx"]["sha256"] == sha256_file(path / "fusion.onnx")
    inputs = {t["name"]: t for t in manifest["graphs"]["fusion"]["inputs"]}
    assert inputs["visual_feats"]["shape"] == ["B", "M", 12]
    assert inputs["visual_feats"]["dynamic"]["M"] == {"min": 1, "opt": 4, "max": 8, "pad_when_empty": True}
    assert inputs["input_ids"]["dynamic"]["B"] == {"min": 1, "opt": 1, "max": 64}
    assert inputs["input_ids"]["value_range"] == [0, 49]
    outputs = {t["name"]: t for t in manifest["graphs"]["fusion"]["outputs"]}
    assert outputs["hidden"]["shape"] == ["B", "T", 32] and outputs["logits"]["shape"] == ["B", 7]
    grid = manifest["verification"]["graphs"]["fusion"]
    assert grid["points"] == 28 and grid["max_corner"] == "B=64 T=16 M=8"  # 27 grid points + the max corner
    assert all(m["max_abs"] <= 1e-4 for m in grid["worst"].values())
    assert manifest["source"]["kind"] == "module" and len(manifest["source"]["weights_sha256"]["fusion"]) == 64


def test_onnx_graph_has_named_dynamic_dims(tiny_bundle):
    _, path = tiny_bundle
    model = onnx.load(str(path / "fusion.onnx"))
    onnx.checker.check_model(model, full_check=True)

    def dims(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    assert dims(model.graph.input) == {"input_ids": ["B", "T"], "text_mask": ["B", "T"],
                                       "visual_feats": ["B", "M", 12], "visual_mask": ["B", "M"]}
    assert dims(model.graph.output) == {"hidden": ["B", "T", 32], "logits": ["B", 7]}


def test_foreign_module_exports_and_runs(tmp_path):
    torch.manual_seed(1)
    model = BagOfRegions().eval()
    path = export_onnx(model, tmp_path / "foreign", vocab_size=50, visual_dim=12, max_text_len=10, max_visual_len=6,
                       max_batch=8)
    manifest = Bundle.open(path).manifest
    assert manifest["model"]["class"].endswith("BagOfRegions") and manifest["model"]["config"] is None
    assert manifest["model"]["hidden"] == 24 and manifest["model"]["num_answers"] == 5
    feed = fusion_feed(Bundle.open(path).graph("fusion"), 8, 10, 6, np.random.default_rng(3))
    got = Session(path).run(feed)
    want = Session(path, "torch", module=model).run(feed)
    for name in ("hidden", "logits"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0)


def test_dynamo_exporter_at_opset_18(tmp_path):
    torch.manual_seed(2)
    path = export_onnx(BagOfRegions().eval(), tmp_path / "dyn", exporter="dynamo", opset=18, **SIZES)
    manifest = Bundle.open(path).manifest
    assert manifest["exporter"] == "dynamo" and manifest["opset"] == 18
    assert manifest["verification"]["graphs"]["fusion"]["points"] == 28


def test_frozen_dim_fails_verification_and_writes_nothing(tmp_path):
    with pytest.raises(VerificationError) as info:
        export_onnx(FrozenLength().eval(), tmp_path / "frozen", exporter="legacy", **SIZES)
    failures = info.value.failures
    assert any("T=1 " in f for f in failures), failures
    assert not any("T=5 " in f for f in failures)  # the example's length is the one that works
    assert "export verification: expected ONNX Runtime within max abs 0.0001" in str(info.value)
    assert info.value.report is not None
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging directory left


def test_traced_branch_is_caught_by_the_grid(tmp_path):
    torch.manual_seed(3)
    with pytest.raises(VerificationError) as info:
        export_onnx(BranchOnMask().eval(), tmp_path / "branch", exporter="legacy", **SIZES)
    assert any("logits: max abs error" in f for f in info.value.failures), info.value.failures
    assert any("B=1 " in f for f in info.value.failures)  # one full row: torch took the other branch


def test_tolerance_is_enforced(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(VerificationError, match="max abs error"):
        export_onnx(FusionModel(TINY).eval(), tmp_path / "strict", atol=0.0, exporter="legacy", **SIZES)


class TokenIdsOut(nn.Module):
    def forward(self, ids, words, regions, present):
        return ids


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        (TokenIdsOut(), {}, r"model: expected forward\(input_ids .* received outputs \(torch.int64 \[2, 5\]\) at B=2"),
        ("not a module", {}, "model: expected a torch.nn.Module, received str"),
        (BagOfRegions(), {"max_text_len": 0}, "max_text_len: expected a positive integer, received 0"),
        (BagOfRegions(), {"visual_dim": 11}, "model: expected forward.*raised RuntimeError"),
        (BagOfRegions(), {"exporter": "tracer"}, "exporter: expected one of"),
    ],
)
def test_unusable_modules_and_arguments(tmp_path, model, kwargs, match):
    with pytest.raises(ExportError, match=match):
        export_onnx(model, tmp_path / "b", **{**SIZES, **kwargs})


def test_refuses_to_replace_a_directory_of_other_files(tmp_path):
    (tmp_path / "data.txt").write_text("keep me")
    with pytest.raises(ExportError, match="out_dir: expected a new path, an empty directory or an existing bundle"):
        export_onnx(BagOfRegions().eval(), tmp_path, **SIZES)
    assert (tmp_path / "data.txt").read_text() == "keep me"


def test_re_export_replaces_a_bundle(tmp_path):
    first = export_onnx(BagOfRegions().eval(), tmp_path / "b", **SIZES)
    old = Bundle.open(first).manifest["files"]["fusion.onnx"]["sha256"]
    torch.manual_seed(9)
    second = export_onnx(BagOfRegions().eval(), tmp_path / "b", **SIZES)
    assert second == first and Bundle.open(second).manifest["files"]["fusion.onnx"]["sha256"] != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# --- the shipped checkpoint, exported once for this module --------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory):
    return export_checkpoint(SHIPPED_CHECKPOINT, tmp_path_factory.mktemp("shipped") / "bundle")


def test_shipped_bundle_contents(shipped_bundle):
    assert Bundle.open(shipped_bundle).task == VQA_TASK == Bundle.open(shipped_bundle).manifest["task"]
    manifest = Bundle.open(shipped_bundle).manifest
    assert sorted(manifest["files"]) == ["answers.json", "fusion.onnx", "region_encoder.onnx", "tokenizer.json"]
    assert (shipped_bundle / "tokenizer.json").read_bytes() == (SHIPPED_CHECKPOINT / "tokenizer.json").read_bytes()
    region = manifest["graphs"]["region_encoder"]
    assert region["inputs"][0]["shape"] == ["N", 3, 32, 32] and region["outputs"][0]["shape"] == ["N", 69]
    assert region["inputs"][0]["dynamic"]["N"]["max"] == 64 * manifest["model"]["max_visual_len"]
    source = manifest["source"]
    assert source["kind"] == "checkpoint"
    assert source["files"]["fusion.safetensors"] == sha256_file(SHIPPED_CHECKPOINT / "fusion.safetensors")
    for graph in ("fusion", "region_encoder"):
        assert all(m["max_abs"] <= 1e-4 for m in manifest["verification"]["graphs"][graph]["worst"].values())


def test_shipped_torch_backend_loads_the_source_checkpoint(shipped_bundle):
    session = Session(shipped_bundle, "torch", graph="region_encoder")
    crops = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    geometry = np.random.default_rng(1).random((5, 5), dtype=np.float32)
    got = Session(shipped_bundle, graph="region_encoder").run({"crops": crops, "geometry": geometry})["feats"]
    np.testing.assert_allclose(got, session.run({"crops": crops, "geometry": geometry})["feats"], atol=1e-4)


def test_answerer_on_the_bundle_answers_like_the_checkpoint(shipped_bundle):
    bundle_answerer, torch_answerer = Answerer(shipped_bundle), Answerer(SHIPPED_CHECKPOINT)
    assert isinstance(bundle_answerer.pipeline, BundlePipeline)
    assert isinstance(torch_answerer.pipeline, TorchPipeline)
    correct = total = 0
    for seed in split_seeds("heldout", 12, start=900):
        scene = generate_scene(seed)
        image = render(scene)
        for q in questions_for(scene, np.random.default_rng(seed)):
            answer, probability = bundle_answerer.ask(image, q.text)
            reference, reference_probability = torch_answerer.ask(image, q.text)
            assert answer == reference and abs(probability - reference_probability) < 1e-4
            correct += answer == q.answer
            total += 1
    assert correct / total > 0.8


def test_cli_ask_on_a_bundle_does_not_import_torch(shipped_bundle, tmp_path):
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray(render(generate_scene(3))).save(image)
    code = (
        "import json, sys\n"
        "from fusionrt.cli import main\n"
        f"assert main(['ask', {str(image)!r}, 'How many objects are there?', '--bundle', {str(shipped_bundle)!r},"
        " '--json', '-']) == 0\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"] == str(len(generate_scene(3).objects))
    assert done.stderr.strip().splitlines()[-1] == "False"


def test_the_manifest_records_the_task_and_old_bundles_get_one_from_their_graphs(tiny_bundle, tmp_path):
    import json
    import shutil

    from fusionrt.bundle import CUSTOM_TASK, Bundle

    _, path = tiny_bundle
    assert Bundle.open(path).manifest["task"] == CUSTOM_TASK  # a user's module: no scene world
    copy = shutil.copytree(path, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["task"]  # as written before tasks were recorded
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "task" not in Bundle.open(copy).manifest and Bundle.open(copy).task == CUSTOM_TASK
