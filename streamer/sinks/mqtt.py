"""MQTT sink (paho-mqtt 2, MQTT 3.1.1): one message per frame on ``topic`` with ``{stream}`` filled in.

Connection: paho's network thread (``loop_start``) connects in the background and reconnects
with exponential backoff (``reconnect_delay_set``, 1 s doubling to 30 s); a broker that is absent
at start is retried, never raised. Presence: the status topic holds a retained ``online`` while
connected; ``offline`` is the last will (the broker publishes it if the daemon dies) and is
published, retained, on a clean close.

Back-pressure: at most ``buffer`` messages are handed to paho and not yet written (QoS 0) or
acknowledged (QoS 1/2); beyond that, and while disconnected, messages wait in the sink's own
buffer, which drops the oldest. ``streamer_sink_messages_sent_total`` counts messages paho
reports published (QoS 0: written to the socket; QoS 1/2: acknowledged). QoS 0 messages written
into a connection that then breaks are counted as dropped; QoS 1/2 ones are resent by paho.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from streamer.metrics import StreamerMetrics
from streamer.schema import dumps
from streamer.sinks.base import BufferedSink, Delivery, stream_of
from streamer.sinks.config import MqttSinkConfig

log = logging.getLogger(__name__)

RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 30
STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_TIMEOUT_S = 2.0
"""Longest wait for the broker to acknowledge the ``offline`` status at close."""


def topic_for(template: str, stream: str) -> str:
    """The topic of ``stream``'s messages: ``template`` with ``{stream}`` replaced. Characters
    that are special in MQTT topics (``/ + #``) in the stream name become ``_``."""
    safe = stream.replace("/", "_").replace("+", "_").replace("#", "_") or "_"
    return template.replace("{stream}", safe)


class MqttSink(BufferedSink):
    """Publishes frame messages to an MQTT broker; see the module docstring for the guarantees."""

    def __init__(self, cfg: MqttSinkConfig, metrics: StreamerMetrics) -> None:
        super().__init__(cfg.label, cfg.mask_encoding, cfg.buffer, metrics)
        self.cfg = cfg
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._lock = threading.Lock()  # guards the counters below; never held while calling paho
        self._accepted = 0  # frame messages paho took
        self._completed = 0  # frame messages paho reported published (or that were lost)
        self._status_mids: set[int] = set()
        self._status_topic = cfg.resolved_status_topic
        self._closing = False

    # -- transport hooks (worker thread) --------------------------------------------------------

    def _open(self) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.will_set(self._status_topic, STATUS_OFFLINE, qos=1, retain=True)
        if self.cfg.username is not None:
            client.username_pw_set(self.cfg.username, self.cfg.resolved_password())
        if self.cfg.tls:
            client.tls_set(ca_certs=self.cfg.ca_file)
        client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        client.max_queued_messages_set(self.capacity)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        client.loop_start()
        self._client = client

    def _send(self, msg: dict[str, Any]) -> Delivery:
        client = self._client
        if client is None or not self._connected.is_set() or self._in_flight() >= self.capacity:
            return Delivery.RETRY
        topic, payload = topic_for(self.cfg.topic, stream_of(msg)), dumps(msg)
        # Counted before the call: paho's thread may report it published before publish() returns.
        self._count_accepted(+1)
        try:
            info = client.publish(topic, payload, qos=self.cfg.qos)
        except Exception:
            self._count_accepted(-1)
            raise
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return Delivery.ACCEPTED
        self._count_accepted(-1)
        if info.rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            return Delivery.RETRY
        raise RuntimeError(f"paho refused the message: {mqtt.error_string(info.rc)}")

    def _flushed(self) -> bool:
        return self._in_flight() <= 0

    def _close_transport(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._closing = True
        with self._lock:
            unconfirmed, self._completed = self._accepted - self._completed, self._accepted
        if unconfirmed > 0:
            self._metrics.sink_dropped.labels(self.name).inc(unconfirmed)
        if self._connected.is_set():
            remaining = self._deadline - time.monotonic()
            try:
                info = client.publish(self._status_topic, STATUS_OFFLINE, qos=1, retain=True)
                info.wait_for_publish(min(STATUS_TIMEOUT_S, max(0.1, remaining)))
            except (RuntimeError, ValueError) as err:
                log.warning("sink %s: could not publish the offline status: %s", self.name, err)
            client.disconnect()
        client.loop_stop()
        self._connected.clear()

    def _count_accepted(self, delta: int) -> None:
        with self._lock:
            self._accepted += delta

    def _in_flight(self) -> int:
        with self._lock:
            return self._accepted - self._completed

    # -- paho callbacks (paho's network thread) -----------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Any) -> None:
        if reason_code.is_failure:
            self._metrics.sink_errors.labels(self.name).inc()
            log.warning("sink %s: broker refused the connection: %s", self.name, reason_code)
            return
        info = client.publish(self._status_topic, STATUS_ONLINE, qos=1, retain=True)
        with self._lock:
            self._status_mids.add(info.mid)
        self._connected.set()
        self._set_connected(True)
        self._wake.set()
        log.info("sink %s: connected", self.name)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._metrics.sink_errors.labels(self.name).inc()
        log.debug("sink %s: broker unreachable; paho retries with backoff", self.name)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Any) -> None:
        self._connected.clear()
        self._set_connected(False)
        lost = 0
        if self.cfg.qos == 0:  # written into the broken connection, or queued and discarded by paho
            with self._lock:
                lost, self._completed = self._accepted - self._completed, self._accepted
        if lost > 0:
            self._metrics.sink_dropped.labels(self.name).inc(lost)
        if not self._closing:
            self._metrics.sink_errors.labels(self.name).inc()
            log.warning("sink %s: disconnected (%s); reconnecting", self.name, reason_code)
        self._wake.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Any) -> None:
        with self._lock:
            if mid in self._status_mids:
                self._status_mids.discard(mid)
                return
            if self._closing:
                return
            self._completed += 1
        self._metrics.sink_sent.labels(self.name).inc()
        self._wake.set()
