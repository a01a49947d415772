"""Measure the KV-cache forms of a caption bundle per backend and record the faster one in its manifest.

Each candidate (backend x form x batch) is one forced greedy decode of ``steps`` tokens (EOS ignored, so
every candidate does the same work) after the visual cache; candidates are timed in blocks of consecutive
decodes in rotating order (:func:`fusionrt.bench.timing.time_blocks`). A backend's form is the one with the
lower geometric mean over the batches of the median decode time. The choice goes into the manifest's
``cache_forms`` section, which :func:`fusionrt.caption.forms.cache_form` reads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.bench.timing import time_blocks
from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.transaction import update_manifest
from fusionrt.caption.forms import FORMS, MANIFEST_SECTION, available_forms, make_stepper
from fusionrt.caption.steppers import Stepper
from fusionrt.errors import InputError


def forced_decode(stepper: Stepper, visual_feats: np.ndarray, visual_mask: np.ndarray, steps: int,
                  bos: int) -> tuple[float, list[float]]:
    """(seconds of ``start``, seconds of each step) of a greedy decode forced to ``steps`` tokens."""
    started = time.perf_counter()
    stepper.start(visual_feats, visual_mask)
    start_seconds = time.perf_counter() - started
    ids = np.full((visual_feats.shape[0], 1), bos, dtype=np.int64)
    per_step = []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = stepper.step(ids)
        ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        per_step.append(time.perf_counter() - t0)
    return start_seconds, per_step


def timing_inputs(bundle: Bundle, batch: int, regions: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random visual features of ``regions`` real regions per row (timing does not depend on the values)."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((batch, regions, int(bundle.model["visual_dim"]))).astype(np.float32)
    return feats, np.ones((batch, regions), dtype=bool)


def measure_cache_forms(bundle: Bundle, backends: Sequence[str] = ("onnxruntime", "openvino"),
                        batches: Sequence[int] = (1, 8), steps: int = 40, runs: int = 20,
                        threads: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Median milliseconds of one forced decode: ``{backend: {form: {"B=1": ms, ...}}}``."""
    if not 1 <= steps < int(bundle.model["max_text_len"]):
        raise InputError("steps", f"an integer in [1, {int(bundle.model['max_text_len']) - 1}]", repr(steps))
    bos = int(bundle.model["bos_id"])
    candidates, keys = {}, {}
    for backend in backends:
        if backend not in FORMS:
            raise InputError("backend", f"one of {sorted(FORMS)}", repr(backend))
        for form in available_forms(bundle):
            stepper = make_stepper(bundle, backend, threads=threads, form=form)
            for batch in batches:
                feats, mask = timing_inputs(bundle, batch)
                name = f"{backend}/{form}/B={batch}"
                candidates[name] = (lambda s=stepper, f=feats, m=mask: forced_decode(s, f, m, steps, bos))
                keys[name] = (backend, form, f"B={batch}")
    times = time_blocks(candidates, runs, warmup=2, block=5, pause=0.2)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, (backend, form, batch) in keys.items():
        out.setdefault(backend, {}).setdefault(form, {})[batch] = float(np.median(times[name]))
    return out


def choose(measured: dict[str, dict[str, dict[str, float]]]) -> dict[str, str]:
    """Per backend, the form with the lowest geometric mean of its decode times over the batches."""
    return {backend: min(forms, key=lambda f: float(np.exp(np.mean(np.log(list(forms[f].values()))))))
            for backend, forms in measured.items()}


def choose_cache_forms(bundle_dir: str | Path, *, record: bool = True, command: str = "",
                       **options: Any) -> dict[str, Any]:
    """Measure (:func:`measure_cache_forms` ``options``), choose, and (``record``) write the manifest's
    ``cache_forms`` section: ``choice``, the measured ms, steps, the load average and ``command``."""
    bundle = Bundle.open(bundle_dir)
    load_before = os.getloadavg()[0]
    measured = measure_cache_forms(bundle, **options)
    section = {"choice": choose(measured), "decode_ms": measured,
               "steps": options.get("steps", 40), "load_average": [load_before, os.getloadavg()[0]],
               "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command}
    if record:
        kept = {k: v for k, v in bundle.manifest.get(MANIFEST_SECTION, {}).get("choice", {}).items()
                if k not in section["choice"]}
        section["choice"] = {**kept, **section["choice"]}
        update_manifest(bundle.path, sections={MANIFEST_SECTION: section})
    return section
