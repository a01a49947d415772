"""Measure the KV-cache forms of a caption bundle per backend and record the faster one in its manifest.

Each candidate (backend x form x batch) is one forced greedy decode of ``steps`` tokens (EOS ignored, so
every candidate does the same work) after the visual cache; candidates are timed step by step in blocks of
consecutive decodes, in rotating order with a pause before each block (:func:`time_decodes`). A decode's time
is the median start plus the per-position medians (on a shared machine one preempted step would otherwise
decide). A backend's form is the one with the lower geometric mean of that time over the batches. The choice
goes into the manifest's ``cache_forms`` section, which :func:`fusionrt.caption.forms.cache_form` reads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


def time_decodes(steppers: dict[str, Stepper], visual_feats: np.ndarray, visual_mask: np.ndarray, steps: int,
                 bos: int, runs: int = 20, block: int = 5, pause: float = 0.2) -> dict[str, dict[str, Any]]:
    """Per stepper: ``start_ms`` (median), ``per_token_ms`` (median at each position) and ``decode_ms`` (their
    sum) over ``runs`` forced decodes, after one warm-up decode each; blocks of ``block`` consecutive decodes
    after ``pause`` seconds and one untimed decode, steppers in rotating order block by block."""
    names = list(steppers)
    samples: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in names}
    for name in names:  # warm-up: sessions size their arenas, torch picks its kernels
        forced_decode(steppers[name], visual_feats, visual_mask, steps, bos)
    for round_index in range((runs + block - 1) // block):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(pause)  # the previous engine's spinning threads go to sleep
            forced_decode(steppers[name], visual_feats, visual_mask, steps, bos)  # wakes this engine's threads
            samples[name] += [forced_decode(steppers[name], visual_feats, visual_mask, steps, bos)
                              for _ in range(block)]
    out = {}
    for name, decodes in samples.items():
        per_step = 1e3 * np.median(np.array([d[1] for d in decodes]), axis=0)
        start = 1e3 * float(np.median([d[0] for d in decodes]))
        out[name] = {"decodes": len(decodes), "start_ms": start, "per_token_ms": per_step.round(5).tolist(),
                     "decode_ms": start + float(per_step.sum())}
    return out


def measure_cache_forms(bundle: Bundle, backends: Sequence[str] = ("onnxruntime", "openvino"),
                        batches: Sequence[int] = (1, 8), steps: int = 40, runs: int = 20,
                        threads: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Median milliseconds of one forced decode: ``{backend: {form: {"B=1": ms, ...}}}``."""
    if not 1 <= steps < int(bundle.model["max_text_len"]):
        raise InputError("steps", f"an integer in [1, {int(bundle.model['max_text_len']) - 1}]", repr(steps))
    bos = int(bundle.model["bos_id"])
    steppers = {}
    for backend in backends:
        if backend not in FORMS:
            raise InputError("backend", f"one of {sorted(FORMS)}", repr(backend))
        for form in available_forms(bundle):
            steppers[(backend, form)] = make_stepper(bundle, backend, threads=threads, form=form)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for batch in batches:
        feats, mask = timing_inputs(bundle, batch)
        times = time_decodes({f"{b}/{f}": s for (b, f), s in steppers.items()}, feats, mask, steps, bos, runs)
        for backend, form in steppers:
            out.setdefault(backend, {}).setdefault(form, {})[f"B={batch}"] = times[f"{backend}/{form}"]["decode_ms"]
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
