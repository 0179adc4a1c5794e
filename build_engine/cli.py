"""``build-engine``: model → ONNX graph → TensorRT engine, with a manifest and a parity report.

::

    build-engine --model model.safetensors --source-size 1920x1080             # engine + manifest
    build-engine --model model.safetensors --onnx-only --source-size 640x480   # portable ONNX graph

The command line over :func:`build_engine.pipeline.build` (the steps and the manifest are
described there): argument parsing (:mod:`build_engine.options`), a progress line per step, the
parity table and the written paths on stdout, and the exit status.

Exit status: 0 built (parity passed, skipped, or failed and accepted with
``--accept-parity-failure``), 1 failure (model, TensorRT, export, build, or parity failed: the
files are kept and the manifest says so), 2 usage error. Errors are
one line on stderr: ``build-engine: error: ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from build_engine.options import UsageError, make_parser, options_from_args
from build_engine.parity_report import ACCEPT_FLAG
from build_engine.pipeline import BuildFailure, build, build_stages
from build_engine.progress import Progress
from engines.build_command import PROGRAM


def _fail(message: object) -> None:
    print(f"{PROGRAM}: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 1 failure, 2 usage)."""
    try:
        ns = make_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        opts = options_from_args(ns)
        result = build(opts, Progress(build_stages(opts)))
    except UsageError as exc:
        _fail(exc)
        return 2
    except BuildFailure as exc:
        _fail(exc)
        return 1
    print(result.parity.table())
    for label, path in (("onnx", result.onnx_path), ("engine", result.engine_path),
                        ("manifest", result.manifest_path)):
        if path is not None:
            print(f"{label}: {path}")
    if result.parity.passed is False and not result.parity.accepted:
        _fail(f"parity against PyTorch failed ({'; '.join(result.parity.failures)}); the files are kept and the "
              f"manifest {result.manifest_path} records the failure; to use them anyway, rebuild with {ACCEPT_FLAG}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
