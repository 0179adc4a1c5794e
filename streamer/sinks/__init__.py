"""Where frame messages go: JSONL (file or stdout), MQTT and ZeroMQ, several at once.

Every sink buffers at most ``buffer`` messages and never blocks or raises into the daemon::

    sink = create_sink(parse_sink_spec("mqtt://broker:1883/maskrcnn/{stream}/frames"), metrics)
    await sink.start()
    sink.publish(frame_message(...))   # returns at once
    await sink.close(timeout=5.0)
"""

from streamer.sinks.base import Sink, create_sink
from streamer.sinks.config import (
    JsonlSinkConfig,
    MqttSinkConfig,
    SinkConfig,
    ZmqSinkConfig,
    parse_sink_spec,
)

__all__ = [
    "JsonlSinkConfig",
    "MqttSinkConfig",
    "Sink",
    "SinkConfig",
    "ZmqSinkConfig",
    "create_sink",
    "parse_sink_spec",
]
