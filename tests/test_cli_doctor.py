"""``fusionrt doctor``: text and JSON, and that it can run without importing torch."""

import json
import subprocess
import sys

from fusionrt.cli import main


def test_doctor_json_reports_backends_providers_gpus_and_tensorrt(capsys):
    assert main(["doctor", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["packages"]["onnxruntime"]["importable"] is True
    assert report["packages"]["torch"]["importable"] is True
    assert report["backends"]["onnxruntime"]["available"] is True and report["backends"]["torch"]["available"]
    assert "CPUExecutionProvider" in report["onnxruntime_providers"]
    assert set(report["gpus"]) == {"nvidia_smi", "torch_cuda"}
    assert report["gpus"]["torch_cuda"]["checked"] is True
    trt = report["packages"]["tensorrt"]
    if not trt["installed"]:
        assert report["tensorrt"] == "not installed"
    elif trt["importable"]:
        assert report["tensorrt"] == trt["version"]


def test_doctor_text(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    for line in ("onnxruntime providers:", "TensorRT:", "GPU", "backends:"):
        assert line in text


def test_doctor_without_torch_does_not_import_it():
    code = ("import sys\nfrom fusionrt.cli import main\nassert main(['doctor', '--no-torch']) == 0\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "installed, import not checked" in done.stdout and done.stdout.strip().splitlines()[-1] == "False"
