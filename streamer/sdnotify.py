"""systemd service notifications (``Type=notify``) over ``$NOTIFY_SOCKET``; plain socket code.

``Notifier.from_env()`` is None when not started by systemd. Messages are ``KEY=VALUE`` lines in
one datagram (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``). A socket path
starting with ``@`` is in the Linux abstract namespace. :func:`watchdog_period` reads
``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, which must name this process when set).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("streamer.sdnotify")


class Notifier:
    """A connected datagram socket to the service manager. Sending never raises."""

    def __init__(self, address: str) -> None:
        self.address = address
        target = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._target = target
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier | None:
        """A notifier for ``$NOTIFY_SOCKET``, or None when the variable is unset or empty."""
        address = environ.get("NOTIFY_SOCKET", "")
        return cls(address) if address else None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields as one datagram; False (logged once) if it cannot be sent."""
        try:
            self._sock.sendto("\n".join(fields).encode("utf-8"), self._target)
            return True
        except OSError as err:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address, err)
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """One-line ``STATUS=`` (newlines replaced)."""
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        self._sock.close()


def watchdog_period(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``; None when unset, invalid, or
    meant for another process (``$WATCHDOG_PID``). Ping at least twice per period."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    target_pid = environ.get("WATCHDOG_PID", "")
    if target_pid and target_pid != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6


def pipeline_alive(now: float, last_completed: float, busy_since: float | None, pending: int,
                   period: float) -> bool:
    """Watchdog rule: ping only if inference completed a batch within ``period`` seconds, or if
    there is no pending work (no queued frames, no batch in progress). A stuck inference worker
    (busy, nothing completed for a period) stops the pings, and systemd restarts the service."""
    idle = busy_since is None and pending == 0
    return idle or now - last_completed <= period


class WatchdogPinger:
    """Pings systemd's watchdog twice per ``period`` while the pipeline is alive, withholds the
    ping while it is not (:func:`pipeline_alive`), and logs once when it starts withholding and
    once when it resumes."""

    def __init__(self, notifier: Notifier, period: float) -> None:
        self.notifier = notifier
        self.period = period
        self.withholding = False
        self._next = 0.0

    def tick(self, now: float, alive: Callable[[float], bool], last_completed: Callable[[], float]) -> None:
        """Call often (every ``period / 4`` at least): pings when one is due and ``alive(now)``."""
        if now < self._next:
            return
        is_alive = alive(now)
        if is_alive:
            self.notifier.watchdog()
        if is_alive == self.withholding:
            self.withholding = not is_alive
            if is_alive:
                log.info("inference completes batches again; systemd watchdog pings resumed")
            else:
                log.warning("inference has not completed a batch for %.1f s; withholding the "
                            "systemd watchdog ping", now - last_completed())
        self._next = now + self.period / 2
