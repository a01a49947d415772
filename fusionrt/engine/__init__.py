"""TensorRT engines for a bundle, built through Polygraphy (``polygraphy.backend.trt``).

Modules by concern: :mod:`.versions` (import tensorrt or tensorrt_lean, version checks), :mod:`.device`
(CUDA device facts through cuda-python, checked before TensorRT is touched), :mod:`.profiles`
(optimization profiles from the manifest's dim ranges), :mod:`.config` (Polygraphy ``CreateConfig``
from build options), :mod:`.entries` (the manifest's ``engines`` section and engine choice), :mod:`.build`
(``build_engines``: parse, build, write the plan atomically, record it). Heavy packages are imported lazily.
"""

from fusionrt.runtime.backends.tensorrt.errors import BuildError, MissingRequirementError

__all__ = ["BuildError", "MissingRequirementError"]
