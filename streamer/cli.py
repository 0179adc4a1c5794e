"""The ``streamer`` command: one subcommand per module listed in ``_COMMANDS``.

Each module exposes ``register(subparsers) -> None``, which adds its parser and sets
``func(args) -> int`` as a default. Only the module of the command being run is imported (the
commands' dependencies differ widely: ``config check`` needs pydantic, ``process`` a model
runtime); ``--help`` and unknown commands import them all. Exit status: 0 ok, 1 some input (or
the model) failed, 2 usage error (argparse's convention, also used by subcommands for bad option
values). See docs/cli.md.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from streamer.heap import keep_freed_heap

_COMMANDS: dict[str, str] = {
    "process": "streamer.process_cli",
    "run": "streamer.run_cli",
    "config": "streamer.config_cli",
    "convert": "streamer.convert_cli",
    "bench": "streamer.bench_cli",
    "bench-pipeline": "streamer.bench_pipeline",
    "demo": "streamer.demo_cli",
}
"""Subcommand → the module that registers it, in ``--help`` order."""

LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every subcommand of ``_COMMANDS`` registered, or only ``command``."""
    parser = argparse.ArgumentParser(
        prog="streamer", description="Mask R-CNN instance segmentation over video.")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="stderr logging threshold (default: info; progress lines are info)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module).register(subparsers)
    return parser


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first argument that is neither an option nor the value
    of ``--log-level``), if it is one of ``_COMMANDS``; else None."""
    args = iter(argv)
    for arg in args:
        if arg == "--log-level":
            next(args, None)
        elif not arg.startswith("-"):
            return arg if arg in _COMMANDS else None
    return None


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
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_in(argv))
    try:
        args = parser.parse_args(argv)
        configure_logging(args.log_level)
        keep_freed_heap()  # decoded frames reuse freed frames' memory (streamer.heap)
        status: int = args.func(args)
    except SystemExit as stop:  # parser.error() (2) and --help (0), from here or a subcommand
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        raise
    return status


if __name__ == "__main__":
    sys.exit(main())
