"""ZeroMQ sink: an XPUB socket bound to ``endpoint``; each message is multipart ``[stream, json]``.

Subscribers connect a SUB socket and subscribe to a stream name (a prefix filter, so ``b""``
means every stream)::

    sub = zmq.Context().socket(zmq.SUB)
    sub.connect("tcp://127.0.0.1:5556")
    sub.setsockopt(zmq.SUBSCRIBE, b"cam1")
    stream, payload = sub.recv_multipart()

The socket is an XPUB with ``XPUB_NODROP``: when a subscriber falls ``buffer`` messages behind
(``SNDHWM``), sending pauses instead of ZeroMQ discarding silently, and the sink's own buffer
drops its oldest messages, counted in ``streamer_sink_messages_dropped_total``. A slow subscriber
therefore slows delivery to every subscriber of this sink. Messages published while nobody is
subscribed are discarded by ZeroMQ by design and counted as sent.

Config: ``type = "zmq"``, ``endpoint`` (``tcp://`` or ``ipc://``); ``--sink zmq:tcp://HOST:PORT``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import zmq
from pydantic import field_validator

from streamer.frame_json import encode
from streamer.sinks.base import BufferedSink, Delivery, stream_of
from streamer.sinks.config import SinkSettings
from streamer.sinks.registry import SinkType, register_sink

log = logging.getLogger(__name__)


class ZmqSinkConfig(SinkSettings):
    """ZeroMQ publisher bound to ``endpoint``: multipart ``[stream, json]``; subscribers connect."""

    type: Literal["zmq"]
    endpoint: str = "tcp://127.0.0.1:5556"

    @field_validator("endpoint")
    @classmethod
    def _transport(cls, endpoint: str) -> str:
        if not endpoint.startswith(("tcp://", "ipc://")):
            raise ValueError(f"endpoint must start with tcp:// or ipc://, got {endpoint!r}")
        return endpoint

    @property
    def label(self) -> str:
        return f"zmq:{self.endpoint}"


class ZmqSink(BufferedSink):
    """Publishes frame messages on a bound ZeroMQ XPUB socket; the socket lives on the worker thread."""

    def __init__(self, cfg: ZmqSinkConfig) -> None:
        super().__init__(cfg.label, cfg.mask_encoding, cfg.buffer)
        self.cfg = cfg
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None

    def _open(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        socket = context.socket(zmq.XPUB)
        socket.setsockopt(zmq.SNDHWM, self.capacity)
        socket.setsockopt(zmq.XPUB_NODROP, 1)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.bind(self.cfg.endpoint)
        except zmq.ZMQError as err:
            socket.close()
            context.term()
            raise OSError(f"cannot bind {self.cfg.endpoint}: {err}") from err
        self._context, self._socket = context, socket
        self._set_connected(True)
        log.info("sink %s: bound", self.name)

    def _send(self, msg: dict[str, Any]) -> Delivery:
        socket = self._socket
        if socket is None:
            return Delivery.RETRY
        self._drain_subscriptions(socket)
        parts = [stream_of(msg).encode("utf-8"), encode(msg)]
        try:
            socket.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:  # a subscriber is SNDHWM messages behind: keep it in our buffer
            return Delivery.RETRY
        return Delivery.SENT

    def _close_transport(self) -> None:
        socket, context = self._socket, self._context
        self._socket = self._context = None
        if socket is not None:
            # Let queued messages go out until the close deadline, then discard them.
            linger_ms = int(max(0.0, min(self._deadline - time.monotonic(), 5.0)) * 1000)
            socket.setsockopt(zmq.LINGER, linger_ms)
            socket.close()
        if context is not None:
            context.term()

    @staticmethod
    def _drain_subscriptions(socket: zmq.Socket[bytes]) -> None:
        """Read the (un)subscribe notifications XPUB queues for the application; they are not used."""
        while True:
            try:
                socket.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return


def _from_spec(body: str, options: dict[str, Any]) -> ZmqSinkConfig:
    return ZmqSinkConfig(type="zmq", endpoint=body.partition(":")[2], **options)


register_sink(SinkType("zmq", ZmqSinkConfig, ZmqSink, schemes=("zmq",),
                       spec_forms=("zmq:tcp://HOST:PORT",), from_spec=_from_spec))
