"""`fusionrt doctor`'s GPU setup: which piece is missing and the one command that fixes it, per machine kind."""

import json

import pytest

from fusionrt.cli import main
from fusionrt.runtime.gpu_setup import driver_major, gpu_fixes


def _packages(ort=True, ort_gpu=False, cuda=None, trt=False, lean=False, polygraphy=True):
    def status(present, version=None):
        return {"installed": present, "importable": present, "version": version}

    return {"onnxruntime": status(ort or ort_gpu), "onnxruntime_gpu": status(ort_gpu),
            "cuda.bindings": status(cuda is not None, cuda), "tensorrt": status(trt),
            "tensorrt_lean": status(lean), "polygraphy": status(polygraphy)}


def _commands(fixes):
    return {fix["missing"].split(" (")[0]: fix["command"] for fix in fixes}


@pytest.mark.parametrize(("cuda_version", "smi_driver", "major"), [
    (13000, None, 13), (12060, "580.1", 12), (None, "580.159.04", 13), (None, "535.104.05", 12), (None, None, None),
    (None, "470.1", None),
])
def test_driver_major_from_cuda_python_or_nvidia_smi(cuda_version, smi_driver, major):
    assert driver_major(cuda_version, smi_driver) == major


def test_cpu_dev_machine_needs_the_gpu_extra_tensorrt_and_a_device():
    fixes = gpu_fixes(_packages(cuda="13.4.4"), device_found=False, major=None, jetson=False)
    assert _commands(fixes) == {
        "a CUDA device": None,
        "onnxruntime-gpu": 'pip uninstall -y onnxruntime && pip install "fusionrt[gpu]"',
        "TensorRT": "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu12",
    }


def test_jetpack_6_gets_apt_the_jetson_zoo_and_cuda_python_12():
    fixes = gpu_fixes(_packages(ort=False, cuda="13.0.0", polygraphy=False), device_found=True, major=12,
                      jetson=True)
    commands = _commands(fixes)
    assert commands["cuda-python of CUDA 12"] == 'pip install "cuda-python>=12.6.1,<13"'
    assert commands["TensorRT"] == "sudo apt install nvidia-jetpack"
    assert "Jetson Zoo" in commands["onnxruntime-gpu"] and "uninstall" not in commands["onnxruntime-gpu"]
    assert commands["Polygraphy"] == "pip install polygraphy"


def test_cuda_13_machine_gets_the_cu13_extra_and_tensorrt_cu13():
    commands = _commands(gpu_fixes(_packages(ort=False), device_found=True, major=13, jetson=False))
    assert commands == {"cuda-python": 'pip install "cuda-python>=13,<14"',
                        "onnxruntime-gpu": 'pip install "fusionrt[gpu-cu13]"',
                        "TensorRT": "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13"}


def test_complete_setup_needs_nothing():
    full = _packages(ort_gpu=True, cuda="12.9.0", trt=True)
    assert gpu_fixes(full, device_found=True, major=12, jetson=False) == []
    lean_only = _packages(ort_gpu=True, cuda="12.9.0", lean=True)
    assert gpu_fixes(lean_only, device_found=True, major=12, jetson=False) == []


def test_doctor_prints_each_missing_piece_with_its_command(capsys):
    assert main(["doctor", "--no-torch", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(set(fix) >= {"missing", "command"} for fix in report["gpu_fixes"])
    assert main(["doctor", "--no-torch"]) == 0
    text = capsys.readouterr().out
    assert ("GPU setup: complete" in text) == (report["gpu_fixes"] == [])
    for fix in report["gpu_fixes"]:
        assert f"  {fix['missing']}: {fix['command'] or 'no command'}" in text
