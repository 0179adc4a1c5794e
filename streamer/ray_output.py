"""Where ``streamer process --ray`` writes: one merged JSONL (as locally) or one file per input.

- ``--out FILE.jsonl``: every input's frames in input order, then frame order, as the local
  command writes them; the file is written as ``FILE.jsonl.tmp-<pid>`` and renamed at the end,
  so a crashed driver leaves no half file.
- ``--out -``: stdout, in the same order.
- ``--out DIR/`` (a trailing ``/`` or an existing directory): ``DIR/<stem>.jsonl`` per input, each
  written to a temporary name and renamed when the input is complete; an input that failed
  keeps the frames that decoded in ``DIR/<stem>.jsonl.partial``. ``--resume`` skips inputs
  whose ``DIR/<stem>.jsonl`` exists.

:func:`emit_lines` turns one input's segment results into its lines: untracked results are
already JSON lines; tracked ones go through a fresh :class:`~streamer.tracking.Tracker` in frame
order (:func:`streamer.tracking_pipeline.track_result`), exactly as ``process_one`` tracks.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from streamer.frame_json import dumps
from streamer.frames import Frame
from streamer.offline import ProcessOptions
from streamer.ray_worker import SegmentOutput

_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)


class OutputSink:
    """The output of one ``--ray`` run (see the module docstring)."""

    def __init__(self, target: str, out_dir: Path | None) -> None:
        self.target = target
        self.out_dir = out_dir
        self.merged = out_dir is None
        """One output for all inputs, in input order."""
        self.written: set[str] = set()
        """Inputs whose lines have been written."""
        self._tmp: Path | None = None
        self._stream: TextIO | None = None

    @classmethod
    def create(cls, target: str, inputs: Sequence[str], resume: bool) -> OutputSink:
        """Check ``--out`` before any work; raises ``ValueError`` with the usage error."""
        is_dir = target.endswith(("/", os.sep)) or Path(target).is_dir()
        if not is_dir:
            if resume:
                raise ValueError("--resume needs --out DIR/ (one output file per input)")
            sink = cls(target, None)
            if target != "-":
                sink._tmp = Path(f"{target}.tmp-{os.getpid()}")
                try:
                    sink._stream = open(sink._tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed in finish)
                except OSError as err:
                    raise ValueError(f"--out {target}: cannot write: {err.strerror or err}") from err
            return sink
        out_dir = Path(target)
        stems: dict[str, str] = {}
        for p in inputs:
            other = stems.setdefault(Path(p).stem, p)
            if other != p:
                raise ValueError(f"--out {target}: inputs {other} and {p} would both write "
                                 f"{Path(p).stem}.jsonl; rename one or run them separately")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"--out {target}: cannot create the directory: {err.strerror or err}") from err
        if not os.access(out_dir, os.W_OK):
            raise ValueError(f"--out {target}: directory not writable")
        return cls(target, out_dir)

    def path_of(self, path: str) -> Path:
        """``DIR/<stem>.jsonl`` of input ``path`` (per-input output only)."""
        assert self.out_dir is not None
        return self.out_dir / f"{Path(path).stem}.jsonl"

    def complete(self, path: str) -> bool:
        """Input ``path``'s complete output already exists (per-input output only)."""
        return self.out_dir is not None and self.path_of(path).is_file()

    def write(self, path: str, lines: Sequence[str], ok: bool) -> None:
        """Write input ``path``'s lines (``ok``: the input completed)."""
        self.written.add(path)
        if self.out_dir is None:
            stream = self._stream if self._stream is not None else sys.stdout
            stream.writelines(line + "\n" for line in lines)
            stream.flush()
            return
        final = self.path_of(path)
        if not ok:
            final = final.with_name(final.name + ".partial")
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        os.replace(tmp, final)
        if ok:
            final.with_name(final.name + ".partial").unlink(missing_ok=True)

    def finish(self) -> None:
        """Close and rename the merged file into place."""
        if self._stream is not None and self._tmp is not None:
            self._stream.close()
            os.replace(self._tmp, self.target)
            self._stream = None

    def abort(self) -> None:
        """Remove the temporary merged file (the run did not finish)."""
        if self._stream is not None and self._tmp is not None:
            self._stream.close()
            self._tmp.unlink(missing_ok=True)
            self._stream = None


def emit_lines(sink: OutputSink, path: str, outputs: Sequence[SegmentOutput],
               options: ProcessOptions, ok: bool) -> None:
    """Write the lines of input ``path`` from its segment results, in segment order."""
    tracker = None
    lines: list[str] = []
    for out in outputs:
        lines.extend(out.lines)
        if out.tracked:
            from streamer.tracking import Tracker
            from streamer.tracking_pipeline import track_result

            if tracker is None:
                assert options.tracking is not None
                tracker = Tracker(options.tracking, path)
            for index, pts, result in out.tracked:
                frame = Frame(path, path, index, pts, 0.0, 0.0, _NO_IMAGE)
                track_result(tracker, frame, result, pts)
                lines.append(dumps(result.messages[options.mask_encoding]))
    sink.write(path, lines, ok)


@dataclass
class RunStats:
    """Where the time of the segments went (the ``ray: ...`` summary line; tools/bench_ray.py)."""

    segments: int = 0
    round_trip_s: float = 0.0
    """Sum over segments of submit → result on the driver."""
    worker_s: float = 0.0
    """Sum of the workers' own time on the segments."""
    first_result: float | None = None
    """Monotonic time of the first result (startup: connect, workers, model load, first segment)."""

    def add(self, round_trip: float, worker: float, started: float) -> None:
        self.segments += 1
        self.round_trip_s += round_trip
        self.worker_s += worker
        if self.first_result is None:
            self.first_result = time.monotonic() - started - round_trip

    def summary(self, wall: float) -> str:
        n = max(1, self.segments)
        overhead_ms = 1000 * max(0.0, self.round_trip_s - self.worker_s) / n
        startup = self.first_result if self.first_result is not None else wall
        return (f"{self.segments} segments in {wall:.1f} s (driver), {self.worker_s / n:.2f} s per "
                f"segment on the workers, overhead {overhead_ms:.0f} ms per segment, "
                f"first segment submitted {startup:.1f} s after start")
