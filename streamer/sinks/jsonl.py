"""JSONL sink: one frame message per line, to stdout or to a file rotated by size.

Rotation: before a line would make ``PATH`` larger than ``max_bytes``, ``PATH.(N-1)`` →
``PATH.N`` … ``PATH`` → ``PATH.1`` and a new ``PATH`` is started (``backups = 0``: ``PATH`` is
truncated instead). A line is never split; a single line longer than ``max_bytes`` gets a file
of its own. Every line is flushed as written, so ``tail -F PATH`` follows it.

(``logging.handlers.RotatingFileHandler`` is built around log records and with ``backupCount=0``
never truncates; the rotation here is the few lines below.)
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

from streamer.metrics import StreamerMetrics
from streamer.schema import dumps
from streamer.sinks.base import BufferedSink, Delivery, Disconnected
from streamer.sinks.config import JsonlSinkConfig

log = logging.getLogger(__name__)


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
    """Writes each message as one compact JSON line (``streamer.schema.dumps``)."""

    def __init__(self, cfg: JsonlSinkConfig, metrics: StreamerMetrics) -> None:
        super().__init__(cfg.label, cfg.mask_encoding, cfg.buffer, metrics)
        self.cfg = cfg
        self._file: IO[bytes] | None = None

    def _open(self) -> None:
        if self.cfg.path != "-":
            self._file = open(self.cfg.path, "ab")  # noqa: SIM115 - closed in _close_transport
        self._set_connected(True)

    def _send(self, msg: dict[str, Any]) -> Delivery:
        line = dumps(msg) + "\n"
        try:
            if self.cfg.path == "-":
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                self._write(line.encode("utf-8"))
        except OSError as err:
            raise Disconnected(f"cannot write {self.cfg.path}: {err}") from err
        return Delivery.SENT

    def _write(self, line: bytes) -> None:
        if self._file is None:
            raise OSError(f"{self.cfg.path} is not open")
        size = self._file.tell()
        if 0 < self.cfg.max_bytes < size + len(line) and size > 0:
            self._file.close()
            self._file = None
            rotate(self.cfg.path, self.cfg.backups)
            self._file = open(self.cfg.path, "ab")  # noqa: SIM115 - closed in _close_transport
        self._file.write(line)
        self._file.flush()

    def _close_transport(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as err:
                log.warning("sink %s: closing %s failed: %s", self.name, self.cfg.path, err)
            self._file = None
