"""A real mosquitto broker and a paho subscriber on 127.0.0.1, for the tests that publish over MQTT.

- :data:`MOSQUITTO`: the broker executable (``shutil.which``, else Debian's ``/usr/sbin``); tests
  that need it skip, naming the apt package, where it does not exist.
- :class:`Broker`: a mosquitto process on a free port (optionally with users), restartable on
  the same port, killable without a clean disconnect.
- :class:`Subscriber`: a paho client collecting ``(topic, payload, retained)`` in a queue.
"""

from __future__ import annotations

import queue
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.streamer.daemon_process import free_port, wait_for

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
needs_mosquitto = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(), reason="needs the mosquitto broker (apt-get install mosquitto)")
"""Skip marker of the tests that start a :class:`Broker`."""


class Broker:
    """A mosquitto process listening on 127.0.0.1:``port``; ``stop()`` then ``start()`` keeps the port."""

    def __init__(self, directory: Path, users: dict[str, str] | None = None, port: int | None = None,
                 start: bool = True) -> None:
        self.port = port or free_port()
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "user root"]
        if users:
            passwords = directory / "passwords"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
            lines += [f"password_file {passwords}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = directory / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        if not wait_for(self._accepting, timeout=10.0, interval=0.01):
            self.stop()
            pytest.fail(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def kill(self) -> None:
        """Die abruptly (SIGKILL): no clean disconnect for anybody."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def _accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False


class Subscriber:
    """A paho client collecting ``(topic, payload, retained)``; it resubscribes after reconnects."""

    def __init__(self, port: int, topics: list[str], username: str | None = None,
                 password: str | None = None) -> None:
        self.messages: queue.Queue[tuple[str, str, bool]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(1, 1)
        self.subscribed = False
        self.topics = topics
        self.client.on_connect = self._subscribe
        self.client.on_subscribe = lambda *_: setattr(self, "subscribed", True)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload.decode(), m.retain))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert wait_for(lambda: self.subscribed, timeout=5.0, interval=0.01), "subscriber did not subscribe"

    def _subscribe(self, client: mqtt.Client, *_: Any) -> None:
        for topic in self.topics:
            client.subscribe(topic, qos=1)

    def next(self, timeout: float = 10.0) -> tuple[str, str, bool]:
        return self.messages.get(timeout=timeout)

    def next_on(self, topic: str, timeout: float = 10.0) -> tuple[str, str, bool]:
        """The next message on ``topic`` (skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.next(max(0.01, deadline - time.monotonic()))
            if got[0] == topic:
                return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
