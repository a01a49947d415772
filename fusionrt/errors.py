"""Typed errors. Every message names the input, what was expected and what was received."""

from __future__ import annotations


class FusionrtError(Exception):
    """Base class of every error fusionrt raises on purpose."""


class DescribedError(FusionrtError):
    """An error in the ``name: expected ..., received ...`` form, with the three parts as attributes."""

    def __init__(self, name: str, expected: str, received: str) -> None:
        self.name = name
        self.expected = expected
        self.received = received
        super().__init__(f"{name}: expected {expected}, received {received}")


class InputError(DescribedError, ValueError):
    """An input (array, image, question, file) does not meet its contract."""


class ImageError(InputError):
    """The image cannot be read or is not a 128x128 RGB scene."""


class QuestionError(InputError):
    """The question is empty, too long, or uses words the tokenizer does not know."""


class NoObjectsError(InputError):
    """The detector found no object in the image, so no question about it can be answered."""


class NonFiniteOutputError(InputError):
    """A graph returned NaN or Inf: the feed drove it past what its precision carries (e.g. large values
    into a float16 graph). Raised instead of returning the values, so no answer comes from them."""


class CheckpointError(FusionrtError):
    """A checkpoint directory is missing files, has a bad config, or has mismatched weights."""


class BundleError(DescribedError):
    """A bundle directory is incomplete, altered, of a newer schema, or holds a graph that cannot be loaded."""


class BackendError(DescribedError):
    """A backend is unknown, not installed, or cannot run what was asked of it."""


class SessionClosedError(BackendError):
    """A Session (or Runner) was closed: it refuses to run rather than silently reloading its graph."""
