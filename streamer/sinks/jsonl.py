"""JSONL sink: one frame message per line, to stdout or to a file rotated by size.

Rotation: before a line would make ``PATH`` larger than ``max_bytes``, ``PATH.(N-1)`` →
``PATH.N`` … ``PATH`` → ``PATH.1`` and a new ``PATH`` is started (``backups = 0``: ``PATH`` is
truncated instead). A line is never split; a single line longer than ``max_bytes`` gets a file
of its own. Lines are held and written in one call whenever the sink has no more lines waiting
(:meth:`~streamer.sinks.base.BufferedSink._idle`) or :data:`WRITE_BUFFER` bytes are held: at a
camera's pace every line is written as it comes, so ``tail -F PATH`` follows it; in a burst
(``streamer bench-pipeline``, a backlog after a stall) hundreds of kilobytes go in one ``write``
instead of a ``write`` and an ``lseek`` per 10 KB line (the file's size is counted). A line counts
as sent once written; a failed write (disk full) counts its lines as dropped.

(``logging.handlers.RotatingFileHandler`` is built around log records and with ``backupCount=0``
never truncates; the rotation here is the few lines below.)

Config: ``type = "jsonl"``, ``path`` (``-``: stdout), ``max_bytes``, ``backups``; ``--sink jsonl:PATH``.
"""

from __future__ import annotations

import logging
import os
import sys
from io import FileIO
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from streamer.frame_json import encode_line
from streamer.sinks.base import BufferedSink, Delivery, Disconnected
from streamer.sinks.config import SinkSettings
from streamer.sinks.registry import SinkType, register_sink

log = logging.getLogger(__name__)

WRITE_BUFFER = 256 * 1024
"""Bytes of lines held for one ``write`` while more lines wait (a 1080p frame of 20 instances is
an 11 KB line); whatever is held is written whenever none waits."""


class JsonlSinkConfig(SinkSettings):
    """One JSON message per line, to a size-rotated file or to stdout (``path = "-"``)."""

    type: Literal["jsonl"]
    path: str = Field(min_length=1)
    """File path, or ``-`` for stdout. The directory must exist and be writable."""
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=0)
    """Rotate before a write would make the file larger than this (0: never rotate)."""
    backups: int = Field(default=5, ge=0)
    """Rotated files kept: ``PATH.1`` (newest) … ``PATH.N``."""

    @field_validator("path")
    @classmethod
    def _writable(cls, path: str) -> str:
        problem = None if path == "-" else jsonl_path_problem(path)
        if problem is not None:
            raise ValueError(problem)
        return path

    @property
    def label(self) -> str:
        return "jsonl:stdout" if self.path == "-" else f"jsonl:{self.path}"


def jsonl_path_problem(path: str) -> str | None:
    """Why this process could not write the JSONL file ``path``; None if it can.

    Checked when the configuration is loaded (``config check`` and the daemon's start): no retry
    fixes a missing directory or a missing permission, so it is a configuration error.
    """
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        return "is a directory; give a file path inside it (e.g. DIR/frames.jsonl)"
    if not parent.exists():
        return f"directory {str(parent)!r} does not exist; create it or choose another path"
    if not parent.is_dir():
        return f"{str(parent)!r} is not a directory; choose another path"
    if target.exists():
        if not os.access(target, os.W_OK):
            return "the file exists and is not writable by this user; fix its permissions or choose another path"
    elif not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {str(parent)!r} is not writable by this user; fix its permissions or choose another path"
    return None


def rotated_path(path: str, index: int) -> str:
    """The name of backup ``index`` (1 = newest) of ``path``: ``PATH.index``."""
    return f"{path}.{index}"


def rotate(path: str, backups: int) -> None:
    """Shift ``PATH.1..PATH.(backups-1)`` up by one and move ``PATH`` to ``PATH.1``; the oldest
    backup is overwritten. ``backups = 0`` removes ``PATH``. Missing files are skipped."""
    if backups == 0:
        if os.path.exists(path):
            os.remove(path)
        return
    for index in range(backups - 1, 0, -1):
        if os.path.exists(rotated_path(path, index)):
            os.replace(rotated_path(path, index), rotated_path(path, index + 1))
    if os.path.exists(path):
        os.replace(path, rotated_path(path, 1))


class JsonlSink(BufferedSink):
    """Writes each message as one compact JSON line (``streamer.frame_json.encode_line``).

    File lines are held until the sink's buffer runs dry (:meth:`_idle`) or :data:`WRITE_BUFFER`
    bytes are held, then written in one call: a line counts as sent once written, and as dropped
    if its write failed (the sink then reopens the file, as after any broken transport)."""

    def __init__(self, cfg: JsonlSinkConfig) -> None:
        super().__init__(cfg.label, cfg.mask_encoding, cfg.buffer)
        self.cfg = cfg
        self._file: FileIO | None = None
        self._size = 0
        """Bytes in the file: what it held when opened plus every line written since."""
        self._held: list[bytes] = []
        """Lines accepted and not yet written."""
        self._held_bytes = 0

    def _open(self) -> None:
        if self.cfg.path != "-":
            self._file = self._open_file()
        self._set_connected(True)

    def _open_file(self) -> FileIO:
        """``PATH`` opened for appending (unbuffered: the held lines are the buffer), its size counted from here on."""
        file = open(self.cfg.path, "ab", buffering=0)  # noqa: SIM115 - closed in _close_transport
        self._size = file.tell()
        return file

    def _send(self, msg: dict[str, Any]) -> Delivery:
        data = encode_line(msg)
        if self.cfg.path == "-":
            try:
                sys.stdout.write(data.decode("utf-8"))
            except OSError as err:
                raise Disconnected(f"cannot write to stdout: {err}") from err
            return Delivery.SENT
        size = self._size + self._held_bytes
        if 0 < self.cfg.max_bytes < size + len(data) and size > 0:
            self._write_held()
            self._rotate()
        elif self._held_bytes + len(data) > WRITE_BUFFER:
            self._write_held()
        self._held.append(data)
        self._held_bytes += len(data)
        return Delivery.ACCEPTED

    def _idle(self) -> None:
        if self.cfg.path != "-":
            self._write_held()
            return
        try:
            sys.stdout.flush()
        except OSError as err:
            raise Disconnected(f"cannot write to stdout: {err}") from err

    def _write_held(self) -> None:
        """Write the held lines in one call and count them sent; if the write fails, count them
        dropped and raise :class:`Disconnected`."""
        if not self._held:
            return
        lines, data = len(self._held), b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        try:
            if self._file is None:
                raise OSError("the file is not open")
            rest = memoryview(data)
            while rest:
                written = self._file.write(rest)
                if not written:
                    raise OSError("the file took no bytes")
                rest = rest[written:]
        except OSError as err:
            self.stats.count_dropped(lines)
            raise Disconnected(f"cannot write {self.cfg.path}: {err}; {lines} line(s) lost") from err
        self._size += len(data)
        self.stats.count_sent(lines)

    def _rotate(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            rotate(self.cfg.path, self.cfg.backups)
            self._file = self._open_file()
        except OSError as err:
            raise Disconnected(f"cannot rotate {self.cfg.path}: {err}") from err

    def _close_transport(self) -> None:
        try:
            self._write_held()
        except Disconnected as err:
            log.warning("sink %s: %s", self.name, err)
        if self._file is not None:
            try:
                self._file.close()
            except OSError as err:
                log.warning("sink %s: closing %s failed: %s", self.name, self.cfg.path, err)
            self._file = None


def _from_spec(body: str, options: dict[str, Any]) -> JsonlSinkConfig:
    return JsonlSinkConfig(type="jsonl", path=body.partition(":")[2], **options)


register_sink(SinkType("jsonl", JsonlSinkConfig, JsonlSink, schemes=("jsonl",),
                       spec_forms=("jsonl:PATH", "jsonl:-"), from_spec=_from_spec))
