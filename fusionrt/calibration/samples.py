"""Calibration samples: real questions on calibration scenes, through the deployed pre-processing.

A :class:`CalibrationSet` holds N single-question feeds of the fusion graph, padded to common
widths, with masks giving each sample's own text and visual length; :meth:`CalibrationSet.feeds`
yields every sample at its own length, so calibration sees the variable shapes of deployment.
Samples come from the ``calibration`` seed split (disjoint from training and held-out scenes) or
from a user directory of npz feeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionrt.bundle.manifest import Bundle, sha256_file
from fusionrt.bundle.spec import GraphSpec
from fusionrt.calibration.errors import CalibrationError
from fusionrt.data.dataset import build_qa_set
from fusionrt.data.tokenizer import QuestionEncoder
from fusionrt.data.world import split_seeds
from fusionrt.errors import InputError
from fusionrt.io import atomic_path, read_npz
from fusionrt.parity.scenes import encode_scene_regions
from fusionrt.progress import SILENT, Progress
from fusionrt.runtime.validate import FeedValidator

KEYS = ("input_ids", "text_mask", "visual_feats", "visual_mask")
DTYPES = {"input_ids": np.int64, "text_mask": np.bool_, "visual_feats": np.float32, "visual_mask": np.bool_}
DEFAULT_SAMPLES = 256
# Below this, ranges of a 4-layer transformer depend on which few questions were drawn.
MIN_SAMPLES = 32
SAMPLES_FILE = "calibration.npz"


@dataclass
class CalibrationSet:
    """N samples padded to common widths: ``input_ids`` int64 [N,T], ``text_mask`` bool [N,T],
    ``visual_feats`` float32 [N,M,Dv], ``visual_mask`` bool [N,M]."""

    input_ids: np.ndarray
    text_mask: np.ndarray
    visual_feats: np.ndarray
    visual_mask: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in KEYS}

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        """Each sample as a batch-1 feed at its own text length and visual length."""
        for i in range(len(self)):
            text_len = max(1, int(self.text_mask[i].sum()))
            visual_len = max(1, int(self.visual_mask[i].sum()))
            yield {
                "input_ids": self.input_ids[i : i + 1, :text_len].copy(),
                "text_mask": self.text_mask[i : i + 1, :text_len].copy(),
                "visual_feats": self.visual_feats[i : i + 1, :visual_len].copy(),
                "visual_mask": self.visual_mask[i : i + 1, :visual_len].copy(),
            }

    def lengths(self) -> dict[str, list[int]]:
        """Distinct text and visual lengths present (how much shape variety calibration sees)."""
        return {"text": sorted({int(n) for n in self.text_mask.sum(axis=1)}),
                "visual": sorted({int(n) for n in self.visual_mask.sum(axis=1)})}

    def save(self, path: str | Path) -> str:
        """Write the set as an uncompressed npz (atomically); return its sha256."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **self.arrays())
            digest = sha256_file(tmp)
        return digest


def validate(arrays: dict[str, np.ndarray], spec: GraphSpec, min_samples: int = MIN_SAMPLES,
             where: str = "calibration set") -> None:
    """Raise :class:`CalibrationError` unless ``arrays`` are ``min_samples`` or more valid fusion samples."""
    for key in KEYS:
        if key not in arrays:
            raise CalibrationError(f"{where} {key}", f"an array named {key!r} (keys {list(KEYS)})",
                                   f"keys {sorted(arrays)}")
    visual_dim = spec.input("visual_feats").shape[2]
    ranks = {"input_ids": 2, "text_mask": 2, "visual_feats": 3, "visual_mask": 2}
    for key in KEYS:
        array = arrays[key]
        if array.dtype != DTYPES[key]:
            raise CalibrationError(f"{where} {key}", f"dtype {np.dtype(DTYPES[key])}", f"dtype {array.dtype}")
        if array.ndim != ranks[key]:
            raise CalibrationError(f"{where} {key}", f"rank {ranks[key]}", f"shape {list(array.shape)}")
    count = arrays["input_ids"].shape[0]
    if arrays["visual_feats"].shape[2] != visual_dim:
        raise CalibrationError(f"{where} visual_feats", f"last dim {visual_dim} (the bundle's visual_dim)",
                               f"shape {list(arrays['visual_feats'].shape)}")
    for key in KEYS:
        if arrays[key].shape[0] != count:
            raise CalibrationError(f"{where} {key}", f"{count} rows like input_ids", f"{arrays[key].shape[0]}")
    if arrays["text_mask"].shape != arrays["input_ids"].shape:
        raise CalibrationError(f"{where} text_mask", f"shape {list(arrays['input_ids'].shape)} like input_ids",
                               f"{list(arrays['text_mask'].shape)}")
    if arrays["visual_mask"].shape != arrays["visual_feats"].shape[:2]:
        raise CalibrationError(f"{where} visual_mask", f"shape {list(arrays['visual_feats'].shape[:2])}",
                               f"{list(arrays['visual_mask'].shape)}")
    if count < min_samples:
        raise CalibrationError(f"{where}", f"at least {min_samples} samples", f"{count}")
    if not arrays["text_mask"].any(axis=1).all():
        raise CalibrationError(f"{where} text_mask", "at least one real token per sample",
                               f"{int((~arrays['text_mask'].any(axis=1)).sum())} sample(s) without text")
    # The runtime's own checks (dim ranges, finite floats, token ids in the vocabulary), batch by batch.
    validator = FeedValidator(spec)
    step = spec.dims["B"].max
    for start in range(0, count, step):
        chunk = {k: np.ascontiguousarray(arrays[k][start : start + step]) for k in KEYS}
        try:
            validator(chunk)
        except CalibrationError:
            raise
        except Exception as exc:  # InputError from the runtime: say which rows
            raise CalibrationError(f"{where} rows {start}-{start + len(chunk['input_ids']) - 1}",
                                   "feeds the fusion graph accepts", str(exc)) from exc


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an npz file, never unpickling objects."""
    try:
        return read_npz(path)
    except InputError as exc:
        raise CalibrationError(exc.name, exc.expected, exc.received) from exc


def load_set(path: str | Path, spec: GraphSpec, min_samples: int = MIN_SAMPLES) -> CalibrationSet:
    """A set saved by :meth:`CalibrationSet.save`, validated against the fusion graph."""
    arrays = load_npz(path)
    validate(arrays, spec, min_samples, where=Path(path).name)
    return CalibrationSet(**{k: arrays[k] for k in KEYS}, source=str(path))


def _pad_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    text = max(r["input_ids"].shape[1] for r in rows)
    visual = max(r["visual_feats"].shape[1] for r in rows)
    dim = rows[0]["visual_feats"].shape[2]
    n = len(rows)
    out = {"input_ids": np.zeros((n, text), np.int64), "text_mask": np.zeros((n, text), bool),
           "visual_feats": np.zeros((n, visual, dim), np.float32), "visual_mask": np.zeros((n, visual), bool)}
    for i, r in enumerate(rows):
        t, m = r["input_ids"].shape[1], r["visual_feats"].shape[1]
        out["input_ids"][i, :t], out["text_mask"][i, :t] = r["input_ids"][0], r["text_mask"][0]
        out["visual_feats"][i, :m], out["visual_mask"][i, :m] = r["visual_feats"][0], r["visual_mask"][0]
    return out


def load_directory(directory: str | Path, spec: GraphSpec, min_samples: int = MIN_SAMPLES) -> CalibrationSet:
    """Every ``*.npz`` feed in ``directory`` (keys as the fusion graph's inputs, any batch size), one sample per row."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CalibrationError("--from", "a directory of npz feeds", f"no directory at {directory}")
    files = sorted(directory.glob("*.npz"))
    if not files:
        raise CalibrationError(str(directory), "*.npz files, each a feed of the fusion graph", "no npz file")
    rows: list[dict[str, np.ndarray]] = []
    for file in files:
        arrays = load_npz(file)
        validate(arrays, spec, min_samples=1, where=file.name)
        rows.extend({k: arrays[k][i : i + 1] for k in KEYS} for i in range(arrays["input_ids"].shape[0]))
    padded = _pad_rows(rows)
    validate(padded, spec, min_samples, where=str(directory))
    return CalibrationSet(**padded, source=f"directory {directory.resolve()} ({len(files)} files)")


def draw_scenes(bundle: Bundle, samples: int = DEFAULT_SAMPLES, start: int = 0, seed: int = 0,
                progress: Progress = SILENT) -> CalibrationSet:
    """``samples`` questions, one per calibration scene, pre-processed as the Answerer does (region encoder of
    the bundle on onnxruntime at fp32, the bundle's tokenizer); question kinds drawn at random per scene."""
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise CalibrationError("samples", "a positive integer", repr(samples))
    questions = QuestionEncoder.from_file(bundle.file("tokenizer.json"), int(bundle.model["max_text_len"]))
    qa = build_qa_set(split_seeds("calibration", samples, start=start), questions,
                      max_regions=int(bundle.model["max_visual_len"]), progress=progress,
                      description="calibration scenes")
    rng = np.random.default_rng(seed)
    # One question per scene, of a random kind, so N samples cover N scenes and every question template.
    chosen = np.array([rng.choice(np.flatnonzero(qa.scene_index == s)) for s in range(samples)])
    progress.note(f"encoding {int(qa.region_offsets[-1])} regions with the bundle's region encoder")
    visual, visual_mask = encode_scene_regions(bundle, qa)
    seeds = split_seeds("calibration", samples, start=start)
    return CalibrationSet(
        input_ids=np.ascontiguousarray(qa.input_ids[chosen]), text_mask=np.ascontiguousarray(qa.text_mask[chosen]),
        visual_feats=visual, visual_mask=visual_mask,
        source=f"calibration scenes seeds {seeds.start}-{seeds.stop - 1}, one question each (seed {seed})",
    )
