"""Export errors: what could not be exported, and verification failures with their report."""

from __future__ import annotations

from typing import Any

from fusionrt.errors import FusionrtError


class ExportError(FusionrtError):
    """The module, its arguments or the output directory do not allow an export."""

    def __init__(self, name: str, expected: str, received: str) -> None:
        self.name = name
        self.expected = expected
        self.received = received
        super().__init__(f"{name}: expected {expected}, received {received}")


class VerificationError(ExportError):
    """The exported graph failed a check (ONNX checker, symbolic dims, ONNX Runtime vs PyTorch on the grid).

    ``failures`` lists each failing check or grid point; ``report`` holds the full comparison when one ran.
    """

    def __init__(self, name: str, expected: str, failures: list[str], report: Any = None) -> None:
        self.failures = failures
        self.report = report
        shown = "\n  ".join(failures[:12]) + (f"\n  ... and {len(failures) - 12} more" if len(failures) > 12 else "")
        super().__init__(name, expected, f"{len(failures)} failure(s):\n  {shown}")
