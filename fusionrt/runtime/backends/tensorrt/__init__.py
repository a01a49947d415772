"""TensorRT backend: the runner and what it stands on (CUDA through cuda-python, device facts, TensorRT
versions, the manifest's engine entries, optimization profiles, errors). The builder lives in
:mod:`fusionrt.engine` and imports from here, never the other way."""
