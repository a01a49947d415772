"""Every TensorRT name the engine and backend code can reach exists in the real API listings.

Names are extracted from the code's AST, not from a hand list: ``trt.X`` / ``trt.X.Y`` chains (and
``hasattr(trt, "X")``), methods called on the objects TensorRT returns (held in variables named
``engine``, ``context``, ``runtime``), and methods our ``trt.ILogger`` subclass overrides. Rules: engine
code (full TensorRT) -> in the 10.3 and 11.4 full listings; the runtime backend -> also in both lean
listings (10.15, 11.4); a name inside ``if major(trt) ...`` may exist in one version only.
"""

import ast
from pathlib import Path

import pytest

import fusionrt

LISTINGS = Path(__file__).parent / "data" / "trt-api"
FULL = ("trt_10.3.0_full_stubbed.txt", "trt_11.4.0.106_full_stubbed.txt")
LEAN = ("trt_lean_10.15.1.29.txt", "trt_lean_11.4.0.106.txt")
PACKAGE = Path(fusionrt.__file__).parent
TENSORRT_BACKEND = PACKAGE / "runtime" / "backends" / "tensorrt"
BACKEND_CODE = [TENSORRT_BACKEND / "runner.py", PACKAGE / "caption" / "trt_stepper.py"]
# The builder and what the runner stands on (cuda, device, versions, entries, profiles) need the full TensorRT.
ENGINE_CODE = sorted([*(PACKAGE / "engine").glob("*.py"), *(set(TENSORRT_BACKEND.glob("*.py")) - set(BACKEND_CODE))])
# variables holding TensorRT objects -> their class in the listings
ROLES = {"engine": "ICudaEngine", "context": "IExecutionContext", "runtime": "Runtime"}


def listing(name):
    names = set()
    for line in (LISTINGS / name).read_text().splitlines():
        names.add(line.split(" <", 1)[0])
    return names


def _chain(node):
    """``trt.A.B`` -> ["trt", "A", "B"]; ``self.context.x`` -> ["self", "context", "x"]; else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _guarded(tree):
    """Nodes inside an ``if`` whose test calls ``major(...)`` (a TensorRT version check)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "major"
                                            for n in ast.walk(node.test)):
            for child in node.body + node.orelse:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def tensorrt_names(source):
    """{(name, guarded)} of every TensorRT name ``source`` reaches."""
    tree = ast.parse(source)
    guarded = _guarded(tree)
    found = set()
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Del):
            chain = _chain(node)
            if chain and chain[0] == "trt" and len(chain) >= 2 and not chain[1].startswith("__"):
                # trt.__version__ / __name__ are Python's; trt.ILogger.__init__ is the class itself
                name = ".".join(p for p in chain[1:3] if not p.startswith("__"))
            elif chain and len(chain) >= 2 and chain[-2].lstrip("_") in ROLES:
                name = f"{ROLES[chain[-2].lstrip('_')]}.{chain[-1]}"
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "hasattr" and len(node.args) == 2
              and getattr(node.args[0], "id", "") == "trt" and isinstance(node.args[1], ast.Constant)):
            name = node.args[1].value
        elif isinstance(node, ast.ClassDef) and any(_chain(b) == ["trt", "ILogger"] for b in node.bases):
            found.update((f"ILogger.{f.name}", id(node) in guarded) for f in node.body
                         if isinstance(f, ast.FunctionDef) and not f.name.startswith("__"))
        if name:
            found.add((name, id(node) in guarded))
    return found


def _names_of(files):
    return {pair for f in files for pair in tensorrt_names(f.read_text())}


def _missing(found, listings):
    sets = [listing(n) for n in listings]
    return sorted(name for name, guarded in found
                  if not (any if guarded else all)(name in s for s in sets))


def test_extraction_sees_what_the_backend_uses():
    names = {n for n, _ in _names_of(BACKEND_CODE)}
    for expected in ("IExecutionContext.execute_async_v3", "IExecutionContext.set_input_shape",
                     "IExecutionContext.set_optimization_profile_async", "ICudaEngine.get_tensor_profile_shape",
                     "Runtime.deserialize_cuda_engine", "Runtime.engine_host_code_allowed", "DataType.HALF",
                     "TensorIOMode.INPUT", "ILogger.log", "ILogger.ERROR", "Runtime"):
        assert expected in names


def test_engine_code_names_exist_in_tensorrt_10_3_and_11_4():
    found = _names_of(ENGINE_CODE + BACKEND_CODE)
    assert {n for n, _ in found} >= {"MemoryPoolType.WORKSPACE", "Builder", "OnnxParser"}
    assert _missing(found, FULL) == []


def test_backend_names_exist_in_both_lean_runtimes():
    assert _missing(_names_of(BACKEND_CODE), FULL + LEAN) == []


@pytest.mark.parametrize(("source", "missing"), [
    ("def f(trt, engine):\n    return engine.device_memory_size, trt.BuilderFlag.FP16",
     ["BuilderFlag.FP16", "ICudaEngine.device_memory_size"]),
    ("def f(self):\n    self._context.execute_async_v2([], 0)", ["IExecutionContext.execute_async_v2"]),
    ("def f(trt):\n    return hasattr(trt, 'NetworkDefinitionCreationFlag') and trt.NetworkDefinitionCreationFlag"
     ".EXPLICIT_BATCH", ["NetworkDefinitionCreationFlag.EXPLICIT_BATCH"]),
    ("def f(trt):\n    if major(trt) < 11:\n        return trt.BuilderFlag.FP16", []),  # behind a version check
    ("def f(trt):\n    if major(trt) < 11:\n        return trt.BuilderFlag.NO_SUCH", ["BuilderFlag.NO_SUCH"]),
])
def test_checker_catches_names_removed_in_11_or_never_present(source, missing):
    assert _missing(tensorrt_names(source), FULL) == missing
