"""argparse ``type=`` functions: a bad number is a usage error (exit 2, one line naming the option),
never a traceback later and never silently accepted (``--steps -1`` trained nothing and exited 0)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An int in ``[low, high]`` (either bound may be open)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, received {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an integer {_interval(low, high)}, received {value}")
        return value

    parse.__name__ = "integer"
    return parse


def real(low: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A finite float ``>= low`` (``> low`` with ``above``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if above else value < low)):
            bound = f" {'>' if above else '>='} {low:g}" if low is not None else ""
            raise argparse.ArgumentTypeError(f"expected a finite number{bound}, received {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def integer_list(low: int = 1) -> Callable[[str], list[int]]:
    """Comma-separated ints, each ``>= low``, at least one."""
    one = integer(low)

    def parse(text: str) -> list[int]:
        values = [one(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {low}, received {text!r}")
        return values

    parse.__name__ = "integer list"
    return parse


def _interval(low: int | None, high: int | None) -> str:
    if high is None:
        return f">= {low}"
    return f"<= {high}" if low is None else f"in [{low}, {high}]"


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the argument (exit 2), not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


POSITIVE = integer(1)
NON_NEGATIVE = integer(0)
PORT = integer(1, 65535)
SEED = integer(0, 2**32 - 1)  # numpy's seeds
