"""A real RTSP server for the daemon tests (GStreamer RTSP server, run with Debian's python3).

Serves a live H.264 test pattern (``videotestsrc`` → ``x264enc`` → ``rtph264pay``) on
``rtsp://127.0.0.1:PORT/cam``. Not a pytest module: the tests start it as a separate process
with ``/usr/bin/python3`` (python3-gi is a Debian package, absent from the project's venv)::

    /usr/bin/python3 tests/streamer/rtsp_server.py --port 8554 --fps 15 --width 128 --height 96

Prints ``READY rtsp://127.0.0.1:PORT/cam`` on stdout once it listens; runs until killed.
Needs the apt packages python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-base,
gstreamer1.0-plugins-good and gstreamer1.0-plugins-ugly (x264enc).
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def pipeline_description(fps: int, width: int, height: int) -> str:
    """The gst-launch description of the served media (one H.264 payloader named ``pay0``)."""
    return (
        f"( videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port of the RTSP server")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(pipeline_description(args.fps, args.width, args.height))
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}/cam", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
