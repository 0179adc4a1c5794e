"""The ``streamer`` command: one subcommand per module listed in ``_COMMANDS``.

Each module exposes ``register(subparsers) -> None``, which adds its parser and sets
``func(args) -> int`` as a default. Exit status: 0 ok, 1 some input (or the model) failed,
2 usage error (argparse's convention, also used by subcommands for bad option values).
See docs/cli.md.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

_COMMANDS: tuple[str, ...] = (
    "streamer.process_cli", "streamer.run_cli", "streamer.config_cli", "streamer.convert_cli", "streamer.bench_cli",
    "streamer.bench_pipeline", "streamer.demo_cli",
)
"""Modules that each register one subcommand, in ``--help`` order."""

LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand of ``_COMMANDS`` registered."""
    parser = argparse.ArgumentParser(
        prog="streamer", description="Mask R-CNN instance segmentation over video.")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="stderr logging threshold (default: info; progress lines are info)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to the ``sys.stderr`` of the moment, not of its creation.

    ``main()`` may run in-process (tests, tools) where ``sys.stderr`` is swapped and closed
    between calls; a plain ``StreamHandler`` would keep writing to a closed stream.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(level: str) -> None:
    """Log ``level`` and above to stderr as ``HH:MM:SS level logger: message``."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        configure_logging(args.log_level)
        status: int = args.func(args)
    except SystemExit as stop:  # parser.error() (2) and --help (0), from here or a subcommand
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        raise
    return status


if __name__ == "__main__":
    sys.exit(main())
