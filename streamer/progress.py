"""Progress of a long job over items (frames): a tqdm bar on a terminal, log lines otherwise.

``progress(desc, total)`` picks the display from the stream (stderr by default)::

    with progress("clip.mp4", total=info.expected_frames) as bar:
        for frame in frames:
            ...
            bar.update(1)

On a TTY it is a tqdm bar (count, rate, ETA when ``total`` is known). Elsewhere (a log
file, CI, a pipe) it logs one INFO line every ``interval_s`` seconds and a summary line at
the end, through the ``streamer.progress`` logger, so ``--log-level`` controls it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

from tqdm import tqdm

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
"""Seconds between two log lines of ``LogProgress``."""

FALLBACK_SIZE = (80, 24)
"""``(columns, lines)`` assumed for a terminal that reports no size."""


class Progress(ABC):
    """Counts done items; subclasses display them. A context manager; ``close()`` is idempotent.

    Leaving the ``with`` block by an exception marks the job ``stopped`` before closing, so the
    final display does not claim it finished.
    """

    stopped: bool = False

    @abstractmethod
    def update(self, n: int = 1) -> None:
        """Record ``n`` more items done."""

    @abstractmethod
    def close(self) -> None:
        """Finish the display (final bar state or summary line)."""

    def set_postfix(self, text: str) -> None:
        """Show ``text`` after the counts from now on (e.g. ``"workers 2/2"``)."""
        self.postfix = text

    postfix: str = ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.stopped = True
        self.close()


class BarProgress(Progress):
    """A tqdm bar on ``stream``: items done, items/s, and ETA when ``total`` is known."""

    def __init__(self, desc: str, total: int | None, unit: str, stream: TextIO) -> None:
        # Follow the terminal's size; a terminal reporting 0 x 0 (a pty nobody sized, e.g.
        # `docker run -t`, `script`) would make tqdm print nothing, so it gets FALLBACK_SIZE.
        columns, lines = _terminal_size(stream)
        self._bar = tqdm(desc=desc, total=total, unit=unit, file=stream, leave=True,
                         dynamic_ncols=columns > 0,
                         ncols=None if columns > 0 else FALLBACK_SIZE[0],
                         nrows=None if lines > 0 else FALLBACK_SIZE[1])

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_postfix(self, text: str) -> None:
        super().set_postfix(text)
        self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self._bar.close()


class LogProgress(Progress):
    """Plain log lines, at most one per ``interval_s`` seconds, plus a summary on ``close()``.

    Lines read ``"clip.mp4: 120/300 frames, 24.1 frames/s"`` (``"120 frames"`` when the total is
    unknown); the summary ``"clip.mp4: done, 300 frames in 12.4 s, 24.2 frames/s"`` (``stopped``
    instead of ``done`` when the job failed).
    ``clock`` returns seconds (monotonic); it is injectable so the cadence can be tested.
    """

    def __init__(self, desc: str, total: int | None, unit: str, interval_s: float = DEFAULT_INTERVAL_S,
                 log: logging.Logger = logger, clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s}")
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self._interval = interval_s
        self._log = log
        self._clock = clock
        self._start = clock()
        self._next_line = self._start + interval_s
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now >= self._next_line:
            self._next_line = now + self._interval
            count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
            self._log.info("%s: %s %s, %.1f %ss/s%s", self.desc, count, self._units(self.done),
                           self._rate(now), self.unit, f", {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        self._log.info("%s: %s, %d %s in %.1f s, %.1f %ss/s", self.desc,
                       "stopped" if self.stopped else "done", self.done, self._units(self.done),
                       now - self._start, self._rate(now), self.unit)

    def _units(self, n: int) -> str:
        return self.unit if n == 1 else f"{self.unit}s"

    def _rate(self, now: float) -> float:
        elapsed = now - self._start
        return self.done / elapsed if elapsed > 0 else 0.0


def progress(desc: str, total: int | None, *, unit: str = "frame", stream: TextIO | None = None,
             interval_s: float = DEFAULT_INTERVAL_S) -> Progress:
    """A ``BarProgress`` when ``stream`` (default ``sys.stderr``) is a TTY, else a ``LogProgress``.

    ``total`` is the expected item count (None when unknown: no ETA); ``unit`` names one item.
    """
    out = sys.stderr if stream is None else stream
    if _is_tty(out):
        return BarProgress(desc, total, unit, out)
    return LogProgress(desc, total, unit, interval_s=interval_s)


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    """``(columns, lines)`` of the terminal behind ``stream``; 0 for what it does not report."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False
