"""Progress bars: drawn on a terminal, silent when quiet or when the stream is not a terminal."""

from __future__ import annotations

import io

from fusionrt.progress import Progress, progress_for


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_are_drawn_on_a_terminal():
    stream = _Terminal()
    progress = Progress(stream=stream)
    assert list(progress.iterate(range(5), "phase-a")) == [0, 1, 2, 3, 4]
    assert "phase-a" in stream.getvalue()
    assert "5/5" in stream.getvalue()
    assert "phase-a" in progress.timings


def test_silent_when_the_stream_is_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream=stream)
    with progress.phase("phase-b", total=3) as bar:
        bar.update(3)
    progress.note("a note")
    assert stream.getvalue() == ""
    assert bar.n == 3
    assert "phase-b" in progress.timings


def test_quiet_is_silent_even_on_a_terminal():
    progress = progress_for(quiet=True)
    assert progress.enabled is False
