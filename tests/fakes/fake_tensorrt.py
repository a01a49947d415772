"""A fake ``tensorrt`` module generated from a real API listing (tests/data/trt-api/).

Generation: every enum of the listing becomes an ``IntEnum`` with exactly the listed members; every
class becomes a class whose public attributes are exactly the listed ones. A listed name the fake
has no behaviour for raises ``NotImplementedError`` when used; a name NOT in the listing raises
``AttributeError`` (as the real module would). Behaviour is added only through the ``_*Behaviour``
classes below, whose public names are checked against the listing at generation time.

The fake engine runs the bundle's ONNX graph with onnxruntime, so everything around it (profiles,
shapes, device memory, addresses, contexts, CUDA graphs) must be right for results to match.
A ``Runtime`` created while the fake cudart has no device raises :class:`FakeCrash`: the real
Runtime crashes Python then, so code under test must never get there.
"""

from __future__ import annotations

import enum
import json
import threading
import time
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

LISTINGS = Path(__file__).resolve().parent.parent / "data" / "trt-api"
FULL_11 = "trt_11.4.0.106_full_stubbed.txt"
PLAN_MAGIC = b"FAKEPLAN"
_ONNX_TO_TRT = {"float32": "FLOAT", "float16": "HALF", "int64": "INT64", "int32": "INT32", "bool": "BOOL",
                "int8": "INT8", "uint8": "UINT8"}


class FakeCrash(BaseException):
    """Where the real TensorRT would have crashed the process."""


def read_listing(name: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Top-level name -> kind (class, enum, function, value, module), and class/enum -> member names."""
    kinds, members = {}, defaultdict(list)
    for line in (LISTINGS / name).read_text().splitlines():
        if " <" in line:
            top, kind = line.split(" <", 1)
            kinds[top] = kind.rstrip(">")
        elif "." in line:
            owner, member = line.split(".", 1)
            members[owner].append(member)
    return kinds, dict(members)


# ---- behaviour (public names must be in the listing; state lives in _underscored attributes) ----

class _LoggerBehaviour:
    def log(self, severity: Any, msg: str) -> None:
        pass


class _RuntimeBehaviour:
    def __init__(self, logger: Any) -> None:
        fake = _module_of(self)
        if not fake._cudart.cudaGetDeviceCount()[1]:
            raise FakeCrash("trt.Runtime created without a CUDA device: the real one segfaults on first use")
        self._logger = logger
        self.engine_host_code_allowed = False
        fake._runtimes.append(self)

    def deserialize_cuda_engine(self, data: bytes) -> Any:
        fake = _module_of(self)
        if not bytes(data).startswith(PLAN_MAGIC):
            self._logger.log(fake.ILogger.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                             "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
            return None
        engine = fake.ICudaEngine._make(json.loads(bytes(data)[len(PLAN_MAGIC):]))
        engine._logger = self._logger
        return engine


class _EngineBehaviour:
    @classmethod
    def _make(cls, spec: dict[str, Any]) -> Any:
        engine = cls.__new__(cls)
        engine._spec = spec
        engine._tensors = spec["tensors"]
        engine._running: set[int] = set()  # profiles of contexts executing now
        engine._running_lock = threading.Lock()
        engine._logger = None
        return engine

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._spec["profiles"])

    def _tensor(self, name: str) -> dict[str, Any]:
        return next(t for t in self._tensors if t["name"] == name)

    def get_tensor_name(self, index: int) -> str:
        return self._tensors[index]["name"]

    def get_tensor_mode(self, name: str) -> Any:
        return getattr(_module_of(self).TensorIOMode, self._tensor(name)["mode"])

    def get_tensor_dtype(self, name: str) -> Any:
        return getattr(_module_of(self).DataType, self._tensor(name)["dtype"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self._spec["profiles"][profile][name]]

    def create_execution_context(self) -> Any:
        fake = _module_of(self)
        context = fake.IExecutionContext.__new__(fake.IExecutionContext)
        context._init(self)
        fake._cudart._used("context")
        fake._contexts.append(context)
        return context


class _ContextBehaviour:
    def _init(self, engine: Any) -> None:
        self._engine, self._profile, self._shapes, self._addresses = engine, 0, {}, {}
        self._busy = threading.Lock()
        self._runs = 0
        self._last: Any = None  # the last deferred enqueue (its ``done`` says whether the GPU ran it)
        self._streams: list[int] = []  # every stream enqueued on

    @property
    def active_optimization_profile(self) -> int:
        return self._profile

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self._profile = index
        self._shapes = {}
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self._engine.get_tensor_profile_shape(name, self._profile)
        if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high, strict=True)):
            return False
        self._shapes[name] = tuple(int(s) for s in shape)
        return True

    def infer_shapes(self) -> list[str]:
        return [t["name"] for t in self._engine._tensors if t["mode"] == "INPUT" and t["name"] not in self._shapes]

    def _symbols(self) -> dict[str, int]:
        sizes = {}
        for t in self._engine._tensors:
            if t["name"] in self._shapes:
                sizes.update({d: s for d, s in zip(t["shape"], self._shapes[t["name"]], strict=True)
                              if isinstance(d, str)})
        return sizes

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self._shapes:
            return self._shapes[name]
        sizes = self._symbols()
        return tuple(sizes.get(d, -1) if isinstance(d, str) else d for d in self._engine._tensor(name)["shape"])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if _module_of(self)._refuse_addresses:
            return False  # as the real one does for a null or misaligned address
        self._addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        fake = _module_of(self)
        cudart = fake._cudart
        stream = cudart.stream(stream_handle)
        if self._last is not None and not self._last.done:
            raise AssertionError("fake TensorRT: context enqueued again while its previous enqueue is still in "
                                 "flight (nothing waited for it: its addresses and shapes may change under it)")
        self._streams.append(int(stream_handle))
        if int(stream_handle) == 0 and self._engine._logger is not None:
            self._engine._logger.log(fake.ILogger.WARNING, "Using default stream in enqueueV3() may lead to "
                                     "performance issues due to additional calls to cudaStreamSynchronize()")
        if stream.capturing is not None and fake._capture_fails:
            stream.invalidated = True
            return False
        # bind the current shapes and addresses, as a captured graph (or the GPU's queue) does
        shapes, addresses = dict(self._shapes), dict(self._addresses)
        cudart.launch(stream_handle, lambda: self._run(shapes, addresses))
        if cudart.deferred and stream.capturing is None:
            self._last = stream.pending[-1]
        return True

    def _run(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int]) -> bool:
        if not self._busy.acquire(blocking=False):
            raise AssertionError("fake TensorRT: one execution context used by two threads at once")
        engine = self._engine
        with engine._running_lock:
            if self._profile in engine._running:
                self._busy.release()
                raise AssertionError(f"fake TensorRT: two contexts run on profile {self._profile} at once "
                                     "(contexts in concurrent use must use different profiles)")
            engine._running.add(self._profile)
        try:
            fake = _module_of(self)
            time.sleep(fake._delay)
            tensors = self._engine._tensors
            feed = {}
            for t in tensors:
                if t["mode"] == "INPUT":
                    feed[t["name"]] = _view(addresses[t["name"]], shapes[t["name"]], t["numpy"]).copy()
            results = fake._compute(self._engine._spec, feed)
            for t in tensors:
                if t["mode"] == "OUTPUT":
                    out = _view(addresses[t["name"]], results[t["name"]].shape, t["numpy"])
                    out[...] = results[t["name"]]
            self._runs += 1
            return True
        finally:
            with engine._running_lock:
                engine._running.discard(self._profile)
            self._busy.release()


def _view(ptr: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    import ctypes

    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * max(count, 1)).from_address(ptr), dtype=dtype,
                         count=int(np.prod(shape))).reshape(shape)


_BEHAVIOUR = {"ILogger": _LoggerBehaviour, "Logger": _LoggerBehaviour, "Runtime": _RuntimeBehaviour,
              "ICudaEngine": _EngineBehaviour, "IExecutionContext": _ContextBehaviour}
_MODULES: dict[int, types.ModuleType] = {}


def _module_of(obj: Any) -> Any:
    return _MODULES[type(obj)._fake_id]


def _fake_class(module_id: int, name: str, listed: list[str], behaviour: type | None) -> type:
    listed_set = frozenset(listed)
    base = behaviour or object
    if behaviour is not None:
        extra = [n for n in vars(behaviour) if not n.startswith("_") and n not in listed_set]
        if extra:
            raise AssertionError(f"fake behaviour of {name} defines {extra}, which the listing does not have")

    def __getattr__(self: Any, attr: str) -> Any:
        if attr in listed_set:
            raise NotImplementedError(f"fake tensorrt: {name}.{attr} is listed but the fake has no behaviour for it")
        raise AttributeError(f"fake tensorrt: {name}.{attr} is not in the listing")

    return type(name, (base,), {"_fake_id": module_id, "_listed": listed_set, "__getattr__": __getattr__})


def make_fake_tensorrt(cudart: Any, listing: str = FULL_11, version: str = "11.4.0.106", module_name: str = "tensorrt",
                       compute: Any = None, capture_fails: bool = False, delay: float = 0.0,
                       refuse_addresses: bool = False) -> types.ModuleType:
    """The fake module. ``compute(spec, feed) -> outputs`` is the engine's math (default: onnxruntime on
    the plan's ``onnx`` path); ``capture_fails`` makes every enqueue under CUDA graph capture fail;
    ``refuse_addresses`` makes ``set_tensor_address`` return False."""
    kinds, members = read_listing(listing)
    module = types.ModuleType(module_name, f"fake tensorrt generated from {listing}")
    module_id = id(module)
    _MODULES[module_id] = module
    module.__version__ = version
    for name, kind in kinds.items():
        if kind == "enum":
            setattr(module, name, enum.IntEnum(name, {m: i for i, m in enumerate(members.get(name, []))}))
        elif kind == "class":
            setattr(module, name, _fake_class(module_id, name, members.get(name, []), _BEHAVIOUR.get(name)))
    for logger in ("ILogger", "Logger"):
        if logger in kinds:
            cls = getattr(module, logger)
            severity = enum.IntEnum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])
            cls.Severity = severity
            for member in severity:
                setattr(cls, member.name, member)
    module._cudart, module._capture_fails, module._delay = cudart, capture_fails, delay
    module._refuse_addresses = refuse_addresses
    module._compute = compute or onnxruntime_compute
    module._runtimes, module._contexts = [], []
    return module


_SESSIONS: dict[str, Any] = {}


def onnxruntime_compute(spec: dict[str, Any], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime

    path = spec["onnx"]
    if path not in _SESSIONS:
        _SESSIONS[path] = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    session = _SESSIONS[path]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def fake_build_plan(onnx_path: Path, config: Any, timing_cache: Path) -> bytes:
    """A fake plan: the graph's tensors (from the bundle manifest) and the Polygraphy profiles of ``config``."""
    from fusionrt.bundle.manifest import Bundle

    bundle = Bundle.open(onnx_path.parent, verify=False)
    graph = next(g for g in bundle.graphs.values() if onnx_path.name in g.precisions.values())
    tensors = [{"name": t.name, "mode": mode, "dtype": _ONNX_TO_TRT[t.dtype], "numpy": t.dtype,
                "shape": list(t.shape)}
               for mode, group in (("INPUT", graph.inputs), ("OUTPUT", graph.outputs)) for t in group]
    profiles = [{name: [list(shape.min), list(shape.opt), list(shape.max)] for name, shape in profile.items()}
                for profile in config.profiles]
    timing_cache.write_bytes(b"fake timing cache")
    return PLAN_MAGIC + json.dumps({"onnx": str(onnx_path), "tensors": tensors, "profiles": profiles}).encode()
