"""The runner interface every backend implements.

The public methods (:meth:`Runner.activate`, :meth:`Runner.infer`, :meth:`Runner.deactivate`)
validate and keep state; a backend overrides only the ``*_impl`` methods. Adding a backend
(TensorRT comes next) is one module with one subclass, registered in
:data:`fusionrt.runtime.session.BACKENDS`; callers do not change.

Lifecycle, as Polygraphy's BaseRunner: ``infer`` refuses an inactive runner with
:class:`SessionClosedError` (it never reloads behind the caller's back), and ``deactivate`` first
stops new calls, then waits for the calls in flight, and only then releases the engine, so no call
ever sees a half-released engine.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from fusionrt.bundle.contract import safe_bounds
from fusionrt.bundle.manifest import Bundle
from fusionrt.bundle.spec import GraphSpec
from fusionrt.errors import BackendError, NonFiniteOutputError, SessionClosedError
from fusionrt.runtime.validate import FeedValidator


def _check_finite(runner: Runner, name: str, array: np.ndarray) -> None:
    """Raise :class:`NonFiniteOutputError` if a float output holds NaN or Inf (a finite sum proves it has
    none: one reduction on the common path)."""
    if array.dtype.kind == "f" and not np.isfinite(np.add.reduce(array, axis=None, dtype=np.float64)) \
            and not np.isfinite(array).all():
        count = int((~np.isfinite(array)).sum())
        raise NonFiniteOutputError(
            f"{name} of graph {runner.graph.name!r} ({runner.backend}, {runner.precision})",
            "finite outputs (the feed's values may be past what this precision can carry)",
            f"{count} non-finite value(s) of {array.size}")


class Runner(abc.ABC):
    """Runs one graph of a bundle at one precision on one backend.

    ``infer`` may be called from several threads at once once the runner is active; a backend whose
    engine is not thread-safe must serialize inside ``infer_impl``.
    """

    backend: ClassVar[str] = "abstract"
    precisions: ClassVar[tuple[str, ...] | None] = None  # None: whatever the bundle has

    def __init__(self, bundle: Bundle, graph: str = "fusion", precision: str = "fp32") -> None:
        self.bundle = bundle
        self.graph: GraphSpec = bundle.graph(graph)
        if self.precisions is not None and precision not in self.precisions:
            raise BackendError("precision", f"one of {list(self.precisions)} on the {self.backend} backend",
                               repr(precision))
        self.precision = precision
        self._validate = FeedValidator(self.graph, safe_bounds(bundle.manifest, self.graph, precision))
        # _lifecycle serializes activate/deactivate (held while deactivate waits, so a concurrent
        # activate cannot slip in); _calls guards the active flag and the count of calls in flight.
        self._lifecycle = threading.Lock()
        self._calls = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._active = False

    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """Load the graph (idempotent)."""
        with self._lifecycle:
            if not self._active:
                self.activate_impl()
                with self._calls:
                    self._active = True

    @contextlib.contextmanager
    def in_call(self) -> Iterator[None]:
        """Count a call as in flight for its whole block (``deactivate`` waits for it); refuse an inactive runner
        with :class:`SessionClosedError`. Backends wrap their extra entry points (``infer_torch``) in it too."""
        with self._calls:
            if not self._active:
                raise SessionClosedError(f"{self.backend} runner of graph {self.graph.name!r}",
                                         "an active runner (Session not closed; Runner.activate() called)",
                                         "a call after close()/deactivate() (or before activate())")
            self._in_flight += 1
        try:
            yield
        finally:
            with self._calls:
                self._in_flight -= 1
                if not self._in_flight:
                    self._calls.notify_all()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate ``feed`` against the manifest, run, and return every output by name.

        Raises :class:`SessionClosedError` if the runner is not active (never activated, or deactivated).
        """
        with self.in_call():
            outputs = self.infer_impl(self._validate(feed))
        missing = [t.name for t in self.graph.outputs if t.name not in outputs]
        if missing:
            raise BackendError(f"{self.backend} outputs", f"{[t.name for t in self.graph.outputs]}",
                               f"a result without {missing}")
        for name, array in outputs.items():
            _check_finite(self, name, array)
        return outputs

    def deactivate(self) -> None:
        """Refuse new calls, wait for the calls in flight, then release the engine (idempotent)."""
        with self._lifecycle:
            with self._calls:
                if not self._active:
                    return
                self._active = False
                self._calls.wait_for(lambda: not self._in_flight)
            self.deactivate_impl()

    def describe(self) -> dict[str, Any]:
        """Backend, graph, precision and whatever the backend adds (providers, device ...)."""
        return {"backend": self.backend, "graph": self.graph.name, "precision": self.precision}

    @abc.abstractmethod
    def activate_impl(self) -> None:
        """Load the engine; raise :class:`BundleError` or :class:`BackendError` if it cannot."""

    @abc.abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on a validated feed; return numpy arrays keyed by output name."""

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook, most engines need no explicit release
        """Release the engine."""
