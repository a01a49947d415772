"""``fusionrt tune`` and ``precision="auto"``: candidates measured against their budgets, timed, the fastest
recorded in the manifest, and Session / Answerer running what was recorded.

The shipped model's fp32 bundle on onnxruntime and OpenVINO, 20 held-out scenes (speed of the test,
not of the choice: timings on a shared 2-core machine decide nothing here, only the bookkeeping does).
"""

import json
import shutil

import numpy as np
import pytest

from fusionrt.bench import tune as choose
from fusionrt.cli import main
from fusionrt.data.world import generate_scene, render
from fusionrt.export import export_checkpoint
from fusionrt.parity import fusion_feed
from fusionrt.parity.budgets import Budget
from fusionrt.runtime import Bundle, BundleError, Session
from fusionrt.runtime.auto import machine_fingerprint
from fusionrt.runtime.cpu import parse_cpuinfo, this_cpu

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The shipped model's bundle after `fusionrt tune` recorded its choice; the CLI's JSON."""
    root = tmp_path_factory.mktemp("auto")
    bundle = export_checkpoint(None, root / "bundle")
    status = main(["tune", str(bundle), "--heldout-scenes", "20", "--batches", "1,4", "--threads", "2",
                   "--json", str(root / "tune.json"), "-q"])
    assert status == 0
    return bundle, json.loads((root / "tune.json").read_text())


def test_choice_is_the_fastest_candidate_within_budget_and_recorded(tuned):
    bundle, result = tuned
    section = Bundle.open(bundle).manifest["auto"]  # hashes verified: the manifest was rewritten properly
    assert section == result
    by_label = {(c["backend"], c["precision"], c["options"].get("hint")): c for c in section["candidates"]}
    assert set(by_label) == {("onnxruntime", "fp32", None), ("openvino", "fp32", "f32"),
                             ("openvino", "fp32", "bf16")}
    timed = [c for c in section["candidates"] if c["passed"]]
    assert len(timed) >= 2
    for c in timed:
        assert set(c["ms"]) == {"1", "4"} and all(v > 0 for v in c["ms"].values())
        assert c["score_ms"] == pytest.approx(float(np.sqrt(c["ms"]["1"] * c["ms"]["4"])), rel=1e-3)
        floor = c["heldout"]["budget"]["min_agreement"] if c["options"].get("hint") == "bf16" else 0.999
        assert c["heldout"]["agreement"] >= floor and c["heldout"]["questions"] > 100
    best = min(timed, key=lambda c: c["score_ms"])
    assert (section["backend"], section["precision"], section["options"]) == \
        (best["backend"], best["precision"], best["options"])
    assert section["machine"] == machine_fingerprint()


def test_bf16_hint_is_timed_only_where_the_cpu_runs_it(tuned):
    _, section = tuned
    bf16 = next(c for c in section["candidates"] if c["options"].get("hint") == "bf16")
    ran_bf16 = bf16["ran"]["inference_precision"] == "bf16"
    assert bool(bf16["ms"]) == ran_bf16
    if not ran_bf16:
        assert "bf16 hint not taken" in bf16["note"] and not bf16["passed"]


def test_session_and_answerer_run_the_recorded_choice(tuned):
    """Whatever this CPU made the choice (bf16 on a CPU with AVX-512 BF16 or AMX, f32 or onnxruntime elsewhere),
    Session and Answerer run exactly what was recorded, within that path's tolerance."""
    from fusionrt.app import Answerer

    bundle, section = tuned
    session = Session(bundle, "auto", precision="auto")
    assert (session.backend, session.precision) == (section["backend"], section["precision"])
    assert session.describe()["auto"] == {"ms": section["ms"], "same_machine": True}
    fastest_openvino = min((c for c in section["candidates"] if c["backend"] == "openvino" and c["passed"]),
                           key=lambda c: c["score_ms"])
    on_openvino = Session(bundle, "openvino", precision="auto")
    assert on_openvino.backend == "openvino" and on_openvino.runner.hint == fastest_openvino["options"]["hint"]
    feed = fusion_feed(session.runner.graph, 2, 6, 3, np.random.default_rng(0))
    atol = 1e-1 if section["options"].get("hint") == "bf16" else 1e-4  # BF16 matmuls: 8 mantissa bits
    np.testing.assert_allclose(session.run(feed)["logits"], Session(bundle).run(feed)["logits"], atol=atol)
    answerer = Answerer(str(bundle), backend="auto", precision="auto")
    assert answerer.pipeline.fusion.backend == section["backend"]
    assert answerer.ask(render(generate_scene(11)), "How many objects are there?")[0] in answerer.pipeline.answers


AVX2_EPYC = parse_cpuinfo("model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse avx fma avx2\n")
BF16_EPYC = parse_cpuinfo("model name\t: AMD EPYC 9B14\nflags\t\t: avx fma avx2 avx512f avx512_vnni avx512_bf16\n")


def test_bf16_hint_is_not_tried_where_the_cpu_reports_no_bf16(tuned, tmp_path):
    """The AVX2-only branch, on any machine: the CPU is reported through the seam, not read from this one."""
    bundle, _ = tuned
    copy = shutil.copytree(bundle, tmp_path / "copy")
    section = choose.choose_path(copy, backends=["openvino"], heldout_scenes=8, batches=(1,), blocks=2,
                                 record=False, cpu=AVX2_EPYC)
    bf16 = next(c for c in section["candidates"] if c["options"].get("hint") == "bf16")
    assert "bf16 hint skipped: this CPU reports no AVX-512 BF16" in bf16["note"] and "AMD EPYC 7B12" in bf16["note"]
    assert not bf16["heldout"] and not bf16["ms"] and not bf16["passed"]
    assert section["options"]["hint"] == "f32"
    assert section["machine"]["cpu"] == "AMD EPYC 7B12" and section["machine"]["cpu_flags"] == ["avx2"]


def test_bf16_hint_reported_by_the_cpu_is_measured_and_timed_only_if_openvino_ran_it(tuned, tmp_path):
    """The BF16 branch, on any machine: the hint is measured; timed only where OpenVINO really ran BF16 (never on
    a CPU without BF16, whatever the report said)."""
    bundle, _ = tuned
    copy = shutil.copytree(bundle, tmp_path / "copy")
    section = choose.choose_path(copy, backends=["openvino"], heldout_scenes=8, batches=(1,), blocks=2,
                                 record=False, cpu=BF16_EPYC)
    bf16 = next(c for c in section["candidates"] if c["options"].get("hint") == "bf16")
    ran = bf16["ran"]["inference_precision"]
    assert ran in ("bf16", "f32") and (ran == "f32" if not this_cpu().bf16 else True)
    assert bool(bf16["ms"]) == (ran == "bf16" and bf16["passed"])
    if ran != "bf16":
        assert "bf16 hint not taken on this CPU (ran f32)" in bf16["note"]


@pytest.mark.parametrize("hint", ["f32", "bf16"])
def test_a_recorded_openvino_choice_runs_with_its_hint(tuned, tmp_path, hint):
    """Both branches of the choice (bf16 chosen, f32 chosen) through the recorded section, on any machine; what
    OpenVINO then ran is reported, never the wish (no BF16 on a CPU without it)."""
    from fusionrt.bundle.transaction import update_manifest

    bundle, section = tuned
    copy = shutil.copytree(bundle, tmp_path / "copy")
    candidates = [dict(c) for c in section["candidates"]]
    for c in candidates:
        if c["backend"] == "openvino":
            c.update(passed=True, score_ms=1.0 if c["options"]["hint"] == hint else 2.0, ms={"1": 1.0})
    chosen = next(c for c in candidates if c["backend"] == "openvino" and c["options"]["hint"] == hint)
    update_manifest(copy, sections={"auto": {**section, **{k: chosen[k] for k in ("backend", "precision", "options",
                                                                                  "ms", "score_ms")},
                                             "candidates": candidates}})
    for backend in ("auto", "openvino"):
        session = Session(copy, backend, precision="auto")
        assert session.backend == "openvino" and session.runner.hint == hint
        ran = session.describe()["inference_precision"]
        assert ran == "f32" if hint == "f32" or not this_cpu().bf16 else ran in ("bf16", "f32")


def test_a_candidate_over_its_budget_is_never_chosen(tuned, monkeypatch, tmp_path):
    bundle, _ = tuned
    strict = Budget(max_drop_points=0.0, min_agreement=1.01)  # no path can pass on openvino
    real = choose.budget_for
    monkeypatch.setattr(choose, "budget_for", lambda p, o: strict if "hint" in o else real(p, o))
    copy = shutil.copytree(bundle, tmp_path / "copy")
    section = choose.choose_path(copy, heldout_scenes=20, batches=(1,), blocks=2)
    assert (section["backend"], section["precision"]) == ("onnxruntime", "fp32")
    dropped = [c for c in section["candidates"] if c["backend"] == "openvino" and c["heldout"]]
    assert dropped and all(not c["passed"] and "agreement" in c["note"] and not c["ms"] for c in dropped)
    with pytest.raises(BundleError, match="a candidate on backend 'openvino' within budget"):
        Session(copy, "openvino", precision="auto")


def test_auto_without_a_recorded_choice_says_how_to_make_one(tuned, tmp_path):
    bundle, _ = tuned
    copy = shutil.copytree(bundle, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["auto"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest.json auto: expected a choice recorded by `fusionrt tune"):
        Session(copy, precision="auto")


def test_a_choice_from_another_machine_is_flagged(tuned, tmp_path):
    from fusionrt.bundle.transaction import update_manifest

    bundle, section = tuned
    copy = shutil.copytree(bundle, tmp_path / "copy")
    update_manifest(copy, sections={"auto": {**section, "machine": {**section["machine"], "cpu": "other"}}})
    assert Session(copy, "auto", precision="auto").describe()["auto"]["same_machine"] is False


def test_bench_auto_records_a_choice_beside_the_latency_table(tuned, tmp_path):
    """Last in this module: it rewrites the shared bundle's choice."""
    bundle, _ = tuned
    out = tmp_path / "bench.json"
    before = Bundle.open(bundle).manifest["auto"]["created_utc"]
    assert main(["bench", str(bundle), "--shapes", "1,8,4", "--runs", "5", "--no-app", "--threads", "2", "--auto",
                 "--auto-heldout-scenes", "20", "--json", str(out), "-q"]) == 0
    report = json.loads(out.read_text())
    recorded = Bundle.open(bundle).manifest["auto"]
    assert report["auto"] == recorded and recorded["created_utc"] >= before
    assert any(c["passed"] for c in recorded["candidates"])
    assert {r["backend"] for r in report["rows"]} == {"onnxruntime", "torch"}  # torch: the eager baseline
