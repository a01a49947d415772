"""The ground floor: bundle directories (manifest, graph specs, transactions, source fingerprints).

Everything else stands on this package; it imports nothing of fusionrt but :mod:`fusionrt.errors` and
:mod:`fusionrt.io`.
"""

from fusionrt.bundle.manifest import (
    CUSTOM_TASK,
    MANIFEST,
    SCHEMA_VERSION,
    VQA_TASK,
    Bundle,
    graph_filename,
    is_bundle,
    sha256_file,
)
from fusionrt.bundle.spec import DimRange, GraphSpec, TensorSpec
from fusionrt.bundle.transaction import BundleLockedError, BundleTransaction, file_entry, update_manifest

__all__ = [
    "CUSTOM_TASK", "MANIFEST", "SCHEMA_VERSION", "VQA_TASK", "Bundle", "BundleLockedError",
    "BundleTransaction", "DimRange", "GraphSpec", "TensorSpec", "file_entry", "graph_filename", "is_bundle",
    "sha256_file", "update_manifest",
]
