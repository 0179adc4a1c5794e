"""Real peers and inputs for the ``streamer run`` tests (imported by test modules; not a conftest).

- :func:`encode_video`: a small H.264 file encoded with PyAV (moving bright square on dark).
- :class:`RtspServer`: the GStreamer RTSP server of ``rtsp_server.py`` under Debian's python3.
- :class:`NotifyListener`: a ``NOTIFY_SOCKET`` datagram socket collecting systemd messages.
- :class:`DaemonProcess`: ``python -m streamer.cli run ...`` as a subprocess, with its JSONL output.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")


def encode_video(path: Path, frames: int, fps: int = 25, width: int = 128, height: int = 96) -> Path:
    """Write an H.264 mp4 of ``frames`` frames; frame ``i`` shows a square at x = 4 * i mod W."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for i in range(frames):
            img = np.full((height, width, 3), 30, np.uint8)
            x = (4 * i) % (width - 24)
            img[30:54, x:x + 24] = (240, 200, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed again at return)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_gst_rtsp() -> None:
    """Skip unless Debian's python3 has the GStreamer RTSP server bindings."""
    probe = ("import gi; gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert Gst.ElementFactory.find('x264enc')")
    if not os.path.exists(SYSTEM_PYTHON) or subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode != 0:
        pytest.skip("needs apt packages python3-gi gir1.2-gst-rtsp-server-1.0 "
                    "gstreamer1.0-plugins-{base,good,ugly} (the GStreamer RTSP server)")


class RtspServer:
    """``rtsp://127.0.0.1:PORT/cam`` serving a live H.264 test pattern; ``stop``/``start`` again."""

    def __init__(self, port: int | None = None, fps: int = 15, width: int = 128, height: int = 96) -> None:
        self.port = port or free_port()
        self.args = ["--port", str(self.port), "--fps", str(fps), "--width", str(width), "--height", str(height)]
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> RtspServer:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER), *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NotifyListener:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def collect(self, until: str, timeout: float) -> bool:
        """Receive until a datagram contains the line ``until``; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(data)
            if until in data.splitlines():
                return True
        return False

    def lines(self) -> list[str]:
        return [line for m in self.messages for line in m.splitlines()]

    def close(self) -> None:
        self.sock.close()


def write_daemon_config(path: Path, model: Path, sinks: str, body: str = "",
                        metrics: str = "enabled = false") -> Path:
    """A ``streamer run`` config at ``path``: ``[inference] model``, ``[metrics]`` with ``metrics``,
    the ``sinks`` tables, then ``body`` (sources and any other section)."""
    path.write_text(f'[inference]\nmodel = "{model}"\n[metrics]\n{metrics}\n{sinks}\n{body}\n')
    return path


def jsonl_sink(out: Path) -> str:
    """A ``[[sinks]]`` table writing JSON lines to ``out``."""
    return f'[[sinks]]\ntype = "jsonl"\npath = "{out}"'


DAEMON_ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
"""Environment of the daemon under test. One intra-op thread: the test machine's 2 cores are
shared; spinning OpenMP threads under contention make inference many times slower."""


class DaemonProcess:
    """``python -m streamer.cli run ARGS`` with stderr in a log file (stdout discarded or to a file)."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str] | None = None,
                 stdout: Path | None = None) -> None:
        self.log_path = tmp / "daemon.log"
        self._log = self.log_path.open("w")
        self._out = stdout.open("w") if stdout is not None else subprocess.DEVNULL
        full_env = {**os.environ, **DAEMON_ENV, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamer.cli", "run", *args], cwd=REPO, env=full_env,
            stdout=self._out, stderr=self._log)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                return text in self.log()
            time.sleep(0.1)
        return False

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        if not isinstance(self._out, int):
            self._out.close()
        if exc is not None:
            sys.stderr.write(f"--- daemon log ---\n{self.log()[-4000:]}\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path`` (a partially written last line is ignored)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


