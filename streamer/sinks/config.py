"""Sink configuration: the ``[[sinks]]`` tables of the config file and the ``--sink SPEC`` strings.

Each sink is one table with a ``type`` tag (pydantic discriminated union)::

    [[sinks]]
    type = "mqtt"
    host = "broker.local"
    topic = "maskrcnn/{stream}/frames"
    username = "streamer"
    password_env = "MQTT_PASSWORD"    # the secret comes from the environment, never the file

The same sinks as command-line specs (:func:`parse_sink_spec`)::

    jsonl:/var/log/maskrcnn-streamer/frames.jsonl   jsonl:-  (stdout)
    mqtt://user:pass@broker.local:1883/maskrcnn/{stream}/frames   mqtts://... (TLS)
    zmq:tcp://127.0.0.1:5556

Options that have no place in the spec go in a query string: ``mqtt://host/t?qos=1&mask_encoding=none``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from streamer.redact import redact_secrets
from streamer.schema import MaskEncoding

DEFAULT_BUFFER = 256
"""Messages a sink holds while its peer is slow or away; beyond it the oldest are dropped."""


class _SinkBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mask_encoding: MaskEncoding = "rle"
    """How masks are sent: COCO compressed RLE, polygons, or not at all."""
    buffer: int = Field(default=DEFAULT_BUFFER, ge=1, le=1_000_000)
    """Bounded per-sink buffer (messages); when full, the oldest message is dropped and counted."""

    @property
    def label(self) -> str:
        """The sink's name in logs and the ``sink`` metric label; never contains credentials."""
        raise NotImplementedError


class JsonlSinkConfig(_SinkBase):
    """One JSON message per line, to a size-rotated file or to stdout (``path = "-"``)."""

    type: Literal["jsonl"]
    path: str = Field(min_length=1)
    """File path, or ``-`` for stdout. The directory must exist and be writable."""
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=0)
    """Rotate before a write would make the file larger than this (0: never rotate)."""
    backups: int = Field(default=5, ge=0)
    """Rotated files kept: ``PATH.1`` (newest) … ``PATH.N``."""

    @field_validator("path")
    @classmethod
    def _writable(cls, path: str) -> str:
        problem = None if path == "-" else jsonl_path_problem(path)
        if problem is not None:
            raise ValueError(problem)
        return path

    @property
    def label(self) -> str:
        return "jsonl:stdout" if self.path == "-" else f"jsonl:{self.path}"


def jsonl_path_problem(path: str) -> str | None:
    """Why this process could not write the JSONL file ``path``; None if it can.

    Checked when the configuration is loaded (``config check`` and the daemon's start): no retry
    fixes a missing directory or a missing permission, so it is a configuration error.
    """
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        return "is a directory; give a file path inside it (e.g. DIR/frames.jsonl)"
    if not parent.exists():
        return f"directory {str(parent)!r} does not exist; create it or choose another path"
    if not parent.is_dir():
        return f"{str(parent)!r} is not a directory; choose another path"
    if target.exists():
        if not os.access(target, os.W_OK):
            return "the file exists and is not writable by this user; fix its permissions or choose another path"
    elif not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {str(parent)!r} is not writable by this user; fix its permissions or choose another path"
    return None


class MqttSinkConfig(_SinkBase):
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
    password_env: str | None = None
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

    @field_validator("password_env")
    @classmethod
    def _env_var_set(cls, name: str | None) -> str | None:
        if name is not None and name not in os.environ:
            raise ValueError(f"environment variable {name!r} is not set; export it before starting")
        return name

    @model_validator(mode="after")
    def _credentials(self) -> MqttSinkConfig:
        if self.password is not None and self.password_env is not None:
            raise ValueError("give either password or password_env, not both")
        if (self.password is not None or self.password_env is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file applies to TLS connections only; set tls = true")
        return self

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


class ZmqSinkConfig(_SinkBase):
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


SinkConfig = Annotated[JsonlSinkConfig | MqttSinkConfig | ZmqSinkConfig, Field(discriminator="type")]

_SPEC_HELP = "expected jsonl:PATH, jsonl:-, mqtt[s]://[USER:PASS@]HOST[:PORT][/TOPIC] or zmq:tcp://HOST:PORT"


def parse_sink_spec(spec: str) -> JsonlSinkConfig | MqttSinkConfig | ZmqSinkConfig:
    """A ``--sink`` string → its sink config. ValueError names the spec and the accepted forms.

    The MQTT path is the topic template (``{stream}`` allowed); a ``?key=value&...`` query sets
    further fields (``qos``, ``mask_encoding``, ``buffer``, ...), validated like the config file.
    """
    body, _, query = spec.partition("?")
    options: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    kind, sep, rest = body.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad sink spec {_redact_spec(spec)!r}: {_SPEC_HELP}")
    try:
        if kind == "jsonl":
            return JsonlSinkConfig(type="jsonl", path=rest, **options)
        if kind == "zmq":
            return ZmqSinkConfig(type="zmq", endpoint=rest, **options)
        if kind in ("mqtt", "mqtts"):
            return _mqtt_spec(body, kind == "mqtts", options)
    except ValidationError as err:
        raise ValueError(f"bad sink spec {_redact_spec(spec)!r}: {_describe(err)}") from None
    except ValueError as err:
        raise ValueError(f"bad sink spec {_redact_spec(spec)!r}: {err}") from None
    raise ValueError(f"bad sink spec {_redact_spec(spec)!r}: unknown sink type {redact_secrets(kind)!r}; {_SPEC_HELP}")


def _mqtt_spec(url: str, tls: bool, options: dict[str, Any]) -> MqttSinkConfig:
    parts = urlsplit(url, allow_fragments=False)
    if not parts.hostname:
        raise ValueError(f"no broker host; {_SPEC_HELP}")
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


def _describe(err: ValidationError) -> str:
    """Pydantic errors as ``field: rule``, one per problem, without echoing input values."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg'].removeprefix('Value error, ')}"
        for e in err.errors(include_url=False)
    )


def _redact_spec(spec: str) -> str:
    scheme, sep, rest = spec.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return redact_secrets(f"{scheme}://***@{rest.split('@', 1)[1]}")
    return redact_secrets(spec)
