"""The daemon's event loop: uvloop where it is installed, else asyncio's own (``event_loop``).

``streamer run`` runs its daemon with :func:`run`, ``event_loop`` in the configuration choosing
the loop as uvicorn's ``--loop`` does::

    event_loop = "auto"      # uvloop if importable, else asyncio (the default)
    event_loop = "asyncio"   # the standard library's loop
    event_loop = "uvloop"    # uvloop, or refuse to start when it is missing

Why: the loop is woken from other threads several times per batch (frames from the decode
threads, detections from the inference thread, messages from the postprocess pool). On the
2-core reference VM a ``call_soon_threadsafe`` to an idle loop costs the loop thread 20–26 µs of
CPU with asyncio's loop and 10 µs with uvloop, which runs the same callbacks from libuv, in C
(docs/performance.md §7); ``streamer bench-pipeline --loop asyncio`` against ``--loop uvloop``
measures what the whole daemon gains on a box.
Nothing else changes: the daemon uses only the loop API both implement (signal handlers,
``call_soon_threadsafe``, executors, servers).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]
"""The ``event_loop`` configuration key's values."""

_T = TypeVar("_T")


def uvloop_available() -> bool:
    """Whether uvloop can be imported here (it builds for Linux and macOS, not Windows)."""
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: EventLoopChoice) -> Literal["asyncio", "uvloop"]:
    """The loop ``choice`` runs on here: ``"auto"`` is uvloop where it can be imported."""
    return "uvloop" if choice == "uvloop" or (choice == "auto" and uvloop_available()) else "asyncio"


def loop_factory(choice: EventLoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the event loop of ``choice`` (None: asyncio's own, exactly as ``asyncio.run``
    makes it); RuntimeError naming the remedy when ``"uvloop"`` is asked for and not installed."""
    if resolve(choice) == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as err:
        raise RuntimeError(f'event_loop = "{choice}" but uvloop cannot be imported ({err}); install it '
                           '(pip install uvloop) or set event_loop = "asyncio"') from err
    new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return new_loop


def run(main: Coroutine[Any, Any, _T], choice: EventLoopChoice = "auto") -> _T:
    """``asyncio.run(main)`` on a loop of ``choice``."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``: which implementation ``loop`` is (for the start-up log line)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
