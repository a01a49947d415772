"""Typed errors of calibration and quantization, in the ``name: expected ..., received ...`` form."""

from __future__ import annotations

from typing import Any

from fusionrt.errors import DescribedError, InputError


class CalibrationError(InputError):
    """A calibration set, or the ranges computed from it, cannot be used (too few samples, bad arrays, NaN range)."""


class QuantizationError(DescribedError):
    """A precision cannot be produced from this bundle (missing fp32 graph, unknown method, converter failure)."""


class BudgetExceededError(QuantizationError):
    """A quantized graph misses its accuracy budget on held-out scenes; ``report`` holds the measurements."""

    def __init__(self, name: str, expected: str, received: str, report: dict[str, Any]) -> None:
        super().__init__(name, expected, received)
        self.report = report
