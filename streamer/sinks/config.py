"""What every sink's configuration shares: the base model of a ``[[sinks]]`` table.

Each sink module (``streamer/sinks/jsonl.py``, ``mqtt.py``, ``zmq.py``) subclasses
:class:`SinkSettings` with ``type: Literal["<its type>"]`` and its own keys, and registers it with
its sink class (:mod:`streamer.sinks.registry`); the config file's sink union is assembled from
those registrations::

    [[sinks]]
    type = "mqtt"
    host = "broker.local"
    topic = "maskrcnn/{stream}/frames"
    username = "streamer"
    password_env = "MQTT_PASSWORD"    # the secret comes from the environment, never the file
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field

from streamer.encodings import MaskEncoding

DEFAULT_BUFFER = 256
"""Messages a sink holds while its peer is slow or away; beyond it the oldest are dropped."""


class SinkSettings(BaseModel):
    """Keys of every sink; unknown keys are errors, and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mask_encoding: MaskEncoding = "rle"
    """How masks are sent: COCO compressed RLE, polygons, or not at all."""
    buffer: int = Field(default=DEFAULT_BUFFER, ge=1, le=1_000_000)
    """Bounded per-sink buffer (messages); when full, the oldest message is dropped and counted."""

    @property
    def label(self) -> str:
        """The sink's name in logs and the ``sink`` metric label; never contains credentials."""
        raise NotImplementedError

    def with_box(self, box: str) -> Self:
        """This config with ``{box}`` (the fleet box name) filled in where the sink allows it."""
        return self
