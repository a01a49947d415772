"""Run exported bundles: ``Session(bundle_dir, backend="onnxruntime" | "torch", graph=..., precision=...)``.

Torch-free: only the chosen backend's packages are imported, when a Session is created.
"""

from fusionrt.bundle.manifest import MANIFEST, SCHEMA_VERSION, Bundle, graph_filename, is_bundle
from fusionrt.bundle.spec import DimRange, GraphSpec, TensorSpec
from fusionrt.errors import BackendError, BundleError, InputError, SessionClosedError
from fusionrt.runtime.runner import Runner
from fusionrt.runtime.session import BACKENDS, Session, runner_class

__all__ = [
    "BACKENDS", "MANIFEST", "SCHEMA_VERSION", "BackendError", "Bundle", "BundleError", "DimRange", "GraphSpec",
    "InputError", "Runner", "Session", "SessionClosedError", "TensorSpec", "graph_filename", "is_bundle",
    "runner_class",
]
