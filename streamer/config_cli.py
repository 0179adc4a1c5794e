"""``streamer config check FILE``: validate a ``streamer run`` config without running anything.

Prints ``FILE: ok (N sources, M sinks)`` and exits 0, or prints one ``error:`` line per problem
(key path, value received, what is allowed) and exits 2. Environment variables named by
``username_env``/``password_env``/``${VAR}`` must be set, as they would be for ``streamer run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.config import ConfigError, load_config

EXIT_INVALID = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``config`` subcommand (``config check FILE``)."""
    p = subparsers.add_parser("config", help="validate a streamer run config file",
                              description="Tools for the streamer run configuration file.")
    actions = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate FILE and exit 0 (valid) or 2 (invalid)",
                               description=__doc__.splitlines()[0] if __doc__ else None)
    check.add_argument("file", type=Path, metavar="FILE", help="TOML config file")
    check.set_defaults(func=check_command)


def check_command(args: argparse.Namespace) -> int:
    """Validate ``args.file``; 0 if valid, 2 if not (errors on stderr)."""
    try:
        cfg = load_config(args.file)
    except ConfigError as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_INVALID
    sources = f"{len(cfg.sources)} sources" if cfg.sources else "no sources: the demo video"
    sinks = f"{len(cfg.sinks)} sinks" if cfg.sinks else "no sinks: JSONL on stdout"
    print(f"{args.file}: ok ({sources}, {sinks})")
    return 0
