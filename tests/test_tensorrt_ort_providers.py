"""ONNX Runtime providers: short names, TensorRT provider options from the manifest, option-name validation,
and no silent fallback (this CPU-only onnxruntime cannot give CUDA; onnxruntime-gpu's stdout line is simulated)."""

import os
import warnings

import numpy as np
import pytest
from fakes.bundles import export_tiny_bundle

import fusionrt.runtime.backends.onnxrt as onnxrt
from fusionrt.parity import fusion_feed
from fusionrt.runtime import BackendError, Bundle, Session
from fusionrt.runtime.backends.ort_providers import TENSORRT, check_providers, tensorrt_options, validate_options


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return export_tiny_bundle(tmp_path_factory.mktemp("ort") / "bundle")


def test_cpu_short_name_runs_and_reports_its_provider(bundle):
    with Session(bundle, providers=["cpu"]) as session, Session(bundle) as default:
        assert session.describe()["providers"] == ["CPUExecutionProvider"]
        feed = fusion_feed(session.runner.graph, 3, 5, 2, np.random.default_rng(0))
        np.testing.assert_array_equal(session.run(feed)["logits"], default.run(feed)["logits"])


def test_cuda_on_cpu_only_onnxruntime_is_refused_naming_the_provider(bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendError, match=r"without CUDAExecutionProvider .*not in this onnxruntime's available "
                                           r"providers .*fusionrt\[gpu\]"):
        Session(bundle, providers=["cuda", "cpu"])


def test_allow_fallback_warns_and_runs_on_cpu(bundle):
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider unavailable"), \
            Session(bundle, providers=["cuda", "cpu"], allow_fallback=True) as session:
        assert session.describe()["providers"] == ["CPUExecutionProvider"]


def test_misspelt_tensorrt_option_is_refused_by_our_validation(bundle):
    with pytest.raises(BackendError, match=r"'trt_fp16_enabled' \(did you mean 'trt_fp16_enable'\?\)"):
        Session(bundle, providers=["tensorrt", "cuda", "cpu"], provider_options={"tensorrt": {"trt_fp16_enabled": 1}})
    with pytest.raises(BackendError, match="names among"):
        Session(bundle, providers=["tensorrt-gpu"])


def test_tensorrt_provider_options_come_from_the_manifest(bundle):
    opened = Bundle.open(bundle)
    graph = opened.graph("fusion")
    options = tensorrt_options(opened, graph, "fp32")
    # tiny export: B 1/1/16, T 1/8/16, M 1/4/8, visual_dim 12
    assert options["trt_profile_min_shapes"] == "input_ids:1x1,text_mask:1x1,visual_feats:1x1x12,visual_mask:1x1"
    assert options["trt_profile_opt_shapes"] == "input_ids:1x8,text_mask:1x8,visual_feats:1x4x12,visual_mask:1x4"
    assert options["trt_profile_max_shapes"] == "input_ids:16x16,text_mask:16x16,visual_feats:16x8x12,visual_mask:16x8"
    assert options["trt_engine_cache_path"].startswith(str(opened.path))
    assert options["trt_fp16_enable"] is False and tensorrt_options(opened, graph, "fp16")["trt_fp16_enable"] is True
    assert options["trt_int8_enable"] is False and tensorrt_options(opened, graph, "int8")["trt_int8_enable"] is True


def test_silent_fallback_of_onnxruntime_gpu_is_caught_with_its_printed_reason(bundle, monkeypatch):
    """onnxruntime-gpu on a machine without CUDA: lists the GPU providers, prints one line from C++, runs on CPU."""
    import onnxruntime

    real = onnxrt.session_from_onnx
    line = b"EP Error: libcudart.so.12: cannot open shared object file when using ['TensorrtExecutionProvider']\n" \
           b"Falling back to ['CPUExecutionProvider'] and retrying.\n"

    def like_onnxruntime_gpu(path, *, providers=None, provider_options=None, **options):
        os.write(1, line)  # native code writes below sys.stdout
        return real(path, providers=["CPUExecutionProvider"], **options)

    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    monkeypatch.setattr(onnxrt, "session_from_onnx", like_onnxruntime_gpu)
    with pytest.raises(BackendError) as info:
        Session(bundle, providers=["tensorrt", "cuda"])
    assert "without TensorrtExecutionProvider, CUDAExecutionProvider" in str(info.value)
    assert "libcudart.so.12: cannot open shared object file" in str(info.value)


def test_check_providers_accepts_what_was_asked_and_ignores_cpu():
    check_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"],
                    ["TensorrtExecutionProvider", "CPUExecutionProvider"], [], [], allow_fallback=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_providers(["CPUExecutionProvider"], ["CPUExecutionProvider"], [], [], allow_fallback=True)


def test_fp16_keeps_layer_norms_in_fp32_and_bf16_is_a_known_option(bundle):
    """Defect 7: trt_fp16_enable on the provider's weakly typed network let TensorRT run in FP16 the LayerNorms our
    fp16 graph keeps in FP32 (trt_layer_norm_fp32_fallback was not set), and trt_bf16_enable was refused."""
    opened = Bundle.open(bundle)
    graph = opened.graph("fusion")
    assert tensorrt_options(opened, graph, "fp16")["trt_layer_norm_fp32_fallback"] is True
    assert tensorrt_options(opened, graph, "fp32")["trt_layer_norm_fp32_fallback"] is False
    validate_options(TENSORRT, {"trt_bf16_enable": True, "trt_layer_norm_fp32_fallback": True})
