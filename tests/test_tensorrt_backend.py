"""The TensorRT backend's logic against the contract fakes (tensorrt generated from the 11.4 listing, cudart
checked against cuda-python): results equal ONNX Runtime's, profile choice and refusal, manifest mismatch
refusals before deserialization, context pool under threads, buffer growth, CUDA graphs, no-device refusal."""

import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes.bundles import export_tiny_bundle
from fakes.fake_cudart import FakeCudart
from fakes.fake_tensorrt import fake_build_plan, make_fake_tensorrt

import fusionrt.runtime.backends.tensorrt.runner as backend
from fusionrt.bundle.transaction import update_manifest
from fusionrt.engine.build import BuildEnvironment, build_engines
from fusionrt.engine.config import BuildOptions
from fusionrt.parity import fusion_feed
from fusionrt.runtime import BackendError, Bundle, Session
from fusionrt.runtime.backends.tensorrt.device import cuda_device
from fusionrt.runtime.backends.tensorrt.entries import SECTION
from fusionrt.runtime.backends.tensorrt.profiles import parse_spec

BUCKETS = [parse_spec("B=1:1:4"), parse_spec("B=5:8:8")]  # B 9..16 is in the manifest but in no profile


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny bundle with fake-built fp32 engines: two B buckets for fusion, for an H100 on TensorRT 11.4."""
    bundle = export_tiny_bundle(tmp_path_factory.mktemp("trt") / "bundle")
    cudart = FakeCudart()
    build_engines(bundle, "fp32", profile_specs=BUCKETS,
                  environment=BuildEnvironment(make_fake_tensorrt(cudart), cuda_device(0, cudart), fake_build_plan))
    return bundle


@pytest.fixture
def copy(built, tmp_path):
    return Path(shutil.copytree(built, tmp_path / "copy"))


@pytest.fixture(scope="module")
def reference(built):
    return Session(built, backend="onnxruntime")


def install(monkeypatch, cudart=None, **fake):
    """Put a fake tensorrt in sys.modules and a fake cudart behind the backend; return (trt, cudart)."""
    cudart = cudart or FakeCudart()
    trt = make_fake_tensorrt(cudart, **fake)
    monkeypatch.setitem(sys.modules, trt.__name__, trt)
    if trt.__name__ != "tensorrt":
        monkeypatch.setitem(sys.modules, "tensorrt", None)  # only the lean runtime is installed
    monkeypatch.setattr(backend, "import_cudart", lambda: cudart)
    return trt, cudart


def feed(session, batch, text=6, visual=3, seed=0):
    return fusion_feed(session.runner.graph, batch, text, visual, np.random.default_rng(seed))


def assert_same(outputs, expected):
    assert outputs.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-5, atol=1e-6)


def test_results_match_onnxruntime_and_each_batch_uses_its_profile(built, reference, monkeypatch):
    install(monkeypatch)
    with Session(built, backend="tensorrt") as session:
        assert session.describe()["engine"].startswith("engines/fusion.fp32.nvidia-h100")
        for batch, profile in ((1, 0), (4, 0), (5, 1), (8, 1), (2, 0)):
            data = feed(session, batch, seed=batch)
            assert_same(session.run(data), reference.run(data))
            (slot,) = session.runner.pool.slots
            assert (slot.profile, slot.context.active_optimization_profile) == (profile, profile)


def test_feed_outside_every_profile_is_refused_with_the_ranges(built, monkeypatch):
    install(monkeypatch)
    with Session(built, backend="tensorrt") as session, pytest.raises(BackendError) as info:
        session.run(feed(session, 12))  # B=12 is inside the manifest's range, not inside any profile
    message = str(info.value)
    assert "input_ids [12, 6]" in message
    assert "profile 0: input_ids [1, 1]..[4, 16]" in message and "profile 1: input_ids [5, 1]..[8, 16]" in message


@pytest.mark.parametrize(("fake", "cudart", "engine_side", "machine_side"), [
    ({"version": "10.3.0"}, {}, "engine 11.4.0.106", "this machine 10.3.0"),
    ({}, {"name": "NVIDIA A100-SXM4-80GB", "capability": (9, 0)}, "engine NVIDIA H100 80GB HBM3",
     "this machine NVIDIA A100-SXM4-80GB"),
    ({}, {"name": "NVIDIA H100 80GB HBM3", "capability": (8, 7)}, "engine 9.0", "this GPU 8.7"),
])
def test_version_gpu_and_compute_capability_mismatch_refused_before_deserializing(
        built, monkeypatch, fake, cudart, engine_side, machine_side):
    trt, _ = install(monkeypatch, FakeCudart(**cudart), **fake)
    with pytest.raises(BackendError) as info:
        Session(built, backend="tensorrt")
    message = str(info.value)
    assert engine_side in message and machine_side in message
    assert f"fusionrt build {built} --precision fp32 --graph fusion" in message
    assert trt._runtimes == []  # compared before any Runtime existed


def _edit_entry(bundle, **changes):
    manifest = Bundle.open(bundle).manifest
    section = manifest[SECTION]
    file = next(f for f, e in section.items() if e["graph"] == "fusion")
    section[file].update(changes)
    update_manifest(bundle, sections={SECTION: section})
    return file


def test_source_graph_or_plan_hash_mismatch_refused_naming_both(copy, monkeypatch):
    trt, _ = install(monkeypatch)
    _edit_entry(copy, onnx_sha256="ab" * 32)
    with pytest.raises(BackendError, match=r"fusionrt build .*engine built from sha256 abababababab, "
                                           r"bundle has [0-9a-f]{12}"):
        Session(copy, backend="tensorrt")
    onnx_sha = Bundle.open(copy).manifest["files"]["fusion.onnx"]["sha256"]
    _edit_entry(copy, onnx_sha256=onnx_sha, plan_sha256="cd" * 32)
    with pytest.raises(BackendError, match=r"entry says sha256 cdcdcdcdcdcd, files lists [0-9a-f]{12}"):
        Session(copy, backend="tensorrt")
    assert trt._runtimes == []


def test_failed_deserialization_reports_the_tensorrt_log(copy, monkeypatch):
    install(monkeypatch)
    file = _edit_entry(copy)
    (copy / file).write_bytes(b"not a plan")
    update_manifest(copy, files=[file])
    _edit_entry(copy, plan_sha256=Bundle.open(copy).manifest["files"][file]["sha256"])
    with pytest.raises(BackendError, match=r"Magic tag does not match.*rebuild: fusionrt build"):
        Session(copy, backend="tensorrt")


def test_no_device_refused_by_real_cuda_python_before_tensorrt(built, monkeypatch):
    runtime = pytest.importorskip("cuda.bindings.runtime")
    err, count = runtime.cudaGetDeviceCount()
    if int(err) == 0 and count:
        pytest.skip("this machine has a CUDA device")
    trt, _ = install(monkeypatch)
    monkeypatch.setattr(backend, "import_cudart", lambda: runtime)  # the real cuda-python
    with pytest.raises(BackendError, match=r"CUDA device: expected a machine with an NVIDIA GPU.*"
                                           r"cudaErrorInsufficientDriver \(35\)"):
        Session(built, backend="tensorrt")
    assert trt._runtimes == []


def _hammer(session, feeds, workers=6):
    """Run ``feeds`` from ``workers`` threads; return (results in feed order, exceptions raised)."""
    errors, results = [], [None] * len(feeds)

    def work(worker):
        try:
            for i in range(worker, len(feeds), workers):
                results[i] = session.run(feeds[i])
        except BaseException as exc:  # the fake raises AssertionError on a shared context or profile
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


@pytest.mark.parametrize(("buckets", "max_contexts", "most_slots"), [
    (BUCKETS, 3, 2),  # two different profiles: at most two calls at once, whatever max_contexts says
    ([parse_spec("B=1:1:8")] * 3, 3, 3),  # three identical profiles: three contexts run side by side
    ([parse_spec("B=1:1:8")] * 3, 2, 2),  # ... capped by max_contexts
    ([], 4, 1),  # the manifest's one profile: calls take turns on one context
])
def test_context_pool_never_shares_a_context_or_a_running_profile(copy, reference, monkeypatch, buckets,
                                                                   max_contexts, most_slots):
    cudart = FakeCudart()
    build_engines(copy, "fp32", graphs=["fusion"], profile_specs=buckets,
                  environment=BuildEnvironment(make_fake_tensorrt(cudart), cuda_device(0, cudart), fake_build_plan))
    install(monkeypatch, delay=0.01)
    feeds = [feed(reference, 1 + i % 8, seed=i) for i in range(24)]
    with Session(copy, backend="tensorrt", max_contexts=max_contexts) as session:
        results, errors = _hammer(session, feeds)
        assert not errors, errors
        slots = len(session.runner.pool.slots)
        assert slots == most_slots if most_slots == 1 else 2 <= slots <= most_slots
    for got, data in zip(results, feeds, strict=True):
        assert_same(got, reference.run(data))


def test_buffers_grow_only_when_a_larger_feed_arrives(built, monkeypatch):
    _, cudart = install(monkeypatch)
    with Session(built, backend="tensorrt") as session:
        session.run(feed(session, 4, text=8))
        first = cudart.mallocs
        assert first == 6  # four inputs and two outputs
        session.run(feed(session, 2, text=4))
        session.run(feed(session, 4, text=8))
        assert cudart.mallocs == first  # smaller and equal feeds reuse the buffers
        session.run(feed(session, 8, text=8))
        assert cudart.mallocs > first and cudart.frees == cudart.mallocs - first
    assert cudart.frees == cudart.mallocs  # close releases everything


def test_cuda_graph_captured_per_shape_and_replayed(built, reference, monkeypatch):
    _, cudart = install(monkeypatch)
    with Session(built, backend="tensorrt", cuda_graphs=True) as session:
        a, b = feed(session, 2, seed=1), feed(session, 3, seed=2)
        assert_same(session.run(a), reference.run(a))
        assert (cudart.captures, cudart.launches) == (1, 0)  # the warm-up enqueue gave this call's results
        a2 = feed(session, 2, seed=3)  # same shapes, new values: the graph replays on new data
        assert_same(session.run(a2), reference.run(a2))
        assert (cudart.captures, cudart.launches) == (1, 1)
        assert_same(session.run(b), reference.run(b))  # shape change: recapture
        assert cudart.captures == 2
        assert_same(session.run(a), reference.run(a))
        assert (cudart.captures, cudart.launches) == (3, 1)


def test_cuda_graph_capture_failure_falls_back_to_plain_enqueue(built, reference, monkeypatch):
    trt, cudart = install(monkeypatch, capture_fails=True)
    with Session(built, backend="tensorrt", cuda_graphs=True) as session:
        for seed in range(3):
            data = feed(session, 2, seed=seed)
            assert_same(session.run(data), reference.run(data))
        assert (cudart.captures, cudart.launches) == (0, 0)
        assert trt._contexts[0]._runs == 3


def _build_compatible(bundle, version="11.4.0.106", exclude_lean_runtime=True):
    cudart = FakeCudart()
    options = BuildOptions(version_compatible=True, exclude_lean_runtime=exclude_lean_runtime)
    build_engines(bundle, "fp32", graphs=["fusion"], options=options,
                  environment=BuildEnvironment(make_fake_tensorrt(cudart, version=version), cuda_device(0, cudart),
                                               fake_build_plan))


def test_lean_runtime_loads_engines_built_for_it_by_its_own_version(copy, reference, monkeypatch):
    install(monkeypatch, listing="trt_lean_11.4.0.106.txt", module_name="tensorrt_lean")
    with pytest.raises(BackendError, match=r"lean runtime .* loads only engines built --version-compatible "
                                           r"--exclude-lean-runtime"):
        Session(copy, backend="tensorrt")
    _build_compatible(copy)
    trt, _ = install(monkeypatch, listing="trt_lean_11.4.0.106.txt", module_name="tensorrt_lean")
    with Session(copy, backend="tensorrt") as session:
        data = feed(session, 3)
        assert_same(session.run(data), reference.run(data))
    assert trt._runtimes[0].engine_host_code_allowed is False  # such a plan carries no host code to allow


def test_lean_runtime_refuses_version_compatible_plans_without_exclude_or_of_another_version(copy, monkeypatch):
    """Defect 5: NvInferRuntime.h (10.3, loadRuntime): the lean runtime runs plans built VERSION_COMPATIBLE and
    EXCLUDE_LEAN_RUNTIME by the same TensorRT version; we accepted any version-compatible plan of an equal or
    older version."""
    _build_compatible(copy, version="11.3.0.1", exclude_lean_runtime=False)
    trt, _ = install(monkeypatch, listing="trt_lean_11.4.0.106.txt", module_name="tensorrt_lean")
    with pytest.raises(BackendError, match=r"--exclude-lean-runtime"):
        Session(copy, backend="tensorrt")
    _build_compatible(copy, version="11.3.0.1", exclude_lean_runtime=True)
    with pytest.raises(BackendError, match=r"engine 11.3.0.1, this lean runtime 11.4.0.106"):
        Session(copy, backend="tensorrt")
    assert trt._runtimes == []


def test_torch_tensors_go_in_and_out_without_a_host_copy(built, reference, monkeypatch):
    """The fake's device memory is host memory, so CPU tensors stand in for CUDA ones (device check relaxed)."""
    import torch

    _, cudart = install(monkeypatch)
    monkeypatch.setattr(backend, "_on_device", lambda tensor: True)
    with Session(built, backend="tensorrt") as session:
        data = feed(session, 3, seed=5)
        tensors = {n: torch.from_numpy(a.copy()) for n, a in data.items()}
        before = cudart.mallocs
        stream = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)[1]
        out = session.runner.infer_torch(tensors, stream=int(stream))
        assert cudart.mallocs == before  # no staging buffers: the tensors' own memory is bound
        assert_same({n: t.numpy() for n, t in out.items()}, reference.run(data))
        with pytest.raises(BackendError, match="profile 0"):
            session.runner.infer_torch({n: torch.from_numpy(a) for n, a in feed(session, 12).items()}, stream=1)


def test_torch_path_refuses_host_tensors_and_wrong_dtypes(built, monkeypatch):
    import torch

    from fusionrt.runtime import InputError

    install(monkeypatch)
    with Session(built, backend="tensorrt") as session:
        tensors = {n: torch.from_numpy(a) for n, a in feed(session, 2).items()}
        with pytest.raises(InputError, match=r"a contiguous CUDA tensor of torch\.int64"):
            session.runner.infer_torch(tensors, stream=1)  # real check: these live on the CPU
        monkeypatch.setattr(backend, "_on_device", lambda tensor: True)
        with pytest.raises(InputError, match=r"visual_feats: expected a contiguous CUDA tensor of torch\.float32"):
            session.runner.infer_torch({**tensors, "visual_feats": tensors["visual_feats"].double()}, stream=1)


# ---- what a real GPU would hit (issue 17): asynchrony, devices, addresses, pinned memory, graphs ----

def _torch_feed(session, batch, seed):
    import torch

    data = feed(session, batch, seed=seed)
    return data, {n: torch.from_numpy(a.copy()) for n, a in data.items()}


def test_infer_torch_slot_waits_for_the_gpu_before_its_next_user(built, reference, monkeypatch):
    """Defect 1: the pool freed the slot while its enqueue was still queued on the caller's stream."""
    _, cudart = install(monkeypatch, FakeCudart(deferred=True))
    monkeypatch.setattr(backend, "_on_device", lambda tensor: True)
    with Session(built, backend="tensorrt", max_contexts=1) as session:
        first, second = (cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)[1] for _ in range(2))
        data_a, tensors_a = _torch_feed(session, 2, seed=1)
        data_b, tensors_b = _torch_feed(session, 3, seed=2)
        out_a = session.runner.infer_torch(tensors_a, stream=int(first))
        assert cudart.pending() == 1  # queued, not run: the GPU is busy
        out_b = session.runner.infer_torch(tensors_b, stream=int(second))  # same context, another stream
        data_c = feed(session, 4, seed=3)
        got_c = session.run(data_c)  # the numpy path on the slot's own stream waits too
        cudart.cudaStreamSynchronize(second)
        cudart.cudaStreamSynchronize(first)
        assert_same({n: t.numpy() for n, t in out_a.items()}, reference.run(data_a))
        assert_same({n: t.numpy() for n, t in out_b.items()}, reference.run(data_b))
        assert_same(got_c, reference.run(data_c))


def test_close_waits_for_queued_infer_torch_work(built, monkeypatch):
    """Defect 1: close() destroyed contexts while infer_torch work was still queued on the GPU."""
    _, cudart = install(monkeypatch, FakeCudart(deferred=True))
    monkeypatch.setattr(backend, "_on_device", lambda tensor: True)
    session = Session(built, backend="tensorrt")
    stream = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)[1]
    tensors = _torch_feed(session, 2, seed=1)[1]
    outputs = session.runner.infer_torch(tensors, stream=int(stream))  # both kept alive: the queued work uses them
    assert cudart.pending() == 1
    session.close()
    assert cudart.pending() == 0
    assert set(outputs) == {"hidden", "logits"} and float(outputs["logits"].abs().sum()) > 0


def test_infer_torch_is_a_call_in_flight_for_close(built, monkeypatch):
    """Defect 1: deactivate() waited only for infer(); an infer_torch running on another thread was not counted,
    and after close() infer_torch re-activated the runner behind the caller's back."""
    from fusionrt.runtime import SessionClosedError

    install(monkeypatch, delay=0.3)
    monkeypatch.setattr(backend, "_on_device", lambda tensor: True)
    session = Session(built, backend="tensorrt")
    tensors = _torch_feed(session, 2, seed=1)[1]
    finished = []
    worker = threading.Thread(target=lambda: finished.append(session.runner.infer_torch(tensors, stream=0)))
    worker.start()
    while not session.runner.pool or not session.runner.pool.slots:  # the call holds a slot: it is running
        threading.Event().wait(0.005)
    session.close()
    assert finished, "close() returned while an infer_torch call was still running"
    worker.join()
    with pytest.raises(SessionClosedError):
        session.runner.infer_torch(tensors, stream=0)


def test_default_stream_is_never_given_to_tensorrt_and_the_log_stays_bounded(built, reference, monkeypatch):
    """Defect 1: stream=None meant torch's legacy default stream; TensorRT warns on every enqueue there and the
    captured log grew without end."""
    trt, _ = install(monkeypatch)
    monkeypatch.setattr(backend, "_on_device", lambda tensor: True)
    with Session(built, backend="tensorrt") as session:
        data, tensors = _torch_feed(session, 2, seed=4)
        out = session.runner.infer_torch(tensors, stream=0)
        assert_same({n: t.numpy() for n, t in out.items()}, reference.run(data))
        assert 0 not in trt._contexts[0]._streams
        logger = session.runner._logger
        for i in range(5000):
            logger.log(trt.ILogger.WARNING, f"warning {i}")
        assert len(logger.messages) <= 100 and list(logger.messages)[-1] == "warning 4999"


def test_every_thread_sets_the_engine_device_before_touching_cuda(built, reference, monkeypatch):
    """Defect 6: cudaSetDevice ran only on the activating thread; a caller thread made its context, stream and
    buffers on device 0."""
    _, cudart = install(monkeypatch, FakeCudart(devices=2))
    with Session(built, backend="tensorrt", device=1) as session:
        data = feed(session, 2, seed=6)
        results = []
        worker = threading.Thread(target=lambda: results.append(session.run(data)))
        worker.start()
        worker.join()
        assert_same(results[0], reference.run(data))
    assert cudart.devices_used and {device for _, device in cudart.devices_used} == {1}, cudart.devices_used


def test_refused_tensor_address_raises_naming_the_tensor(built, monkeypatch):
    """Defect 8: set_tensor_address's False was ignored and the enqueue ran on stale addresses."""
    install(monkeypatch, refuse_addresses=True)
    with Session(built, backend="tensorrt") as session, \
            pytest.raises(BackendError, match=r"tensor input_ids: expected a device address TensorRT accepts"):
        session.run(feed(session, 2))


def test_host_side_of_every_copy_is_pinned_memory(built, reference, monkeypatch):
    """Defect 8: copies went from pageable numpy memory; NVIDIA's samples stage through cudaMallocHost."""
    _, cudart = install(monkeypatch)
    with Session(built, backend="tensorrt") as session:
        for batch in (2, 4, 2):
            data = feed(session, batch, seed=batch)
            assert_same(session.run(data), reference.run(data))
    assert len(cudart.host_copies) == 3 * 6
    assert all(pinned for _, pinned in cudart.host_copies)
    assert cudart._pinned == {}  # freed at close


def test_cuda_graphs_of_alternating_shapes_are_replayed_not_recaptured(built, reference, monkeypatch):
    """Defect 8: a shape change dropped the one captured graph, so alternating shapes re-captured every call."""
    _, cudart = install(monkeypatch)
    with Session(built, backend="tensorrt", cuda_graphs=True) as session:
        big, small = feed(session, 4, seed=1), feed(session, 2, seed=2)  # big first: buffers never move after
        for data in (big, small, big, small, big, small):
            assert_same(session.run(data), reference.run(data))
        assert (cudart.captures, cudart.launches) == (2, 4)
