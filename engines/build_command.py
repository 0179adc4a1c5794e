"""``build-engine``'s command line as engine manifests record it: option names, precisions, edits.

The build step records its command in an explicit form (``--min-batch/--opt-batch/--max-batch``,
``--input-size`` or ``--source-size``; ``build_engine.options.BuildOptions.command`` writes it).
A runner that refuses an engine asks for other option values (``engines.manifest.Mismatch``
``rebuild_args``, pairs ``(FLAG, VALUE)``) and prints the recorded command with them set::

    with_options(["build-engine", "--precision", "fp16", "--max-batch", "8"],
                 [("--precision", "fp32"), ("--max-batch", "16")])
    # → ["build-engine", "--precision", "fp32", "--max-batch", "16"]

Standard library only: the runtime reads manifests without importing ``build_engine``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

PROGRAM = "build-engine"
"""The build step's command name; recorded commands start with it."""

Precision = Literal["fp32", "fp16"]
"""What an engine computes in (``--precision``)."""
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16")

PRECISION_FLAG = "--precision"
MIN_BATCH_FLAG = "--min-batch"
OPT_BATCH_FLAG = "--opt-batch"
MAX_BATCH_FLAG = "--max-batch"
INPUT_SIZE_FLAG = "--input-size"
"""Fixes the network input size, written ``HxW``: frames arrive already resized."""
INPUT_FLAG = "--input"
"""Short spelling of :data:`INPUT_SIZE_FLAG`."""
SOURCE_SIZE_FLAG = "--source-size"
"""Fixes the camera resolution, written ``WxH``: the graph resizes frames to the network input."""

CONFLICTS: dict[str, tuple[str, ...]] = {
    INPUT_SIZE_FLAG: (SOURCE_SIZE_FLAG, INPUT_FLAG),
    SOURCE_SIZE_FLAG: (INPUT_SIZE_FLAG, INPUT_FLAG),
}
"""Options that cannot stand next to the key option (one frame-size option per build)."""


def with_options(argv: Sequence[str], changes: Iterable[tuple[str, str]]) -> list[str]:
    """``argv`` with each ``(FLAG, VALUE)`` of ``changes`` set, in order.

    The options that conflict with ``FLAG`` (:data:`CONFLICTS`) are dropped; then the first
    ``FLAG VALUE`` or ``FLAG=VALUE`` takes the new value in the same form, or ``FLAG VALUE`` is
    appended when ``argv`` does not give ``FLAG``.
    """
    out = list(argv)
    for flag, value in changes:
        out = without_options(out, CONFLICTS.get(flag, ()))
        for i, arg in enumerate(out):
            if arg == flag and i + 1 < len(out):
                out[i + 1] = value
                break
            if arg.startswith(flag + "="):
                out[i] = f"{flag}={value}"
                break
        else:
            out += [flag, value]
    return out


def without_options(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """``argv`` without ``FLAG VALUE`` / ``FLAG=VALUE`` for each of ``flags``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif not any(arg.startswith(f + "=") for f in flags):
            out.append(arg)
    return out
