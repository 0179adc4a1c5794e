"""The ``streamer run`` configuration: a TOML file validated with pydantic, plus command-line overrides.

Every section and key is optional; ``config/streamer.toml`` documents each one. Unknown keys are
errors (``extra="forbid"`` everywhere). :func:`load_config` raises :class:`ConfigError` whose
message has one line per problem, naming the key path, the value received and what is allowed::

    sources[1].transport = 'tcpx': Input should be 'tcp' or 'udp'

Secrets never live in the file. A source URL may contain ``${VAR}`` (expanded from the
environment when the config is loaded), and ``username_env``/``password_env`` name environment
variables whose values are inserted, percent-encoded, as the URL's ``user:pass@``. A missing
variable is a config error. Broker credentials work the same way (see ``streamer.sinks.mqtt``).

No ``[[sources]]`` means the demo video as a looping stream; no ``[[sinks]]`` means JSONL on stdout.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from engines.devices import DEVICE_RULE, DeviceError, parse_device
from streamer.config_errors import format_validation_error
from streamer.envvars import EnvVarName
from streamer.event_loop import EventLoopChoice, uvloop_available
from streamer.redact import redact_secrets
from streamer.sinks import SinkConfig, parse_sink_spec
from streamer.tracking_config import TrackingConfig

SourceKind = Literal["file", "live"]
LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp"})
HOST_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https"})
"""Schemes whose URLs must name a host (``udp://:1234``, ``srt://:9000?mode=listener`` need none)."""
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9108"
DEFAULT_SINK = "jsonl:-"
"""The sink when the config names none: JSONL on stdout."""


class ConfigError(Exception):
    """The configuration is invalid; ``str(err)`` has one line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReconnectConfig(_Strict):
    """Reconnection of live sources: exponential backoff with full jitter."""

    initial_delay_s: float = Field(default=0.5, gt=0)
    """Upper bound of the first retry delay; doubles per consecutive failure."""
    max_delay_s: float = Field(default=2.0, gt=0)
    """Cap of the retry delay upper bound. 2 s: a camera that comes back is retried within 2 s
    (a retry every second on average while it stays down: one TCP connect, cheap for the camera)."""
    healthy_after_s: float = Field(default=5.0, ge=0)
    """A connection delivering frames this long resets the backoff to ``initial_delay_s``. Kept
    short (and above ``max_delay_s``) so a camera flapping every 15-25 s resets it on each return."""
    max_attempts: int | None = Field(default=None, ge=1)
    """Consecutive failures before the stream is ``failed`` for good (unset: retry forever)."""


class SourceConfig(_Strict):
    """One video input: anything PyAV (FFmpeg) opens."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    """Stream name: message key ``stream``, metric label, thread name ``decode-<name>``."""
    url: str = Field(min_length=1)
    """File path, ``file://``, ``rtsp(s)://``, ``http(s)://`` (HLS), ``rtmp://``, ``/dev/videoN``."""
    username_env: EnvVarName | None = None
    password_env: EnvVarName | None = None
    format: str | None = None
    """FFmpeg input format (``v4l2`` is implied for ``/dev/video*``)."""
    live: StrictBool | None = None
    """Drop oldest frames when behind (default: true for network/devices, false for files)."""
    loop: StrictBool = False
    """Files: restart at the end instead of ending."""
    realtime: StrictBool = True
    """Files: decode at the file's own frame rate (false: as fast as the pipeline takes them)."""
    transport: Literal["tcp", "udp"] | None = None
    """RTSP transport (FFmpeg ``rtsp_transport``)."""
    open_timeout_s: float = Field(default=10.0, gt=0)
    stall_timeout_s: float = Field(default=10.0, gt=0)
    """No frame for this long → reconnect (live) or fail (file)."""
    hwaccel: str | None = None
    """Hardware decoder device type (e.g. ``cuda``, ``vaapi``); software decoding if unavailable."""
    options: dict[str, str] = Field(default_factory=dict)
    """Extra FFmpeg demuxer/protocol options."""
    decode_nice: int = Field(default=10, ge=0, le=19)
    """Niceness added to this source's decode threads (its ``decode-<name>`` thread and the
    FFmpeg threads it starts): when the CPU is saturated, the stages that finish frames already
    decoded (batching, postprocess, publishing) run first. 0: the daemon's own priority."""
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)

    @field_validator("url")
    @classmethod
    def _env_refs_set(cls, url: str) -> str:
        missing = [v for v in _ENV_REF.findall(url) if v not in os.environ]
        if missing:
            raise ValueError(f"environment variable(s) {', '.join(missing)} referenced as ${{...}} are not set")
        check_network_url(_ENV_REF.sub(lambda m: os.environ[m.group(1)], url))
        return url

    @model_validator(mode="after")
    def _options_fit_kind(self) -> SourceConfig:
        if self.transport is not None and not self.url.lower().startswith(("rtsp://", "rtsps://")):
            raise ValueError(f"transport applies to rtsp:// and rtsps:// URLs only, not {self.url!r}")
        if self.loop and self.kind != "file":
            raise ValueError("loop applies to file sources only")
        return self

    @property
    def kind(self) -> SourceKind:
        """``"file"`` for local files, ``"live"`` for network streams and capture devices."""
        scheme = urlsplit(self.url).scheme.lower()
        if scheme in LIVE_SCHEMES or self.url.startswith("/dev/") or self.format == "v4l2":
            return "live"
        return "file"

    @property
    def drops_frames(self) -> bool:
        """Whether a full queue drops the oldest frame (live) instead of pausing the decoder (file)."""
        return self.kind == "live" if self.live is None else self.live

    @property
    def input_format(self) -> str | None:
        return self.format or ("v4l2" if self.url.startswith("/dev/video") else None)

    def resolved_url(self) -> str:
        """The URL to open: ``${VAR}`` expanded, ``username_env``/``password_env`` inserted. Secret."""
        url = _ENV_REF.sub(lambda m: os.environ[m.group(1)], self.url)
        if self.username_env is None and self.password_env is None:
            return url
        parts = urlsplit(url)
        user = quote(os.environ[self.username_env], safe="") if self.username_env else ""
        password = quote(os.environ[self.password_env], safe="") if self.password_env else ""
        userinfo = f"{user}:{password}" if password else user
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


class BatchingConfig(_Strict):
    """Forming inference batches across streams."""

    max_batch_size: int = Field(default=4, ge=1, le=64)
    max_wait_s: float = Field(default=0.01, ge=0)
    """How long a partial batch waits for more frames."""
    queue_size: int = Field(default=4, ge=1)
    """Frames buffered per stream between decoder and batcher."""
    staleness_s: float = Field(default=1.0, gt=0)
    """Live frames older than this when they would be batched are dropped (reason ``stale``)."""


class InferenceConfig(_Strict):
    model: str | None = None
    """Model file (``.safetensors``, ``.pth``, ``.onnx``, ``.engine``); unset: the embedded demo model."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``."""
    backend: Literal["pytorch", "onnxruntime", "tensorrt"] | None = None
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    mask_threshold: float = Field(default=0.5, gt=0, lt=1)
    postprocess_workers: int = Field(default=2, ge=1, le=32)
    """Threads pasting masks and encoding messages (off the inference thread)."""
    max_batches_in_flight: int = Field(default=4, ge=1)
    """Inferred batches waiting for postprocessing/publishing before inference pauses."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        try:
            parse_device(device)
        except DeviceError:
            raise ValueError(DEVICE_RULE) from None
        return device


class MetricsConfig(_Strict):
    enabled: StrictBool = True
    address: str = DEFAULT_METRICS_ADDRESS
    """HOST:PORT of ``/metrics``, ``/healthz`` and ``/readyz`` (port 0: any free port)."""

    @field_validator("address")
    @classmethod
    def _host_port(cls, address: str) -> str:
        parse_host_port(address)
        return address


class ShutdownConfig(_Strict):
    timeout_s: float = Field(default=10.0, gt=0)
    """SIGTERM/SIGINT: drain and flush within this time, else exit 1."""


class SystemdConfig(_Strict):
    status_interval_s: float = Field(default=5.0, gt=0)
    """Period of the ``STATUS=`` line sent to systemd (and logged at debug level)."""


class StreamerConfig(_Strict):
    """The root of the configuration file."""

    sources: list[SourceConfig] = Field(default_factory=list)
    sinks: list[SinkConfig] = Field(default_factory=list)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    systemd: SystemdConfig = Field(default_factory=SystemdConfig)
    box: str = ""
    """This box's name in a fleet (docs/operations.md, "A fleet of boxes"): the ``box`` key of every
    frame message and ``{box}`` in MQTT ``topic``/``status_topic``. Empty: the host name."""
    event_loop: EventLoopChoice = "auto"
    """The daemon's event loop (:mod:`streamer.event_loop`): ``auto`` (uvloop if installed, else
    asyncio), ``asyncio`` or ``uvloop``."""

    @field_validator("event_loop")
    @classmethod
    def _loop_installed(cls, choice: EventLoopChoice) -> EventLoopChoice:
        if choice == "uvloop" and not uvloop_available():
            raise ValueError('"uvloop" is not installed here: pip install uvloop, or use "auto" or "asyncio"')
        return choice

    @field_validator("box")
    @classmethod
    def _box_name(cls, box: str) -> str:
        if any(c in box for c in "/+#\0") or box != box.strip():
            raise ValueError(f"a box name must not contain '/', '+', '#', NUL or edge spaces, got {box!r}")
        return box

    @property
    def box_name(self) -> str:
        """``box``, or this machine's host name (MQTT-safe) when it is empty."""
        return self.box or (socket.gethostname() or "localhost").replace("/", "_").replace(
            "+", "_").replace("#", "_")

    @model_validator(mode="after")
    def _fill_box(self) -> StreamerConfig:
        """Replace ``{box}`` in sink settings (MQTT topics) by :attr:`box_name` (the sinks know no box)."""
        box = self.box_name
        sinks = [s.with_box(box) for s in self.sinks]
        object.__setattr__(self, "sinks", sinks)  # frozen model: set once, during validation
        return self

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return sources


def check_network_url(url: str) -> None:
    """ValueError if a network URL has an invalid port, or no host where its scheme needs one.

    Never echoes the URL (it may hold expanded secrets); the caller's error names the key.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in LIVE_SCHEMES:
        return
    try:
        port = parts.port
    except ValueError:
        raise ValueError("invalid port: expected a number in 1..65535 after HOST:") from None
    if scheme in HOST_SCHEMES:
        if not parts.hostname:
            raise ValueError(f"no host in the URL; expected {scheme}://HOST[:PORT]/PATH")
        if port == 0:
            raise ValueError("invalid port 0: expected a number in 1..65535 after HOST:")


def parse_host_port(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` → ``("127.0.0.1", 9108)``; ``[::1]:9108`` for IPv6. ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with PORT in 0..65535, got {address!r}")
    return host.strip("[]"), int(port)


def demo_source() -> SourceConfig:
    """The embedded default source: the demo sample video, looping at its own frame rate."""
    from streamer.demo import sample_video_path

    return SourceConfig(name="demo", url=str(sample_video_path()), loop=True, realtime=True)


@dataclass(frozen=True)
class Overrides:
    """Command-line overrides. ``--source NAME=URL`` and ``--sink SPEC`` replace the file's lists."""

    sources: tuple[str, ...] = ()
    sinks: tuple[str, ...] = ()
    model: str | None = None
    device: str | None = None
    backend: str | None = None
    metrics_address: str | None = None
    """HOST:PORT, or ``off`` to disable the HTTP endpoint."""

    def apply(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of the raw (parsed TOML) ``data`` with these overrides applied."""
        data = dict(data)
        if self.sources:
            data["sources"] = [_source_spec(spec) for spec in self.sources]
        if self.sinks:
            try:
                data["sinks"] = [parse_sink_spec(spec) for spec in self.sinks]
            except ValueError as err:
                raise ConfigError(f"--sink: {err}") from err
        inference = dict(data.get("inference", {}))
        for key, value in (("model", self.model), ("device", self.device), ("backend", self.backend)):
            if value is not None:
                inference[key] = value
        data["inference"] = inference
        if self.metrics_address is not None:
            metrics = dict(data.get("metrics", {}))
            metrics["enabled"] = self.metrics_address.lower() not in ("off", "none", "")
            if metrics["enabled"]:
                metrics["address"] = self.metrics_address
            data["metrics"] = metrics
        return data


def load_config(path: str | os.PathLike[str] | None, overrides: Overrides | None = None) -> StreamerConfig:
    """Read the TOML file (``None``: no file), apply ``overrides``, validate. Raises :class:`ConfigError`."""
    data = read_toml(path) if path is not None else {}
    if overrides is not None:
        data = overrides.apply(data)
    return validate_config(data, origin=str(path) if path is not None else "command line")


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML file; :class:`ConfigError` names the file and the syntax problem."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def validate_config(data: dict[str, Any], origin: str = "config") -> StreamerConfig:
    """Validate parsed TOML; :class:`ConfigError` lists every problem as ``origin: key.path = value: rule``."""
    try:
        return StreamerConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, StreamerConfig, origin)) from err


def with_defaults(cfg: StreamerConfig) -> StreamerConfig:
    """Fill the embedded defaults: the demo source if none, JSONL on stdout if no sink."""
    update: dict[str, Any] = {}
    if not cfg.sources:
        update["sources"] = [demo_source()]
    if not cfg.sinks:
        update["sinks"] = [parse_sink_spec(DEFAULT_SINK)]
    return cfg.model_copy(update=update) if update else cfg


def _source_spec(spec: str) -> dict[str, Any]:
    name, sep, url = spec.partition("=")
    if not sep or not name or not url:
        raise ConfigError(f"--source: expected NAME=URL (e.g. cam1=rtsp://10.0.0.5/stream), "
                          f"got {redact_secrets(spec)!r}")
    return {"name": name, "url": url}
