"""The TensorRT caption stepper against the contract fakes (tensorrt from the 11.4 listing, cudart; the fake
engines run the graphs with onnxruntime): logits equal the ONNX Runtime stepper's at every step, beam
reordering and dropped rows included; captions equal; buffers allocated once; the profile of each step is the
decode bucket of its past length (a prompt takes the full range); refusals before any TensorRT object."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from fakes.fake_cudart import FakeCudart
from fakes.fake_tensorrt import fake_build_plan, make_fake_tensorrt

import fusionrt.caption.trt_stepper as trt_stepper
from fusionrt.caption.captioner import SHIPPED_CAPTION_BUNDLE, Captioner
from fusionrt.caption.steppers import OrtStepper
from fusionrt.data.world import generate_scene, render, split_seeds
from fusionrt.engine.build import BuildEnvironment, build_engines
from fusionrt.errors import BackendError
from fusionrt.runtime import Bundle
from fusionrt.runtime.backends.tensorrt.device import cuda_device
from fusionrt.runtime.backends.tensorrt.errors import MissingRequirementError
from fusionrt.runtime.backends.tensorrt.profiles import parse_spec

GRAPHS = ["caption_visual", "caption_step"]


def build(path: Path, specs=()) -> Path:
    shutil.copytree(SHIPPED_CAPTION_BUNDLE, path)
    cudart = FakeCudart()
    build_engines(path, "fp32", graphs=GRAPHS, profile_specs=specs,
                  environment=BuildEnvironment(make_fake_tensorrt(cudart), cuda_device(0, cudart), fake_build_plan))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("trt-caption") / "bundle")


def install(monkeypatch, cudart=None):
    cudart = cudart or FakeCudart()
    trt = make_fake_tensorrt(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_stepper, "import_cudart", lambda: cudart)
    return trt, cudart


@pytest.fixture(scope="module")
def scenes():
    return [render(generate_scene(seed)) for seed in split_seeds("heldout", 4)]


@pytest.fixture(scope="module")
def reference(built):
    return Captioner(built)


def test_logits_equal_onnxruntime_at_every_step_with_reordering_and_no_allocation(built, scenes, reference,
                                                                                  monkeypatch):
    _, cudart = install(monkeypatch)
    bundle = Bundle.open(built)
    stepper, ort = trt_stepper.TensorRTStepper(bundle), OrtStepper(bundle)
    allocated, pinned = cudart.mallocs, set(cudart._pinned)
    visual, mask = reference.visual_inputs(scenes[:3])
    for s in (stepper, ort):
        s.start(visual, mask)
    ids = np.full((3, 1), int(bundle.model["bos_id"]), np.int64)
    for position in range(20):
        got, expected = stepper.step(ids), ort.step(ids)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        ids = expected[:, -1].argmax(-1)[:, None].astype(np.int64)
        # beam-style reordering with a repeated row, then a dropped row
        rows = {6: np.array([2, 0, 0]), 12: np.array([1, 2])}.get(position)
        if rows is not None:
            for s in (stepper, ort):
                s.select(rows)
            ids = ids[rows]
    assert stepper.past_length == ort.past_length == 20 and stepper.batch == 2
    # every buffer was allocated at construction, none per step or select (device and pinned host)
    assert (cudart.mallocs, set(cudart._pinned)) == (allocated, pinned)
    # past lengths 0..15 ran on the first decode bucket, 16..19 on the second; each context stays on its profile
    assert {p: c._runs for p, c in stepper.stepper.contexts.items()} == {0: 16, 1: 4}
    assert all(c.active_optimization_profile == p for p, c in stepper.stepper.contexts.items())
    stepper.close()


def test_a_prompt_runs_on_the_full_range_profile(built, scenes, reference, monkeypatch):
    install(monkeypatch)
    bundle = Bundle.open(built)
    stepper, ort = trt_stepper.TensorRTStepper(bundle), OrtStepper(bundle)
    visual, mask = reference.visual_inputs(scenes[:2])
    prompt = np.array([[2, 10, 11, 12], [2, 13, 14, 15]], np.int64)
    prompt_mask = np.array([[True] * 4, [True, True, True, False]])
    for s in (stepper, ort):
        s.start(visual, mask)
    np.testing.assert_allclose(stepper.step(prompt, prompt_mask), ort.step(prompt, prompt_mask), atol=1e-5)
    assert list(stepper.stepper.contexts) == [3]  # S=4: only the last (full-range) profile covers it
    one = np.array([[20], [21]], np.int64)
    np.testing.assert_allclose(stepper.step(one), ort.step(one), atol=1e-5)
    assert sorted(stepper.stepper.contexts) == [0, 3]
    stepper.close()


def test_captions_on_tensorrt_equal_onnxruntime_greedy_and_beam(built, scenes, reference, monkeypatch):
    install(monkeypatch)
    captioner = Captioner(built, backend="tensorrt")
    assert captioner.caption_many(scenes) == reference.caption_many(scenes)
    assert captioner.caption_many(scenes[:2], beam=3) == reference.caption_many(scenes[:2], beam=3)
    captioner.stepper.close()


def test_shapes_outside_every_profile_are_refused_naming_the_profiles(tmp_path, scenes, reference, monkeypatch):
    narrow = build(tmp_path / "narrow", [parse_spec("P=0:2:4,S=1")])
    install(monkeypatch)
    stepper = trt_stepper.TensorRTStepper(Bundle.open(narrow))
    stepper.start(*reference.visual_inputs(scenes[:1]))
    for _ in range(5):
        stepper.step(np.array([[2]], np.int64))
    with pytest.raises(BackendError, match=r"profile 0: .*past_key \[2, 1, 4, 0, 32\]\.\.\[2, 16, 4, 4, 32\]"):
        stepper.step(np.array([[2]], np.int64))  # P = 5
    stepper.close()


def test_no_device_is_refused_before_tensorrt_is_touched(built, monkeypatch):
    install(monkeypatch, FakeCudart(devices=0))  # the fake Runtime raises FakeCrash if it is ever created
    with pytest.raises(MissingRequirementError, match="CUDA"):
        trt_stepper.TensorRTStepper(Bundle.open(built))


def test_an_engine_output_larger_than_the_contract_is_refused_before_it_runs(built, scenes, reference, monkeypatch):
    trt, _ = install(monkeypatch)
    stepper = trt_stepper.TensorRTStepper(Bundle.open(built))
    stepper.start(*reference.visual_inputs(scenes[:1]))
    real = trt.IExecutionContext.get_tensor_shape
    monkeypatch.setattr(trt.IExecutionContext, "get_tensor_shape",
                        lambda self, name: (1, 1, 999) if name == "logits" else real(self, name))
    with pytest.raises(BackendError, match=r"output logits .* shape \[1, 1, 128\].*received \[1, 1, 999\]"):
        stepper.step(np.array([[2]], np.int64))
    assert not any(c._runs for c in stepper.stepper.contexts.values())  # refused before the enqueue
    stepper.close()
