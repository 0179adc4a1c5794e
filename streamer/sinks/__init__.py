"""Where frame messages go: JSONL (file or stdout), MQTT and ZeroMQ, several at once.

One module per sink type holds its config model and its class and registers both by ``type``
(:mod:`streamer.sinks.registry`); adding a sink is adding a module and naming it below. Every
sink buffers at most ``buffer`` messages and never blocks or raises into the daemon::

    sink = create_sink(parse_sink_spec("mqtt://broker:1883/maskrcnn/{stream}/frames"))
    await sink.start()
    sink.publish(frame_message(...))   # returns at once
    await sink.close(timeout=5.0)
"""

from typing import TYPE_CHECKING

from streamer.sinks import jsonl, mqtt, zmq  # the sink types, registered on import, in this order
from streamer.sinks.base import Sink
from streamer.sinks.config import SinkSettings
from streamer.sinks.jsonl import JsonlSinkConfig
from streamer.sinks.mqtt import MqttSinkConfig
from streamer.sinks.registry import config_union, create_sink, parse_sink_spec
from streamer.sinks.zmq import ZmqSinkConfig

if TYPE_CHECKING:
    SinkConfig = SinkSettings
else:
    SinkConfig = config_union()
    """A ``[[sinks]]`` table: one of the registered config models, chosen by its ``type``."""

__all__ = [
    "JsonlSinkConfig",
    "MqttSinkConfig",
    "Sink",
    "SinkConfig",
    "SinkSettings",
    "ZmqSinkConfig",
    "create_sink",
    "jsonl",
    "mqtt",
    "parse_sink_spec",
    "zmq",
]
