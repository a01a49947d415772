"""What this machine can run: packages, backends, ONNX Runtime providers, GPUs, TensorRT.

Every probe catches its own failure and reports it as text, so the doctor never crashes on a broken
install (which is when it is needed most).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import fusionrt
from fusionrt.bundle.manifest import Bundle
from fusionrt.errors import FusionrtError
from fusionrt.runtime.backends.tensorrt.device import DeviceInfo, cuda_device
from fusionrt.runtime.backends.tensorrt.entries import engine_entries, mismatches
from fusionrt.runtime.gpu_setup import JETSON_RELEASE_FILE, driver_major, gpu_fixes
from fusionrt.runtime.session import BACKENDS

# import name -> distribution names to ask for a version (the first installed one wins).
PACKAGES = {
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnxscript": ("onnxscript",),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    "tensorrt_lean": ("tensorrt-lean", "tensorrt-lean-cu12", "tensorrt-lean-cu13", "tensorrt_lean"),
    "cuda.bindings": ("cuda-bindings", "cuda-python"),
    "polygraphy": ("polygraphy",),
}
# backend -> packages it imports (tensorrt: either TensorRT package, checked in _tensorrt_backend)
BACKEND_PACKAGES = {"onnxruntime": ("onnxruntime",), "torch": ("torch",), "tensorrt": ("cuda.bindings",)}


def _distribution_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def package_status(module: str) -> dict[str, Any]:
    """Installed version and whether it imports (an installed package can still fail to import)."""
    version = _distribution_version(PACKAGES.get(module, (module,)))
    status: dict[str, Any] = {"installed": version is not None, "version": version, "importable": False,
                              "error": None}
    if version is None:
        return status
    try:
        imported = importlib.import_module(module)
        status["importable"] = True
        status["version"] = getattr(imported, "__version__", version)
    except Exception as exc:  # broken installs raise anything from ImportError to OSError
        status["error"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    return status


def _nvidia_smi() -> dict[str, Any]:
    if shutil.which("nvidia-smi") is None:
        return {"found": False, "gpus": [], "error": None}
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"found": True, "gpus": [], "error": f"{type(exc).__name__}: {exc}"}
    if done.returncode != 0:
        return {"found": True, "gpus": [], "error": (done.stderr or done.stdout).strip()[:200]}
    gpus = [dict(zip(("name", "memory", "driver"), (p.strip() for p in line.split(",")), strict=False))
            for line in done.stdout.splitlines() if line.strip()]
    return {"found": True, "gpus": gpus, "error": None}


def _torch_cuda(packages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not packages["torch"]["importable"]:
        return {"checked": False}
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return {"checked": True, "available": count > 0, "cuda": torch.version.cuda,
                "devices": [torch.cuda.get_device_name(i) for i in range(count)]}
    except Exception as exc:  # a CUDA build without a driver raises at query time
        return {"checked": True, "available": False, "error": f"{type(exc).__name__}: {exc}"}


def _cuda_device(packages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The CUDA device as the TensorRT backend sees it (cuda-python), or why there is none."""
    if not packages["cuda.bindings"]["importable"]:
        return {"found": False, "error": "cuda-python not importable"}

    try:
        return {"found": True, **cuda_device().to_dict()}
    except FusionrtError as exc:
        return {"found": False, "error": str(exc.received) if hasattr(exc, "received") else str(exc)}


def _driver_cuda_version(packages: dict[str, dict[str, Any]]) -> int | None:
    """``cudaDriverGetVersion`` (e.g. 13000), or None without cuda-python or a driver."""
    if not packages["cuda.bindings"]["importable"]:
        return None
    try:
        from cuda.bindings import runtime as cudart

        err, version = cudart.cudaDriverGetVersion()
        return int(version) if int(err) == 0 and version else None
    except Exception:  # a broken install says so elsewhere; here it only means "unknown"
        return None


def tensorrt_engines(bundle_dir: str | Path, packages: dict[str, dict[str, Any]],
                     device: dict[str, Any]) -> list[dict[str, Any]]:
    """Each engine the bundle records, and whether it would load here (or why not)."""
    bundle = Bundle.open(bundle_dir)
    name = "tensorrt" if packages["tensorrt"]["importable"] else "tensorrt_lean"
    version = packages[name]["version"] if packages[name]["importable"] else None
    out = []
    for entry in engine_entries(bundle):
        row: dict[str, Any] = {"file": entry.file, "graph": entry.graph, "precision": entry.precision,
                               "built_for": entry.describe()}
        if version is None or not device.get("found"):
            row["loads"] = None
            row["why"] = ["cannot check: " + ("no TensorRT here" if version is None else "no CUDA device here")]
        else:
            here = DeviceInfo(device["index"], device["name"], device["compute_capability"], device["memory_bytes"])
            row["why"] = mismatches(entry, bundle, str(version), here, lean=name == "tensorrt_lean")
            row["loads"] = not row["why"]
        out.append(row)
    return out


def diagnose(check_torch: bool = True, bundle: str | Path | None = None) -> dict[str, Any]:
    """The doctor's findings as a JSON-ready dict. ``check_torch=False`` skips importing torch (slow to
    import); its ``importable`` and its backend's ``available`` are then ``None``. With ``bundle``, also
    which of its TensorRT engines would load here."""
    packages = {name: package_status(name) for name in PACKAGES if check_torch or name != "torch"}
    if not check_torch:
        version = _distribution_version(PACKAGES["torch"])
        packages["torch"] = {"installed": version is not None, "version": version, "importable": None,
                             "error": None}
    backends = {}
    for backend in BACKENDS:
        needs = BACKEND_PACKAGES.get(backend, ())
        missing = [p for p in needs if not packages[p]["importable"]]
        unchecked = [p for p in needs if packages[p]["importable"] is None]
        backends[backend] = {"available": None if unchecked else not missing, "missing": missing}
    device = _cuda_device(packages)
    trt_ok = packages["tensorrt"]["importable"] or packages["tensorrt_lean"]["importable"]
    missing = [*([] if trt_ok else ["tensorrt"]), *backends["tensorrt"]["missing"],
               *([] if device["found"] else ["a CUDA device"])]
    backends["tensorrt"] = {"available": not missing, "missing": missing}
    providers: list[str] | str = "onnxruntime not importable"
    if packages["onnxruntime"]["importable"]:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    trt = packages["tensorrt"]
    gpu_version = _distribution_version(("onnxruntime-gpu",))
    packages["onnxruntime_gpu"] = {"installed": gpu_version is not None, "version": gpu_version,
                                   "importable": packages["onnxruntime"]["importable"] if gpu_version else False,
                                   "error": None}
    smi = _nvidia_smi()
    major = driver_major(_driver_cuda_version(packages), (smi["gpus"] or [{}])[0].get("driver"))
    return {
        "fusionrt": fusionrt.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "backends": backends,
        "onnxruntime_providers": providers,
        "gpus": {"nvidia_smi": smi, "torch_cuda": _torch_cuda(packages)},
        "tensorrt": trt["version"] if trt["importable"] else ("not installed" if not trt["installed"] else
                                                               f"installed but not importable: {trt['error']}"),
        "cuda_device": device,
        "cuda_driver_major": major,
        "gpu_fixes": gpu_fixes(packages, bool(device["found"]), major, JETSON_RELEASE_FILE.exists()),
        **({"engines": tensorrt_engines(bundle, packages, device)} if bundle is not None else {}),
    }


def render(report: dict[str, Any]) -> str:
    """Human-readable lines."""
    lines = [f"fusionrt {report['fusionrt']} on Python {report['python']} ({report['platform']})", "packages:"]
    for name, p in report["packages"].items():
        state = ("not installed" if not p["installed"] else "ok" if p["importable"] else
                 "installed, import not checked" if p["importable"] is None else f"BROKEN: {p['error']}")
        lines.append(f"  {name:<14} {p['version'] or '-':<16} {state}")
    lines.append("backends:")
    for name, b in report["backends"].items():
        state = ("available" if b["available"] else "not checked" if b["available"] is None else
                 f"missing {', '.join(b['missing'])}")
        lines.append(f"  {name:<14} {state}")
    providers = report["onnxruntime_providers"]
    lines.append(f"onnxruntime providers: {', '.join(providers) if isinstance(providers, list) else providers}")
    smi = report["gpus"]["nvidia_smi"]
    if smi["gpus"]:
        lines.extend(f"GPU: {g.get('name')} ({g.get('memory')}, driver {g.get('driver')})" for g in smi["gpus"])
    else:
        lines.append("GPU: none found" + (f" (nvidia-smi: {smi['error']})" if smi["error"] else
                                           "" if smi["found"] else " (no nvidia-smi)"))
    cuda = report["gpus"]["torch_cuda"]
    if cuda.get("checked"):
        lines.append(f"torch CUDA: {'available ' + str(cuda.get('devices')) if cuda.get('available') else 'no'}")
    lean = report["packages"].get("tensorrt_lean", {})
    lines.append(f"TensorRT: {report['tensorrt']}" + (f" (lean runtime {lean['version']})" if lean.get("importable")
                                                     else ""))
    device = report["cuda_device"]
    lines.append(f"CUDA device (cuda-python): {device['name']}, compute capability {device['compute_capability']}"
                 if device["found"] else f"CUDA device (cuda-python): none ({device['error']})")
    fixes = report.get("gpu_fixes") or []
    lines.append("GPU setup: complete" if not fixes else "GPU setup, missing (each with the command that fixes it):")
    for fix in fixes:
        lines.append(f"  {fix['missing']}: " + (fix["command"] or f"no command ({fix.get('note', '')})"))
    if "engines" in report:
        lines.append("engines of the bundle:" if report["engines"] else "engines of the bundle: none (fusionrt build)")
        for row in report["engines"]:
            state = "would load" if row["loads"] else "would NOT load" if row["loads"] is False else "unknown"
            lines.append(f"  {row['file']}: {state}" + (f" ({'; '.join(row['why'])})" if row["why"] else ""))
    return "\n".join(lines)
