"""Errors of engine building and loading, in the ``name: expected ..., received ...`` form."""

from __future__ import annotations

from fusionrt.errors import BackendError


class MissingRequirementError(BackendError):
    """TensorRT, its builder, cuda-python or a CUDA device is missing; the message says how to get it."""


class BuildError(BackendError):
    """Polygraphy / TensorRT could not parse the graph or build the engine (parser errors included)."""


# How to get what is missing, per platform (one line each: the CLI prints the error on one line).
INSTALL_TENSORRT = ("on Jetson: JetPack 6's apt packages (sudo apt install nvidia-jetpack: TensorRT 10.3); "
                    "elsewhere: NVIDIA's index (pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu12, "
                    "tensorrt-cu13 for CUDA 13); fusionrt doctor says which")
INSTALL_CUDA_PYTHON = ("pip install \"cuda-python>=12.6.1,<13\" for a CUDA 12 driver (JetPack 6), "
                       "\"cuda-python>=13,<14\" for CUDA 13 (or the extras fusionrt[gpu] / fusionrt[gpu-cu13])")
GET_GPU = "a machine with an NVIDIA GPU and its driver (check with nvidia-smi)"
