"""The fakes are faithful where it matters: unlisted TensorRT names raise, fake cudart names are real ones."""

import pytest
from fakes.fake_cudart import FakeCudart
from fakes.fake_tensorrt import FakeCrash, make_fake_tensorrt, read_listing


def test_fake_tensorrt_has_exactly_the_listed_names():
    trt = make_fake_tensorrt(FakeCudart())
    _, members = read_listing("trt_11.4.0.106_full_stubbed.txt")
    assert {m.name for m in trt.DataType} == set(members["DataType"])
    with pytest.raises(AttributeError):
        trt.BuilderFlag.FP16  # removed in 11  # noqa: B018
    with pytest.raises(AttributeError):
        trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # noqa: B018
    with pytest.raises(AttributeError):
        trt.IInt8EntropyCalibrator2  # noqa: B018
    engine = trt.ICudaEngine._make({"tensors": [], "profiles": []})
    with pytest.raises(AttributeError, match="not in the listing"):
        engine.device_memory_size  # noqa: B018 - 10.x only
    with pytest.raises(NotImplementedError):
        engine.serialize()  # listed, no behaviour in the fake


def test_fake_lean_runtime_has_no_builder():
    lean = make_fake_tensorrt(FakeCudart(), listing="trt_lean_11.4.0.106.txt", module_name="tensorrt_lean")
    assert not hasattr(lean, "Builder") and not hasattr(lean, "OnnxParser") and hasattr(lean, "Runtime")


def test_fake_runtime_without_device_stands_for_the_crash():
    trt = make_fake_tensorrt(FakeCudart(devices=0))
    with pytest.raises(FakeCrash):
        trt.Runtime(trt.Logger())


def test_fake_cudart_names_exist_in_real_cuda_python():
    runtime = pytest.importorskip("cuda.bindings.runtime")
    public = [n for n in vars(FakeCudart) if n.startswith("cuda")]
    assert len(public) > 15
    assert [n for n in public if not hasattr(runtime, n)] == []
    for enum_name in ("cudaMemcpyKind", "cudaStreamCaptureMode", "cudaError_t"):
        fake, real = getattr(FakeCudart, enum_name), getattr(runtime, enum_name)
        for member in fake:
            assert int(getattr(real, member.name)) == int(member)
    assert int(runtime.cudaStreamNonBlocking) == FakeCudart.cudaStreamNonBlocking


def test_fake_cudart_calls_take_the_real_parameters():
    import inspect

    runtime = pytest.importorskip("cuda.bindings.runtime")
    for name, method in vars(FakeCudart).items():
        if name.startswith("cuda") and callable(method) and not isinstance(method, type):
            fake = list(inspect.signature(method).parameters)[1:]  # without self
            real = list(inspect.signature(getattr(runtime, name)).parameters)
            assert len(fake) == len(real), (name, fake, real)
