"""Errors of bundles and backends, in the ``name: expected ..., received ...`` form of :mod:`fusionrt.errors`."""

from __future__ import annotations

from fusionrt.errors import DescribedError, InputError

__all__ = ["BackendError", "BundleError", "InputError", "SessionClosedError"]


class BundleError(DescribedError):
    """A bundle directory is incomplete, altered, of a newer schema, or holds a graph that cannot be loaded."""


class BackendError(DescribedError):
    """A backend is unknown, not installed, or cannot run what was asked of it."""


class SessionClosedError(BackendError):
    """A Session (or Runner) was closed: it refuses to run rather than silently reloading its graph."""
