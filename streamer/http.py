"""The daemon's HTTP endpoint: Prometheus metrics and health checks, on a background thread.

====================  ===========================================================================
``GET /metrics``      Prometheus text exposition of the daemon's registry (OpenMetrics if asked).
``GET /healthz``      Liveness: 200 while the event loop's heartbeat is fresh (< 5 s old), else 503.
``GET /readyz``       Readiness: 200 once the model is loaded and at least one stream is up, else
                      503 with the reason as the body.
====================  ===========================================================================

Bound to ``127.0.0.1`` by default: the endpoint has no authentication, so expose it deliberately
(``[metrics] address = "0.0.0.0:9108"``) behind a firewall or a reverse proxy. The server runs
in daemon threads (:class:`http.server.ThreadingHTTPServer`), so a slow scrape never holds up the
event loop, and a stalled event loop is exactly what ``/healthz`` reports.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

HEARTBEAT_MAX_AGE_S = 5.0
SHUTDOWN_POLL_S = 0.1
"""How often the serving thread checks for :meth:`HttpServer.close` (the latency of a close)."""


def _no_streams() -> int:
    return 0


@dataclass
class HealthState:
    """What ``/healthz`` and ``/readyz`` report; the daemon updates it, the HTTP threads read it."""

    model_loaded: bool = False
    """Set once the runner is loaded (and warmed up)."""
    streams_up: Callable[[], int] = _no_streams
    """Number of streams currently delivering frames; called on every ``/readyz``."""
    loop_heartbeat: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` of the event loop's last tick (the daemon sets it every 0.5 s)."""
    max_heartbeat_age: float = HEARTBEAT_MAX_AGE_S
    """``/healthz`` fails once the heartbeat is older than this (seconds)."""

    def beat(self) -> None:
        """Record an event-loop tick now."""
        self.loop_heartbeat = time.monotonic()

    def liveness(self) -> tuple[bool, str]:
        """``(alive, reason)``: alive while the heartbeat is younger than ``max_heartbeat_age``."""
        age = time.monotonic() - self.loop_heartbeat
        if age < self.max_heartbeat_age:
            return True, "ok"
        return False, f"event loop heartbeat is {age:.1f} s old (limit {self.max_heartbeat_age:.1f} s)"

    def readiness(self) -> tuple[bool, str]:
        """``(ready, reason)``: ready once the model is loaded and at least one stream is up."""
        if not self.model_loaded:
            return False, "model not loaded yet"
        try:
            up = self.streams_up()
        except Exception as err:
            log.exception("streams_up() failed; reporting not ready")
            return False, f"stream state unavailable: {err}"
        if up < 1:
            return False, "no stream is up"
        return True, f"ok: {up} stream(s) up"


class HttpServer:
    """A running endpoint; :meth:`close` stops it. ``port`` is the bound port (useful with port 0)."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = str(server.server_address[0])
        self.port: int = int(server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the socket. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5.0)
        self._server.server_close()


def start_http_server(host: str, port: int, registry: CollectorRegistry, health: HealthState) -> HttpServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (port 0: a free port).

    Raises OSError naming the address when it cannot be bound (in use, or not a local address).
    """
    handler = _handler_class(registry, health)
    server_class = _IPv6Server if ":" in host else _IPv4Server
    try:
        server = server_class((host, port), handler)
    except OSError as err:
        raise OSError(err.errno, f"cannot serve metrics on {host}:{port}: {err.strerror or err}; "
                                 "free the port or set another [metrics] address") from err
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S},
                              name="http-metrics", daemon=True)
    thread.start()
    log.info("metrics and health on http://%s:%d/metrics", host, server.server_address[1])
    return HttpServer(server, thread)


class _IPv4Server(ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET


class _IPv6Server(ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET6


def _handler_class(registry: CollectorRegistry, health: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "maskrcnn-streamer"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._metrics()
            elif path == "/healthz":
                self._check(*health.liveness())
            elif path == "/readyz":
                self._check(*health.readiness())
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _metrics(self) -> None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(registry)
            except Exception:  # a broken collector must not take the endpoint down
                log.exception("collecting metrics failed")
                self._reply(500, b"collecting metrics failed; see the daemon log\n")
                return
            self._reply(200, body, content_type)

        def _check(self, ok: bool, reason: str) -> None:
            self._reply(200 if ok else 503, f"{reason}\n".encode())

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("http %s - %s", self.address_string(), format % args)

    return Handler
