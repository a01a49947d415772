"""The Answerer on the TensorRT backend (contract fakes): both graphs of a shipped-model bundle run through
engines recorded by `build_engines`, and answers equal those of the onnxruntime Answerer."""

import sys

import numpy as np
import pytest
from fakes.fake_cudart import FakeCudart
from fakes.fake_tensorrt import fake_build_plan, make_fake_tensorrt

import fusionrt.runtime.backends.tensorrt.runner as backend
from fusionrt.engine.build import BuildEnvironment, build_engines
from fusionrt.runtime.backends.tensorrt.device import cuda_device


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from fusionrt.export import export_checkpoint

    path = export_checkpoint(None, tmp_path_factory.mktemp("app") / "bundle")
    cudart = FakeCudart()
    built = build_engines(path, "fp32", environment=BuildEnvironment(make_fake_tensorrt(cudart),
                                                                     cuda_device(0, cudart), fake_build_plan))
    assert sorted(b.entry.graph for b in built) == ["fusion", "region_encoder"]
    return path


def test_answerer_on_tensorrt_gives_the_onnxruntime_answers(bundle, monkeypatch):
    from fusionrt.app import Answerer
    from fusionrt.data.questions import questions_for
    from fusionrt.data.world import generate_scene, render

    cudart = FakeCudart()
    trt = make_fake_tensorrt(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(backend, "import_cudart", lambda: cudart)
    on_trt, on_ort = Answerer(bundle, backend="tensorrt"), Answerer(bundle)
    for seed in (1_000_001, 1_000_002):
        scene = generate_scene(seed)
        image = render(scene)
        for question in questions_for(scene, np.random.default_rng(seed))[:4]:
            assert on_trt.ask(image, question.text) == on_ort.ask(image, question.text)
    assert {c._engine._spec["onnx"].rsplit("/", 1)[-1] for c in trt._contexts} == {"fusion.onnx",
                                                                                   "region_encoder.onnx"}
