"""Serve a bundle with NVIDIA Triton Inference Server: write a model repository, start a real server.

``write_repository(bundle, out, RepositoryOptions(...))`` writes ``fusion``, ``region_encoder`` and
``answer`` models; ``TritonServer(repo).start()`` runs ``tritonserver`` from the nvidia-pytriton wheel.
Nothing here imports torch; the Python-backend models run the bundle on onnxruntime.
"""

from fusionrt.serve.repository import BACKENDS, RepositoryOptions, write_repository
from fusionrt.serve.server import ServeError, TritonServer, find_triton

__all__ = ["BACKENDS", "RepositoryOptions", "ServeError", "TritonServer", "find_triton", "write_repository"]
