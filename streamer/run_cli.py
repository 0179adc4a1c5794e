"""``streamer run``: the streaming daemon (see docs/daemon.md).

::

    streamer run                                   # demo video, demo model, JSONL on stdout
    streamer run --config /etc/maskrcnn-streamer/streamer.toml
    streamer run --source cam1=rtsp://10.0.0.5/stream --sink mqtt://broker:1883/maskrcnn/{stream}/frames

Every setting comes from the TOML config (``config/streamer.toml`` documents them all); the
options below override it. Exit status: 0 clean shutdown, 1 startup failure, shutdown timeout or
every source failed, 2 invalid configuration, 130 forced by a second SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from streamer import event_loop
from streamer.config import DEFAULT_METRICS_ADDRESS, ConfigError, Overrides, load_config
from streamer.redact import RedactingFilter

EXIT_CONFIG = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` subcommand; its ``func`` is :func:`run`."""
    p = subparsers.add_parser(
        "run", help="run the streaming daemon over live sources",
        description="Run instance segmentation over live video streams and publish one frame "
                    "message per inferred frame to the sinks. Settings come from --config; "
                    "the options override them. See docs/daemon.md.")
    p.add_argument("--config", type=Path, metavar="FILE", default=None,
                   help="TOML config file (default: none; built-in defaults, see config/streamer.toml)")
    p.add_argument("--source", action="append", default=[], metavar="NAME=URL",
                   help="a source (repeatable); replaces the config file's [[sources]]. "
                        "Default: the demo video, looping")
    p.add_argument("--sink", action="append", default=[], metavar="SPEC",
                   help="a sink (repeatable): jsonl:PATH, jsonl:-, mqtt[s]://[USER:PASS@]HOST[:PORT]/TOPIC, "
                        "zmq:tcp://HOST:PORT; replaces [[sinks]]. Default: jsonl:- (stdout)")
    p.add_argument("--model", metavar="PATH", default=None,
                   help="model file; default: [inference] model, else the embedded demo model")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: [inference] device, cpu)")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="pytorch, onnxruntime or tensorrt (default: chosen by the model file)")
    p.add_argument("--metrics-address", default=None, metavar="HOST:PORT",
                   help=f"/metrics, /healthz, /readyz endpoint, or 'off' (default: {DEFAULT_METRICS_ADDRESS})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the configuration, run the daemon until it stops, return the exit status."""
    install_redaction()
    overrides = Overrides(
        sources=tuple(args.source), sinks=tuple(args.sink), model=args.model, device=args.device,
        backend=args.backend, metrics_address=args.metrics_address)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    # Imported after validation: a bad config is refused before torch loads.
    from streamer.daemon import Daemon

    daemon = Daemon(cfg, args.config, overrides)
    code = event_loop.run(daemon.run(), cfg.event_loop)
    if code != 0:
        # A stuck inference or decode thread must not hold the process: leave without joining.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code


def install_redaction() -> None:
    """Redact URL credentials in every record of the root logger's handlers."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
