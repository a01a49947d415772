"""The `polygraphy run` cross-check command: the ONNX Runtime half runs here on our graph; the TensorRT half's
options are accepted by Polygraphy's argument parser (it stops only because TensorRT is not installed)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes.bundles import export_tiny_bundle

from fusionrt.engine.crosscheck import polygraphy_command
from fusionrt.runtime import Bundle
from fusionrt.runtime.backends.tensorrt.profiles import parse_spec, profiles_for

POLYGRAPHY = shutil.which("polygraphy") or str(Path(sys.executable).parent / "polygraphy")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return Bundle.open(export_tiny_bundle(tmp_path_factory.mktemp("pg") / "bundle"))


def run(command):
    return subprocess.run([POLYGRAPHY, *command[1:]], capture_output=True, text=True, timeout=180, check=False)


def test_command_carries_the_profile_and_valid_integer_ranges(bundle):
    graph = bundle.graph("fusion")
    (profile,) = profiles_for(graph, [parse_spec("B=2:4:8")])
    command = polygraphy_command(bundle, "fusion", "fp32", profile)
    text = " ".join(command)
    assert "--trt --strongly-typed" in text
    assert "--trt-min-shapes input_ids:[2,1]" in text and "--trt-max-shapes input_ids:[8,16]" in text
    assert "--input-shapes input_ids:[4,8]" in text and "--val-range input_ids:[0,49]" in text


@pytest.mark.skipif(not Path(POLYGRAPHY).exists(), reason="polygraphy CLI not installed")
def test_onnxrt_half_passes_and_trt_options_parse(bundle):
    done = run(polygraphy_command(bundle, "fusion", "fp32", onnxrt_only=True))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASSED" in done.stdout + done.stderr
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed: the full command would run")
    except ImportError:
        pass
    done = run(polygraphy_command(bundle, "fusion", "fp32"))
    output = done.stdout + done.stderr
    assert "unrecognized arguments" not in output
    assert "No module named 'tensorrt'" in output
