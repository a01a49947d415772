"""Which form of the KV cache each backend runs, and the stepper that runs it.

- ``concat``: ``caption_step``; the present cache grows by a Concat every step (the backend allocates P+S
  positions and copies the past into them).
- ``buffer``: ``caption_step_buffer``; one buffer of the bundle's capacity per sequence, read in place, the new
  positions written by the stepper (:mod:`fusionrt.caption.buffer`).

The faster form per backend is measured (:func:`fusionrt.bench.caption_forms.choose_cache_forms`, run by
``benchmarks/bench_caption_cache_form.py --record``) and recorded in the bundle's manifest under
``cache_forms.choice``; a bundle without a recorded choice gets :data:`DEFAULT_FORMS`, what that measurement
chose on our 2-core machines (``benchmarks/RESULTS.md``). A form whose graph the bundle lacks at the requested
precision (a bundle exported before the buffer form, quantized graphs made only of ``caption_step``) falls
back to ``concat``.
"""

from __future__ import annotations

from typing import Any

from fusionrt.bundle.manifest import Bundle
from fusionrt.caption.buffer import CAPTION_STEP_BUFFER, OpenVinoBufferStepper, OrtBufferStepper
from fusionrt.caption.steppers import CAPTION_STEP, OpenVinoStepper, OrtStepper, Stepper
from fusionrt.caption.trt_stepper import TensorRTStepper
from fusionrt.errors import InputError

CONCAT, BUFFER = "concat", "buffer"
FORM_GRAPHS = {CONCAT: CAPTION_STEP, BUFFER: CAPTION_STEP_BUFFER}
FORMS: dict[str, dict[str, type]] = {
    "onnxruntime": {CONCAT: OrtStepper, BUFFER: OrtBufferStepper},
    "openvino": {CONCAT: OpenVinoStepper, BUFFER: OpenVinoBufferStepper},
}
# Measured on the shared 2-core machine (benchmarks/RESULTS.md, "Captioning"): OpenVINO's buffer form is clearly
# faster; on ONNX Runtime the two forms are within noise in throughput, and the buffer form's cost is flat over
# the positions while the concat form's grows (B=8: last token 1.2-1.5x the first).
DEFAULT_FORMS = {"onnxruntime": BUFFER, "openvino": BUFFER}
MANIFEST_SECTION = "cache_forms"
# TensorRT runs the concat graph only, with its own fixed buffers (two per cache tensor, used in turn: a step's
# present is the next step's past as it lies), so it has no form to choose and is not in the measured FORMS.
FIXED_FORM = {"tensorrt": TensorRTStepper}
STEPPER_BACKENDS = (*FORMS, *FIXED_FORM)


def available_forms(bundle: Bundle, precision: str = "fp32") -> list[str]:
    """The forms whose step graph ``bundle`` holds at ``precision``."""
    return [form for form, graph in FORM_GRAPHS.items()
            if graph in bundle.graphs and precision in bundle.graph(graph).precisions]


def cache_form(bundle: Bundle, backend: str, precision: str = "fp32") -> str:
    """The form ``backend`` runs for ``bundle`` at ``precision``: the recorded choice, else the default, else
    ``concat`` when the chosen form's graph is missing."""
    if backend not in FORMS:
        raise InputError("backend", f"one of {sorted(FORMS)} for a caption bundle", repr(backend))
    recorded = bundle.manifest.get(MANIFEST_SECTION, {}).get("choice", {})
    form = recorded.get(backend, DEFAULT_FORMS[backend])
    return form if form in available_forms(bundle, precision) else CONCAT


def make_stepper(bundle: Bundle, backend: str = "onnxruntime", precision: str = "fp32", *,
                 threads: int | None = None, form: str | None = None, **options: Any) -> Stepper:
    """A stepper for ``backend`` in ``form`` (``None``: :func:`cache_form`'s choice; TensorRT: its one form)."""
    if backend in FIXED_FORM and form in (None, CONCAT):
        return FIXED_FORM[backend](bundle, precision, threads=threads, **options)
    chosen = cache_form(bundle, backend, precision) if form is None else form
    if chosen not in FORMS.get(backend, {}):
        raise InputError("form", f"one of {sorted(FORM_GRAPHS)}", repr(form))
    return FORMS[backend][chosen](bundle, precision, threads=threads, **options)
