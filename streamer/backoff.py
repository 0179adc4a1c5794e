"""Reconnection delays: exponential backoff with full jitter, shared by the sources and the sinks.

Attempt ``n`` (0-based, consecutive failures so far) waits a delay drawn uniformly from
``[0, min(max_s, initial_s * 2**n)]``: the ceiling doubles per failure up to ``max_s``, and the
whole range is jittered ("full jitter"), so that many clients that lost the same peer spread
their retries instead of reconnecting in lockstep. The mean wait is half the ceiling: with a
live source's defaults (``[sources.reconnect]`` 0.5 s doubling to 2 s) a camera that stays down
is tried about once a second.
"""

from __future__ import annotations

import random

_MAX_DOUBLINGS = 62
"""``2**62`` already exceeds any cap; larger exponents would only overflow the float."""


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): uniform in
    ``[0, min(max_s, initial_s * 2**attempt)]``. ``rng`` defaults to the ``random`` module's."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt, _MAX_DOUBLINGS))
    return (rng or random).uniform(0.0, ceiling)
