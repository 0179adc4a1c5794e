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

Config: ``type = "mqtt"`` (see :class:`MqttSinkConfig`); ``--sink mqtt[s]://[USER:PASS@]HOST[:PORT][/TOPIC]``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Literal, Self
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field, SecretStr, StrictBool, field_validator, model_validator

from streamer.envvars import EnvVarName
from streamer.frame_json import encode
from streamer.sinks.base import BufferedSink, Delivery, stream_of
from streamer.sinks.config import SinkSettings
from streamer.sinks.registry import SinkType, register_sink, spec_help

log = logging.getLogger(__name__)

RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 30
STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_TIMEOUT_S = 2.0
"""Longest wait for the broker to acknowledge the ``offline`` status at close."""


class MqttSinkConfig(SinkSettings):
    """MQTT 3.1.1 publisher (paho-mqtt 2): one message per frame on a per-stream topic."""

    type: Literal["mqtt"]
    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    topic: str = "maskrcnn/{stream}/frames"
    """Topic template; ``{stream}`` is replaced by the stream name."""
    qos: int = Field(default=0, ge=0, le=2)
    """MQTT QoS of frame messages: 0 at most once, 1 at least once, 2 exactly once."""
    tls: StrictBool = False
    ca_file: str | None = None
    """CA bundle for TLS (unset: the system trust store)."""
    username: str | None = None
    password: SecretStr | None = None
    password_env: EnvVarName | None = None
    """Environment variable holding the password (preferred to ``password``)."""
    status_topic: str = "maskrcnn/{host}/status"
    """Retained ``online`` on connect; ``offline`` on clean close and as the last will.
    ``{host}`` is this machine's host name, so daemons on different hosts sharing a broker do not
    overwrite each other's status; give two daemons on one host their own."""
    client_id: str = ""
    """MQTT client id (empty: the broker assigns one)."""
    keepalive: int = Field(default=30, ge=5, le=65535)
    """Seconds between pings; the broker publishes the last will after 1.5x this without traffic."""

    @field_validator("topic", "status_topic")
    @classmethod
    def _no_wildcards(cls, topic: str) -> str:
        if not topic or "+" in topic or "#" in topic or "\0" in topic:
            raise ValueError(f"a publish topic must be non-empty without '+', '#' or NUL, got {topic!r}")
        return topic

    @model_validator(mode="after")
    def _credentials(self) -> MqttSinkConfig:
        if self.password is not None and self.password_env is not None:
            raise ValueError("give either password or password_env, not both")
        if (self.password is not None or self.password_env is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file applies to TLS connections only; set tls = true")
        return self

    def with_box(self, box: str) -> Self:
        """``{box}`` in ``topic`` and ``status_topic`` replaced by the fleet box name."""
        return self.model_copy(update={"topic": self.topic.replace("{box}", box),
                                       "status_topic": self.status_topic.replace("{box}", box)})

    @property
    def resolved_status_topic(self) -> str:
        """``status_topic`` with ``{host}`` replaced by this machine's host name (MQTT-safe)."""
        host = socket.gethostname() or "localhost"
        return self.status_topic.replace("{host}", host.replace("/", "_").replace("+", "_").replace("#", "_"))

    @property
    def label(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}:{self.host}:{self.port}/{self.topic}"

    def resolved_password(self) -> str | None:
        """The broker password from ``password`` or the ``password_env`` variable. Secret."""
        if self.password_env is not None:
            return os.environ.get(self.password_env)
        return self.password.get_secret_value() if self.password is not None else None


def topic_for(template: str, stream: str) -> str:
    """The topic of ``stream``'s messages: ``template`` with ``{stream}`` replaced. Characters
    that are special in MQTT topics (``/ + #``) in the stream name become ``_``."""
    safe = stream.replace("/", "_").replace("+", "_").replace("#", "_") or "_"
    return template.replace("{stream}", safe)


class MqttSink(BufferedSink):
    """Publishes frame messages to an MQTT broker; see the module docstring for the guarantees."""

    def __init__(self, cfg: MqttSinkConfig) -> None:
        super().__init__(cfg.label, cfg.mask_encoding, cfg.buffer)
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
        topic, payload = topic_for(self.cfg.topic, stream_of(msg)), encode(msg)
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
            self.stats.count_dropped(unconfirmed)
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
            self.stats.count_error()
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
        self.stats.count_error()
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
            self.stats.count_dropped(lost)
        if not self._closing:
            self.stats.count_error()
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
        self.stats.count_sent()
        self._wake.set()


def _from_spec(url: str, options: dict[str, Any]) -> MqttSinkConfig:
    """``mqtt[s]://[USER:PASS@]HOST[:PORT][/TOPIC]``: the path is the topic template."""
    tls = url.startswith("mqtts:")
    parts = urlsplit(url, allow_fragments=False)
    if not parts.hostname:
        raise ValueError(f"no broker host; {spec_help()}")
    fields: dict[str, Any] = {"type": "mqtt", "host": parts.hostname, "tls": tls}
    fields["port"] = parts.port if parts.port is not None else (8883 if tls else 1883)
    topic = unquote(parts.path.removeprefix("/"))
    if topic:
        fields["topic"] = topic
    if parts.username is not None:
        fields["username"] = unquote(parts.username)
    if parts.password is not None:
        fields["password"] = unquote(parts.password)
    return MqttSinkConfig(**{**fields, **options})


register_sink(SinkType("mqtt", MqttSinkConfig, MqttSink, schemes=("mqtt", "mqtts"),
                       spec_forms=("mqtt[s]://[USER:PASS@]HOST[:PORT][/TOPIC]",), from_spec=_from_spec))
