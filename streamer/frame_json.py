"""The one serialization of a frame message: compact one-line JSON.

Shared by ``streamer process`` (JSONL) and every sink of ``streamer run``, so that both write the
same bytes for the same message. Dependency-free (the sinks, and the configuration that names
them, load without the mask encoders).
"""

from __future__ import annotations

import json
from typing import Any


def dumps(msg: dict[str, Any]) -> str:
    """Compact one-line JSON for a frame message."""
    return json.dumps(msg, separators=(",", ":"))
