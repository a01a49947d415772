"""Parity tolerances per precision: the one place the pipeline's parity gates are chosen.

Until the parity issue's per-precision defaults exist (``fusionrt.parity.gates_for``), these are the
pipeline's own: fp32 must match PyTorch as export verification does; reduced precisions are held to
what their accuracy budgets allow, measured on the shipped model (fp16 logits within ~1e-2, int8 grid
cosine down to ~0.989 and logits up to 2.6 off on random grid feeds, argmax agreement on real scenes
>= 98-99.5%).
"""

from __future__ import annotations

from fusionrt.parity import Tolerance

_TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.9999, min_agreement=0.999),
    "fp16": Tolerance(max_abs=5e-2, min_cosine=0.999, min_agreement=0.995),
    # INT8 max abs is loose: the grid's random feeds sit outside the calibration ranges (measured on the
    # shipped model: logits up to 2.64 off at B=8 T=1 M=16, while real scenes agree on 100% of answers).
    # Cosine and real-scene agreement are the limits that matter there.
    "int8": Tolerance(max_abs=4.0, min_cosine=0.98, min_agreement=0.98),
    "int8-cpu": Tolerance(max_abs=4.0, min_cosine=0.98, min_agreement=0.98),
}


def parity_tolerance(precision: str, backend: str = "onnxruntime") -> Tolerance:
    """The tolerance the parity gate of ``precision`` on ``backend`` is held to (against fp32 PyTorch)."""
    del backend  # same limits on every backend for now; TensorRT may need its own
    return _TOLERANCES.get(precision, _TOLERANCES["int8"])
