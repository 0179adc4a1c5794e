"""The one serialization of a frame message: compact one-line JSON.

Shared by ``streamer process`` (JSONL) and every sink of ``streamer run``, so that both write the
same bytes for the same message. Dependency-free (the sinks, and the configuration that names
them, load without the mask encoders).
"""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
"""``json.dumps(msg, separators=(",", ":"))``'s encoder, made once. A frame message is a tree
built by :func:`streamer.schema.frame_message`, so the encoder skips the reference-cycle check
(which records every dict and list it enters: ~10 % of the time on a 20-instance message)."""


def dumps(msg: dict[str, Any]) -> str:
    """Compact one-line JSON for a frame message (the bytes of ``json.dumps(msg, separators=(",", ":"))``)."""
    return _ENCODER.encode(msg)
