"""Activation ranges, collected once over a calibration set, and the TensorRT legacy calibration cache.

Ranges come from onnxruntime's calibrators (``create_calibrator``). Samples have different shapes,
which the histogram calibrators cannot stack, so each sample is collected in its own
``collect_data`` call (histograms merge across calls). Only the tensors around MatMul/Gemm are
calibrated: they are the only ones either recipe quantizes.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionrt.calibration.errors import CalibrationError, QuantizationError
from fusionrt.io import atomic_write_bytes

METHODS = ("minmax", "percentile", "entropy")
CALIBRATED_OPS = ("MatMul", "Gemm")
# Chosen from the method comparison in benchmarks/RESULTS.md.
DEFAULT_METHOD = "minmax"
DEFAULT_PERCENTILE = 99.999


@dataclass
class Ranges:
    """``tensor name -> (low, high)`` and how they were computed."""

    method: str
    values: dict[str, tuple[float, float]]
    percentile: float | None = None
    samples: int = 0

    @property
    def label(self) -> str:
        return f"percentile {self.percentile:g}" if self.method == "percentile" else self.method

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "percentile": self.percentile, "samples": self.samples,
                "ranges": {k: [v[0], v[1]] for k, v in sorted(self.values.items())}}

    def tensors_data(self) -> Any:
        """The ranges as onnxruntime's ``TensorsData`` (what ``quantize_static`` reads from a cache)."""
        from onnxruntime.quantization.calibrate import TensorData, TensorsData

        return TensorsData(ort_method(self.method), {
            name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for name, (lo, hi) in self.values.items()})


def ort_method(method: str) -> Any:
    """onnxruntime's ``CalibrationMethod`` for one of :data:`METHODS`."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[method]


def check_method(method: str, percentile: float | None) -> None:
    if method not in METHODS:
        raise QuantizationError("method", f"one of {list(METHODS)}", repr(method))
    if method == "percentile" and (percentile is None or not 50.0 < percentile <= 100.0):
        raise QuantizationError("percentile", "a value in (50, 100], e.g. 99.99", repr(percentile))


def validate_ranges(values: Mapping[str, tuple[float, float]]) -> None:
    """Raise :class:`CalibrationError` for a NaN/infinite range or a zero-width one (a constant activation,
    which would get a zero scale: quantizing it divides by zero)."""
    if not values:
        raise CalibrationError("activation ranges", "at least one calibrated tensor", "none")
    for name, (low, high) in sorted(values.items()):
        if not (math.isfinite(low) and math.isfinite(high)):
            raise CalibrationError(f"activation range of {name}", "finite low and high", f"({low}, {high})")
        if not high > low:
            raise CalibrationError(f"activation range of {name}",
                                   "a non-zero width (an activation that varies over the calibration set)",
                                   f"({low}, {high}): a constant tensor")


class _OneFeed:
    """A calibration data reader of exactly one feed (see module docstring for why one)."""

    def __init__(self, feed: Mapping[str, np.ndarray]) -> None:
        self._feed: Mapping[str, np.ndarray] | None = feed

    def get_next(self) -> Mapping[str, np.ndarray] | None:
        feed, self._feed = self._feed, None
        return feed


def collect_ranges(fp32_path: str | Path, feeds: Iterable[Mapping[str, np.ndarray]], method: str = DEFAULT_METHOD,
                   percentile: float | None = DEFAULT_PERCENTILE, bins: int = 2048,
                   progress: Callable[[str], None] | None = None,
                   op_types: Sequence[str] = CALIBRATED_OPS, drop_constant: bool = False) -> Ranges:
    """Run the fp32 graph over ``feeds`` and compute every input and output range of the ``op_types`` nodes
    (MatMul/Gemm by default; a recipe's ``op_types``) with ``method``. ``drop_constant`` leaves out tensors that were
    constant over ``feeds`` (they stay float) instead of raising: the mask bias read by an Add is all zero over
    unpadded samples.
    (``minmax``, ``percentile`` at ``percentile``, or ``entropy``; histograms of ``bins`` bins: entropy's
    cost grows with bins squared). Nothing is written outside a temporary directory."""
    from onnxruntime.quantization.calibrate import create_calibrator

    check_method(method, percentile)
    options: dict[str, Any] = {
        "minmax": {"symmetric": False},
        "percentile": {"symmetric": True, "num_bins": bins, "percentile": percentile},
        "entropy": {"symmetric": True, "num_bins": bins, "num_quantized_bins": 128},
    }[method]
    with tempfile.TemporaryDirectory(prefix="fusionrt-calib-") as tmp:
        calibrator = create_calibrator(Path(fp32_path), list(op_types),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=ort_method(method), providers=["CPUExecutionProvider"],
                                       extra_options=options)
        count = 0
        # The histogram collector prints a line per call; keep the user's console for our progress.
        with contextlib.redirect_stdout(io.StringIO()):
            for count, feed in enumerate(feeds, 1):
                calibrator.collect_data(_OneFeed(feed))
                if progress and count % 64 == 0:
                    progress(f"calibration ({method}): {count} samples")
            if progress and method != "minmax":
                progress(f"calibration ({method}): computing ranges from histograms")
            data = calibrator.compute_data()
    values = {}
    for name, tensor in data.data.items():
        low, high = (float(np.asarray(v).item()) for v in tensor.range_value)
        if not (drop_constant and low == high):
            values[name] = (low, high)
    validate_ranges(values)
    return Ranges(method, values, percentile if method == "percentile" else None, count)


def save_ort_cache(ranges: Ranges, path: str | Path) -> Path:
    """Write ``ranges`` as onnxruntime's JSON calibration cache (``quantize_static(calibration_cache_path=...)``)."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges.tensors_data(), path)
    return Path(path)


TRT_CACHE_HEADER = "TRT-8601-EntropyCalibration2"


def trt_calibration_cache(ranges: Ranges, header: str = TRT_CACHE_HEADER) -> str:
    """TensorRT's legacy calibration cache text: a ``TRT-<version>-<algorithm>`` line, then
    ``<tensor>: <hex of float32 scale>`` per tensor, with scale = max(|low|, |high|) / 127."""
    lines = [header]
    for name, (low, high) in sorted(ranges.values.items()):
        scale = max(abs(low), abs(high)) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def write_trt_cache(ranges: Ranges, path: str | Path) -> Path:
    return atomic_write_bytes(path, trt_calibration_cache(ranges).encode())


def parse_trt_cache(text: str) -> dict[str, float]:
    """Tensor name -> scale of a cache written by :func:`trt_calibration_cache` (for checks and tests)."""
    out = {}
    for line in text.splitlines()[1:]:
        name, _, value = line.rpartition(": ")
        out[name] = struct.unpack(">f", bytes.fromhex(value))[0]
    return out
