"""`fusionrt doctor --bundle`: which TensorRT engines of a bundle would load here, and why not."""

import json

import pytest
from fakes.bundles import export_tiny_bundle
from fakes.fake_cudart import FakeCudart
from fakes.fake_tensorrt import fake_build_plan, make_fake_tensorrt

from fusionrt.cli import main
from fusionrt.engine.build import BuildEnvironment, build_engines
from fusionrt.runtime.backends.tensorrt.device import cuda_device
from fusionrt.runtime.doctor import tensorrt_engines


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    bundle = export_tiny_bundle(tmp_path_factory.mktemp("doctor") / "bundle")
    cudart = FakeCudart()
    build_engines(bundle, "fp32", graphs=["fusion"],
                  environment=BuildEnvironment(make_fake_tensorrt(cudart), cuda_device(0, cudart), fake_build_plan))
    return bundle


def _packages(trt=None, lean=None):
    def status(version):
        return {"installed": version is not None, "importable": version is not None, "version": version}

    return {"tensorrt": status(trt), "tensorrt_lean": status(lean)}


def test_engine_that_matches_this_machine_would_load_and_others_say_why(bundle):
    h100 = {"found": True, **cuda_device(0, FakeCudart()).to_dict()}
    (row,) = tensorrt_engines(bundle, _packages(trt="11.4.0.106"), h100)
    assert row["loads"] is True and row["why"] == []
    orin = {"found": True, **cuda_device(0, FakeCudart(name="Orin", capability=(8, 7))).to_dict()}
    (row,) = tensorrt_engines(bundle, _packages(trt="10.3.0"), orin)
    assert row["loads"] is False
    assert any("engine 11.4.0.106, this machine 10.3.0" in why for why in row["why"])
    assert any("engine 9.0, this GPU 8.7" in why for why in row["why"])
    (row,) = tensorrt_engines(bundle, _packages(lean="11.4.0.106"), h100)
    assert row["loads"] is False and any("lean runtime" in why for why in row["why"])
    (row,) = tensorrt_engines(bundle, _packages(), h100)
    assert row["loads"] is None and row["why"] == ["cannot check: no TensorRT here"]


def test_doctor_cli_lists_the_bundle_engines(bundle, capsys):
    assert main(["doctor", "--no-torch", "--bundle", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert "engines of the bundle:" in text and "engines/fusion.fp32.nvidia-h100-80gb-hbm3" in text
    assert "CUDA device (cuda-python):" in text
    assert main(["doctor", "--no-torch", "--json", "-", "--bundle", str(bundle)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["graph"] for row in report["engines"]] == ["fusion"]
    assert set(report["cuda_device"]) >= {"found"}
