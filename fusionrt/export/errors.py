"""Export errors: what could not be exported, and verification failures with their report."""

from __future__ import annotations

from typing import Any

from fusionrt.errors import DescribedError


class ExportError(DescribedError):
    """The module, its arguments or the output directory do not allow an export."""


class VerificationError(ExportError):
    """The exported graph failed a check (ONNX checker, symbolic dims, ONNX Runtime vs PyTorch on the grid).

    ``failures`` lists each failing check or grid point; ``report`` holds the full comparison when one ran.
    """

    def __init__(self, name: str, expected: str, failures: list[str], report: Any = None) -> None:
        self.failures = failures
        self.report = report
        shown = "\n  ".join(failures[:12]) + (f"\n  ... and {len(failures) - 12} more" if len(failures) > 12 else "")
        super().__init__(name, expected, f"{len(failures)} failure(s):\n  {shown}")
