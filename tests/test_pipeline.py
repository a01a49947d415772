"""fusionrt pipeline on the shipped model: stages, reuse by key, gates and --junit, refusals, lock, faults.

One module-scoped run (fp32 only, few scenes, 5 timed calls) builds the bundle; the other tests rerun
on it or on copies of it. The SIGKILL test runs the real CLI in a subprocess and kills it mid-stage.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fusionrt.bundle.source import checkpoint_files_sha256
from fusionrt.cli import main
from fusionrt.model import SHIPPED_CHECKPOINT
from fusionrt.pipeline import Gate, bundle_lock, write_junit
from fusionrt.runtime import Bundle

FAST = ["--precisions", "fp32", "--parity-scenes", "8", "--heldout-scenes", "30", "--bench-runs", "5", "-q"]
REPO = Path(__file__).resolve().parents[1]


def _stages(bundle):
    return Bundle.open(bundle).manifest["pipeline"]["stages"]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    out, junit = root / "bundle", root / "junit.xml"
    assert main(["pipeline", "--out", str(out), *FAST, "--junit", str(junit)]) == 0
    return out, junit


@pytest.fixture
def copy(first, tmp_path):
    return Path(shutil.copytree(first[0], tmp_path / "bundle"))


def _run(out, *extra, capsys=None):
    code = main(["pipeline", "--out", str(out), *FAST, *extra])
    return code, (capsys.readouterr() if capsys is not None else None)


def test_first_run_writes_a_verified_bundle_with_report(first):
    out, junit = first
    bundle = Bundle.open(out)  # every file's hash, report and plots included
    files = bundle.manifest["files"]
    for name in ("fusion.onnx", "parity.json", "accuracy.json", "bench.json", "report.md", "report.json",
                 "report-latency.png", "report-speedup.png", "report-errors.png", "report-accuracy.png",
                 "report-peak.png"):
        assert name in files, name
    assert set(_stages(out)) == {"export", "parity", "bench", "report"}
    report = json.loads((out / "report.json").read_text())
    assert {g["name"]: g["status"] for g in report["gates"]} == {
        "export verification": "passed", "tensorrt engines": "skipped", "parity fp32 onnxruntime": "passed"}
    bench = json.loads((out / "bench.json").read_text())
    assert {(r["backend"], r["precision"]) for r in bench["rows"]} == {("torch", "fp32"), ("onnxruntime", "fp32")}
    text = (out / "report.md").read_text()
    assert "All gates passed" in text and "![latency vs shape](report-latency.png)" in text
    cases = {c.get("name"): c for c in ET.parse(junit).getroot()}
    assert set(cases) == {"export verification", "tensorrt engines", "parity fp32 onnxruntime"}
    assert cases["tensorrt engines"].find("skipped") is not None
    assert cases["parity fp32 onnxruntime"].find("failure") is None


def test_rerun_with_unchanged_inputs_reuses_every_stage(copy, capsys):
    before = _stages(copy)
    mtimes = {f.name: f.stat().st_mtime_ns for f in copy.iterdir()}
    code, _ = _run(copy, capsys=capsys)
    assert code == 0
    assert _stages(copy) == before
    assert {f.name: f.stat().st_mtime_ns for f in copy.iterdir()} == mtimes  # nothing rewritten


def test_a_changed_option_redoes_exactly_the_affected_stages(copy):
    before = _stages(copy)
    assert main(["pipeline", "--out", str(copy), *FAST[:-1], "--parity-scenes", "6", "-q"]) == 0
    after = _stages(copy)
    assert after["export"] == before["export"] and after["bench"] == before["bench"]
    assert after["parity"]["key"] != before["parity"]["key"]
    assert after["report"]["key"] != before["report"]["key"]
    assert json.loads((copy / "accuracy.json").read_text())["scenes"] == 6


def test_a_bundle_of_another_checkpoint_is_refused_without_force(copy, tmp_path, capsys):
    other = Path(shutil.copytree(SHIPPED_CHECKPOINT, tmp_path / "other"))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config, indent=1))  # same model, different file hash
    manifest = (copy / "manifest.json").read_bytes()
    assert main(["pipeline", "--checkpoint", str(other), "--out", str(copy), *FAST]) == 2
    err = capsys.readouterr().err
    assert "another checkpoint" in err and "--force" in err
    assert (copy / "manifest.json").read_bytes() == manifest


def test_a_directory_of_other_files_is_refused(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["pipeline", "--out", str(tmp_path / "mine"), *FAST]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_second_pipeline_on_a_locked_bundle_refuses_clearly(copy, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fusionrt.pipeline import bundle_lock\n"
         "with bundle_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n", str(copy)],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["pipeline", "--out", str(copy), *FAST]) == 2
        assert f"locked by pipeline pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    with bundle_lock(copy):  # released when its holder died
        pass


def test_a_failing_gate_stops_with_exit_1_naming_it(copy, tmp_path, capsys, monkeypatch):
    from fusionrt.parity import gates

    monkeypatch.setitem(gates.FP32_GATES, "max_abs", 1e-12)  # the pipeline's parity gates are the parity command's
    before = _stages(copy)
    junit = tmp_path / "junit.xml"
    assert main(["pipeline", "--out", str(copy), *FAST, "--junit", str(junit)]) == 1
    err = capsys.readouterr().err
    assert "gate failed: parity fp32 onnxruntime" in err and "max abs error" in err
    cases = {c.get("name"): c for c in ET.parse(junit).getroot()}
    assert cases["parity fp32 onnxruntime"].find("failure") is not None
    assert cases["export verification"].find("failure") is None
    assert _stages(copy)["parity"] == before["parity"]  # the failed stage is not recorded as done


def _forget_report(bundle):
    """Drop the report stage's record, so a rerun redoes only that (cheap) stage."""
    from fusionrt.bundle.transaction import update_manifest

    section = Bundle.open(bundle).manifest["pipeline"]
    del section["stages"]["report"]
    update_manifest(bundle, sections={"pipeline": section})


def test_a_write_error_names_the_path_and_keeps_the_bundle(copy, capsys, monkeypatch):
    _forget_report(copy)
    manifest = (copy / "manifest.json").read_bytes()
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if str(dst).startswith(str(copy)):
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    assert main(["pipeline", "--out", str(copy), *FAST]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(copy) in err
    monkeypatch.setattr(os, "replace", real_replace)
    assert (copy / "manifest.json").read_bytes() == manifest
    Bundle.open(copy)  # previous state intact and verified


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_bundle_names_the_path(copy, capsys):
    _forget_report(copy)
    manifest = (copy / "manifest.json").read_bytes()
    os.chmod(copy, 0o555)
    try:
        assert main(["pipeline", "--out", str(copy), *FAST]) == 2
        assert str(copy) in capsys.readouterr().err
    finally:
        os.chmod(copy, 0o755)
    assert (copy / "manifest.json").read_bytes() == manifest


def test_sigkill_mid_stage_then_rerun_redoes_that_stage(copy):
    """Kill a real run (subprocess) while its parity stage runs; the rerun reuses what was verified and
    redoes parity."""
    before = _stages(copy)
    command = [sys.executable, "-m", "fusionrt", "pipeline", "--out", str(copy), *FAST[:-1], "--parity-scenes", "6"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        for line in proc.stderr:
            if "[6/8] parity: running" in line:
                time.sleep(1.0)  # inside run_parity
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _stages(copy) == before  # the killed stage was not recorded; the bundle still verifies
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "[1/8] export: reused" in rerun.stderr and "[7/8] bench: reused" in rerun.stderr
    assert "[6/8] parity: ran" in rerun.stderr
    assert _stages(copy)["parity"]["key"] != before["parity"]["key"]
    assert not any(copy.glob(".pipeline-stage*"))


def test_junit_counts(tmp_path):
    gates = [Gate("a", "parity", "passed"), Gate("b", "parity", "failed", "too far", "details"),
             Gate("c", "engines", "skipped", "no GPU")]
    root = ET.parse(write_junit(tmp_path / "j.xml", gates)).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    assert root.find("testcase[@name='b']/failure").get("message") == "too far"


def test_one_run_verifies_the_bundle_once_per_stage_and_builds_one_reference(tmp_path, monkeypatch):
    """fp16's accuracy budget, the accuracy tables and parity share one held-out set and one PyTorch reference:
    one torch Session per graph for the whole run (the code before gave one per consumer and per candidate),
    and no stage re-hashes the bundle more than once."""
    import fusionrt.pipeline.run as pipeline_run
    from fusionrt.parity import heldout as heldout_module
    from fusionrt.runtime import session as session_module

    verified, torch_sessions, heldouts, per_stage, current = [], [], [], {}, [""]
    real_verify, real_heldout = Bundle.verify, heldout_module.Heldout.__init__
    real_init = session_module.Session.__init__
    real_stage = pipeline_run._Run.stage

    def verify(self):
        verified.append(self.path)
        return real_verify(self)

    def session_init(self, bundle, backend="onnxruntime", graph="fusion", *args, **kwargs):
        if backend == "torch" and current[0] != "export":  # export verifies against the module it exported
            torch_sessions.append(graph)
        return real_init(self, bundle, backend, graph, *args, **kwargs)

    def heldout_init(self, *args, **kwargs):
        heldouts.append(args)
        return real_heldout(self, *args, **kwargs)

    def stage(self, index, name, *args, **kwargs):
        before, current[0] = len(verified), name
        try:
            return real_stage(self, index, name, *args, **kwargs)
        finally:
            per_stage[name] = len(verified) - before

    monkeypatch.setattr(Bundle, "verify", verify)
    monkeypatch.setattr(session_module.Session, "__init__", session_init)
    monkeypatch.setattr(heldout_module.Heldout, "__init__", heldout_init)
    monkeypatch.setattr(pipeline_run._Run, "stage", stage)
    out = tmp_path / "bundle"
    assert main(["pipeline", "--out", str(out), "--precisions", "fp32,fp16", "--calib-samples", "40",
                 "--parity-scenes", "6", "--heldout-scenes", "12", "--skip-bench", "-q"]) == 0
    assert set(per_stage) == {"export", "calibrate", "fp16", "parity", "report"}
    assert max(per_stage.values()) <= 1, per_stage
    assert len(heldouts) == 1
    assert sorted(torch_sessions) == ["fusion", "region_encoder"]


@pytest.mark.parametrize("name", ["small", "match", "caption-small"])
def test_a_changed_weights_file_of_any_task_changes_the_checkpoint_fingerprint(name, tmp_path):
    # The fingerprint keys every pipeline stage: weights left out of it (the match model's were) let a rerun after
    # retraining reuse the stages of the old weights.
    copy = tmp_path / name
    shutil.copytree(SHIPPED_CHECKPOINT.parent / name, copy)
    before = checkpoint_files_sha256(copy)
    for weights in sorted(copy.glob("*.safetensors")):
        assert weights.name in before
        weights.write_bytes(weights.read_bytes() + b" ")
        after = checkpoint_files_sha256(copy)
        assert after[weights.name] != before[weights.name]
        before = after
