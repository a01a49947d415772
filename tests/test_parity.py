"""Parity: metrics, grids, comparisons that must fail, real-scene parity and the ``fusionrt parity`` CLI."""

import collections
import io
import json
import math
import shutil

import numpy as np
import pytest
import torch

from fusionrt.bundle.manifest import sha256_file
from fusionrt.cli import main
from fusionrt.data.world import ANSWERS
from fusionrt.errors import InputError
from fusionrt.export import export_checkpoint
from fusionrt.export.contract import fusion_spec, region_encoder_spec
from fusionrt.model import Checkpoint, FusionConfig, FusionModel, RegionEncoder, save_checkpoint
from fusionrt.parity import (
    Limit,
    Tolerance,
    array_metrics,
    compare_grid,
    gates_for,
    grid_points,
    json_safe,
    run_parity,
)
from fusionrt.progress import Progress
from fusionrt.runtime import Bundle, Session

SPEC = fusion_spec(vocab_size=50, visual_dim=12, hidden=32, num_answers=7, max_text_len=16, max_visual_len=8,
                   max_batch=64)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, question_encoder):
    """A small random checkpoint (real tokenizer, region encoder and answer list) exported once."""
    torch.manual_seed(0)
    config = FusionConfig(vocab_size=question_encoder.vocab_size, hidden=32, layers=2, heads=4, ffn=64)
    root = tmp_path_factory.mktemp("parity")
    save_checkpoint(Checkpoint(FusionModel(config).eval(), RegionEncoder().eval(), question_encoder, list(ANSWERS)),
                    root / "checkpoint")
    return export_checkpoint(root / "checkpoint", root / "bundle")


def test_array_metrics_values():
    m = array_metrics(np.array([1.0, -2.0, 0.0]), np.array([1.5, -2.0, 0.0]))
    assert m["max_abs"] == 0.5 and m["mean_abs"] == pytest.approx(0.5 / 3) and m["max_rel"] == 0.5
    assert m["cosine"] == pytest.approx(5.5 / (math.sqrt(5) * math.sqrt(6.25)))
    assert array_metrics(np.zeros(4), np.zeros(4))["cosine"] == 1.0
    assert array_metrics(np.zeros((2, 3)), np.zeros((3, 2)))["problem"].startswith("shape [3, 2] instead of [2, 3]")
    nan = array_metrics(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
    assert nan["problem"].startswith("non-finite") and nan["max_abs"] == math.inf  # NaN == NaN is no agreement


def test_fusion_grid_covers_sizes_padding_and_fully_masked_rows():
    points = grid_points(SPEC)
    assert len(points) == 27
    assert {p.sizes["B"] for p in points} == {1, 2, 8}
    assert {p.sizes["T"] for p in points} == {1, 9, 16} and {p.sizes["M"] for p in points} == {1, 5, 8}
    big = next(p for p in points if p.sizes == {"B": 8, "T": 16, "M": 8})
    text, visual = big.feed["text_mask"], big.feed["visual_mask"]
    assert text[0].all() and visual[0].all()  # a full row
    assert not visual[-1].any() and not text[-2].any() and not (text[-3].any() or visual[-3].any())
    assert ((text.sum(1) > 0) & (text.sum(1) < 16)).any()  # partially padded rows
    assert (big.feed["input_ids"][~text] == 0).all() and (big.feed["visual_feats"][~visual] == 0).all()


def test_region_encoder_grid_is_capped():
    spec = region_encoder_spec(crop_size=32, geometry_dim=5, feature_dim=69, max_regions=1024, opt_regions=16)
    points = grid_points(spec)
    assert [p.sizes["N"] for p in points] == [1, 33, 64]
    assert points[0].feed["crops"].shape == (1, 3, 32, 32) and points[0].feed["crops"].dtype == np.float32


class _Offset:
    """A candidate that is off by ``delta`` on the logits of batches of 8."""

    def __init__(self, inner, delta):
        self.inner, self.delta = inner, delta

    def run(self, feed):
        out = dict(self.inner.run(feed))
        if feed["input_ids"].shape[0] == 8:
            out["logits"] = out["logits"] + np.float32(self.delta)
        return out


class _Failing:
    def run(self, feed):
        raise RuntimeError("engine lost")


def test_compare_grid_reports_points_over_tolerance(bundle):
    session = Session(bundle)
    points = grid_points(session.runner.graph, sizes={"B": (1, 8), "T": (3,), "M": (2,)})
    clean = compare_grid("fusion", session, session, points)
    assert clean.failures(Tolerance()) == [] and clean.summary()["logits"]["max_abs"] == 0.0
    off = compare_grid("fusion", session, _Offset(session, 1e-3), points)
    failures = off.failures(Tolerance(max_abs=1e-4))
    assert failures == ["fusion [B=8 T=3 M=2] logits: max abs error 0.001 > 0.0001"]
    broken = compare_grid("fusion", session, _Failing(), points)
    assert broken.failures(Tolerance())[0] == "fusion [B=1 T=3 M=2]: candidate failed: RuntimeError: engine lost"


def test_run_parity_on_grid_and_real_scenes(bundle):
    report = run_parity(bundle, "torch", "onnxruntime", scenes=12)
    assert report.passed, report.failures
    assert [g.graph for g in report.grids] == ["fusion", "region_encoder"]
    scenes = report.scenes
    assert scenes.scenes == 12 and scenes.questions > 12
    assert set(scenes.metrics) == {"feats", "hidden", "logits"}
    assert scenes.agreement == 1.0 and scenes.accuracy["reference"] == scenes.accuracy["candidate"]
    table = report.table()
    assert "fusion grid (27 shapes)" in table and "argmax agreement 1.0000" in table and table.endswith("PASSED")
    data = json.loads(json.dumps(json_safe(report.to_dict())))
    assert data["passed"] is True and data["reference"]["backend"] == "torch"


def _with_precision(bundle, directory, precision, graph=None, keep_region_encoder=False, quantization=None):
    """A copy of ``bundle`` whose fusion graph at ``precision`` is ``graph`` (an onnx model; default the fp32 file)."""
    import onnx

    copy = shutil.copytree(bundle, directory)
    name = f"fusion.{precision}.onnx"
    if graph is None:
        (copy / name).write_bytes((copy / "fusion.onnx").read_bytes())
    else:
        onnx.save(graph, str(copy / name))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["fusion"]["precisions"][precision] = name
    if keep_region_encoder:
        manifest["graphs"]["region_encoder"]["precisions"][precision] = "region_encoder.onnx"
    else:
        manifest["graphs"].pop("region_encoder")
    if quantization is not None:
        manifest["quantization"] = quantization
    manifest["files"][name] = {"sha256": sha256_file(copy / name), "bytes": (copy / name).stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_run_parity_compares_precisions(bundle, tmp_path):
    """Any precision the manifest lists can be a side (fp16/int8 come later; here an identical copy)."""
    copy = _with_precision(bundle, tmp_path / "b", "copy")
    report = run_parity(Bundle.open(copy), "onnxruntime", "onnxruntime", candidate_precision="copy", scenes=0)
    assert report.passed and report.grids[0].summary()["logits"]["max_abs"] == 0.0
    assert report.candidate["precision"] == "copy" and report.scenes is None


def _strict(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_cli_parity_passes_and_writes_json(bundle, tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert main(["parity", str(bundle), "--scenes", "6", "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "torch fp32 (reference) vs onnxruntime fp32 (candidate)" in printed and "PASSED" in printed
    data = _strict(out.read_text())
    assert data["passed"] is True and data["scenes"]["scenes"] == 6
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left


def test_cli_parity_exits_non_zero_when_a_tolerance_is_exceeded(bundle, tmp_path, capsys):
    out = tmp_path / "parity.json"
    assert main(["parity", str(bundle), "--scenes", "0", "--atol", "0", "--json", str(out), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "max abs error" in printed
    data = _strict(out.read_text())
    assert data["passed"] is False and data["failures"]


def test_cli_parity_on_a_damaged_bundle_is_an_error(bundle, tmp_path, capsys):
    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "region_encoder.onnx").unlink()
    assert main(["parity", str(copy), "--scenes", "0", "--quiet"]) == 2
    assert "region_encoder.onnx: expected a file of the bundle" in capsys.readouterr().err


# --- gates per precision -------------------------------------------------------------------------------------


def test_gates_for_fp32_are_the_strict_numeric_ones(bundle):
    gates = gates_for(bundle, "fp32")
    assert gates.limit("max_abs", "hidden") == Limit(1e-4, "default for fp32")
    assert gates.limit("min_cosine", "logits") == Limit(0.9999, "default for fp32")
    assert gates.scenes == {"min_agreement": Limit(0.99, "default for fp32")}


def test_gates_for_a_reduced_precision_come_from_the_manifest_budget(bundle, tmp_path):
    from fusionrt.parity.budgets import BUDGETS

    recorded = {"int8": {"graphs": {"int8": {"heldout": {"budget": {"max_drop_points": 0.37, "min_agreement": 0.93}}}}},
                "fp16": {"heldout": {"budget": {"max_drop_points": 0.11, "min_agreement": 0.991}}}}
    copy = _with_precision(bundle, tmp_path / "b", "int8", quantization=recorded)
    int8 = gates_for(copy, "int8")
    assert int8.scenes == {"max_drop_points": Limit(0.37, "manifest"), "min_agreement": Limit(0.93, "manifest")}
    assert "max_abs" not in int8.outputs  # no fp32 abs limit on a quantized graph
    assert int8.limit("min_cosine", "hidden").source == "default for int8"
    assert gates_for(copy, "fp16").scenes["max_drop_points"] == Limit(0.11, "manifest")
    # Nothing recorded for int8-cpu: the budget it would have been admitted with, labelled as a default.
    cpu = gates_for(copy, "int8-cpu").scenes["min_agreement"]
    assert cpu == Limit(BUDGETS["int8-cpu"].min_agreement, "default for int8-cpu")


def test_a_flag_overrides_its_default_only(bundle):
    gates = gates_for(bundle, "int8", {"min_cosine": {"hidden": 0.5}, "min_agreement": 0.9, "max_abs": 0.2})
    assert gates.limit("min_cosine", "hidden") == Limit(0.5, "flag")
    assert gates.limit("min_cosine", "logits").source == "default for int8"  # other outputs keep theirs
    assert gates.scenes["min_agreement"] == Limit(0.9, "flag")
    assert gates.scenes["max_drop_points"].source == "default for int8"
    every = gates_for(bundle, "int8", {"min_cosine": 0.1})  # one value for every output replaces per-output ones
    assert every.limit("min_cosine", "hidden") == every.limit("min_cosine", "logits") == Limit(0.1, "flag")
    with pytest.raises(InputError, match="min_cosine of hidden: expected a number in"):
        gates_for(bundle, "int8", {"min_cosine": {"hidden": 2.0}})
    with pytest.raises(InputError, match="gate: expected one of"):
        gates_for(bundle, "int8", {"cosine": 0.5})


def test_atol_and_rtol_together_fail_only_when_both_are_exceeded(bundle):
    gates = gates_for(bundle, "fp32", {"max_abs": 1e-3, "max_rel": 1e-2, "min_cosine": -1.0})
    metrics = {"max_abs": 5e-3, "max_rel": 5e-3, "mean_abs": 0.0, "cosine": 1.0, "problem": None}
    assert gates.check_output("fusion", "hidden", metrics) is None  # abs over, rel within
    failure = gates.check_output("fusion", "hidden", {**metrics, "max_rel": 0.5}, "B=1")
    assert str(failure) == "fusion [B=1] hidden: max abs error 0.005 > 0.001; max rel error 0.5 > 0.01"
    nan = gates.check_output("scenes", "logits", {**metrics, "problem": "non-finite values: 0 in reference, 3"})
    assert nan is not None and "non-finite" in nan.message


def _perturbed_fusion(bundle, scale):
    """The fusion graph with every float weight matrix multiplied by (1 + scale * noise): a broken candidate."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "fusion.onnx"))
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        weights = numpy_helper.to_array(tensor)
        if weights.dtype == np.float32 and weights.ndim == 2:
            noisy = weights * (1 + scale * rng.standard_normal(weights.shape)).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
    return model


def test_cli_parity_fails_a_perturbed_int8_graph_with_a_short_message(bundle, tmp_path, capsys):
    copy = _with_precision(bundle, tmp_path / "b", "int8", _perturbed_fusion(bundle, 0.5))
    out = tmp_path / "parity.json"
    status = main(["parity", str(copy), "--reference", "onnxruntime", "--candidate-precision", "int8",
                   "--scenes", "0", "--json", str(out)])
    printed = capsys.readouterr().out
    assert status == 1
    verdict = printed[printed.index("FAILED"):].splitlines()[:-1]  # the last line says where the JSON went
    assert len(verdict) <= 1 + 2 * 6  # the verdict, then per output 5 worst points and one "... and N more"
    assert "cosine >= 0.94 on hidden" in printed and "default for int8" in printed
    shown = [line for line in verdict if line.startswith("  fusion [")]
    assert shown and all("cosine" in line for line in shown)
    data = _strict(out.read_text())
    assert len(data["grids"][0]["points"]) == 27 and data["passed"] is False  # JSON keeps every point
    per_output = collections.Counter(f["output"] for f in data["failures"])
    assert verdict[0] == f"FAILED ({sum(per_output.values())}):" and per_output["hidden"] > 5
    for output, count in per_output.items():
        assert sum(f" {output}: " in line for line in shown) == min(5, count)
        if count > 5:
            assert f"  ... and {count - 5} more fusion points failing on {output} (--json OUT keeps every point)" \
                in verdict
    worst = [float(line.split("cosine ")[1].split(" <")[0]) for line in shown if " hidden: " in line]
    every = sorted(f["excess"] for f in data["failures"] if f["output"] == "hidden")
    assert worst == sorted(worst) and len(every) == per_output["hidden"]  # worst (lowest cosine) first
    # The same graph unperturbed passes the same default gates.
    same = _with_precision(bundle, tmp_path / "same", "int8")
    assert main(["parity", str(same), "--reference", "onnxruntime", "--candidate-precision", "int8",
                 "--scenes", "0", "--quiet"]) == 0


def test_cli_flag_overrides_a_default_gate_and_the_report_says_flag(bundle, capsys):
    assert main(["parity", str(bundle), "--scenes", "0", "--atol", "0", "logits:1", "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "max abs error <= 0 on other outputs" in printed and "max abs error <= 1 on logits" in printed
    gate_lines = [line for line in printed.splitlines() if "max abs error <=" in line]
    assert gate_lines and all(line.rstrip().endswith("flag") for line in gate_lines)
    assert "cosine >= 0.9999 on every output" in printed  # not given: still the fp32 default
    failing = printed[printed.index("FAILED"):]
    assert "hidden: max abs error" in failing and "logits: max abs error" not in failing
    assert main(["parity", str(bundle), "--scenes", "0", "--atol", "hidden:x", "--quiet"]) == 2


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_parity_progress_is_one_bar_per_phase_on_a_terminal_and_silent_off_it(bundle, capsys):
    stream = _Terminal()
    run_parity(bundle, "onnxruntime", "onnxruntime", scenes=2, progress=Progress(stream=stream))
    drawn = stream.getvalue()
    for phase in ("fusion grid", "region_encoder grid", "held-out scenes", "scenes:"):
        assert phase in drawn
    assert "27/27" in drawn and "question/s" in drawn
    assert main(["parity", str(bundle), "--reference", "onnxruntime", "--scenes", "2"]) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bars, no lines
