"""Errors of bundles and backends, in the ``name: expected ..., received ...`` form of :mod:`fusionrt.errors`."""

from __future__ import annotations

from fusionrt.errors import FusionrtError, InputError

__all__ = ["BackendError", "BundleError", "InputError"]


class _Described(FusionrtError):
    def __init__(self, name: str, expected: str, received: str) -> None:
        self.name = name
        self.expected = expected
        self.received = received
        super().__init__(f"{name}: expected {expected}, received {received}")


class BundleError(_Described):
    """A bundle directory is incomplete, altered, of a newer schema, or holds a graph that cannot be loaded."""


class BackendError(_Described):
    """A backend is unknown, not installed, or cannot run what was asked of it."""
