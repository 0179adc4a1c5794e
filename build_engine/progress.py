"""Progress display of the build step: one line per finished stage, tqdm bars on a terminal.

``build_engine`` must not import ``streamer``, so it has this small helper of its own::

    progress = Progress(["export", "ONNX check", "engine build", "parity"])
    with progress.stage("export"):
        export_onnx(...)
    with progress.stage("parity"):
        for frame in progress.bar(frames, "frames"):
            ...

Each finished stage prints ``[i/n] name: done in 1.2 s`` (or ``FAILED``) to ``stream``
whether or not it is a terminal; the bars (tqdm) only appear on a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO, TypeVar

from tqdm import tqdm

_T = TypeVar("_T")


class Progress:
    """Stages of one build, in order; ``enabled=None`` shows bars only on a terminal."""

    def __init__(self, stages: Sequence[str], stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stages = list(stages)
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.bars = bool(isatty and isatty()) if enabled is None else enabled
        self.current: str | None = None

    def _prefix(self, name: str) -> str:
        if name in self.stages:
            return f"[{self.stages.index(name) + 1}/{len(self.stages)}] {name}"
        return name

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage and print how it ended; exceptions pass through after a FAILED line."""
        self.current = name
        start = time.perf_counter()
        if self.bars:
            print(f"{self._prefix(name)} ...", file=self.stream, flush=True)
        try:
            yield
        except BaseException:
            print(f"{self._prefix(name)}: FAILED after {time.perf_counter() - start:.1f} s",
                  file=self.stream, flush=True)
            raise
        finally:
            self.current = None
        print(f"{self._prefix(name)}: done in {time.perf_counter() - start:.1f} s", file=self.stream, flush=True)

    def bar(self, items: Iterable[_T], desc: str, total: int | None = None) -> Iterable[_T]:
        """``items`` with a tqdm bar (terminal only); the bar disappears when done."""
        return tqdm(items, desc=desc, total=total, file=self.stream, leave=False, disable=not self.bars)

    def counter(self, desc: str, total: int | None = None) -> tqdm:
        """A tqdm bar to ``update()`` by hand (e.g. from TensorRT's progress monitor); close it when done."""
        return tqdm(desc=desc, total=total, file=self.stream, leave=False, disable=not self.bars)

    def note(self, text: str) -> None:
        """One line of information (always printed)."""
        print(text, file=self.stream, flush=True)
