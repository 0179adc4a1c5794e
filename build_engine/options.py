"""``build-engine``'s options: the argument parser, value parsing, and :class:`BuildOptions`.

Every bad value raises :class:`UsageError` (exit status 2) naming the option and the value
received. :meth:`BuildOptions.command` writes a build back as the explicit argv the manifest
records (``--min-batch/--opt-batch/--max-batch``, ``--input-size``), which
:func:`engines.build_command.with_options` edits into rebuild commands.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

from engines.build_command import (
    INPUT_FLAG,
    INPUT_SIZE_FLAG,
    MAX_BATCH_FLAG,
    MIN_BATCH_FLAG,
    OPT_BATCH_FLAG,
    PRECISION_FLAG,
    PRECISIONS,
    PROGRAM,
    SOURCE_SIZE_FLAG,
    Precision,
)
from engines.manifest import BatchProfile, HardwareCompatibility

DEFAULT_BATCH = "1:4:8"
DEFAULT_SOURCE_SIZE = "1920x1080"
DEFAULT_PARITY_FRAMES = 4
RoiAlign = Literal["plugin", "onnx"]


class UsageError(ValueError):
    """A bad option value (exit status 2)."""


# --------------------------------------------------------------------------- option values
def parse_batch(spec: str) -> BatchProfile:
    """``"MIN:OPT:MAX"`` (or ``"N"`` for N:N:N) → :class:`BatchProfile`."""
    parts = spec.split(":")
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise UsageError(f"--batch takes MIN:OPT:MAX with integers >= 1 (e.g. {DEFAULT_BATCH}), got {spec}")
    lo, opt, hi = (int(p) for p in parts)
    if not lo <= opt <= hi:
        raise UsageError(f"MIN <= OPT <= MAX required, got {spec}")
    return BatchProfile(lo, opt, hi)


def parse_size(spec: str, flag: str, order: Literal["HxW", "WxH"]) -> tuple[int, int]:
    """``"AxB"`` in the flag's ``order`` → ``(H, W)`` in pixels (each >= 16)."""
    parts = spec.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        example = "800x1344" if order == "HxW" else "1920x1080"
        raise UsageError(f"{flag} takes {order} in pixels (e.g. {example}), got {spec}")
    a, b = int(parts[0]), int(parts[1])
    h, w = (a, b) if order == "HxW" else (b, a)
    if min(h, w) < 16:
        raise UsageError(f"{flag} sides must be >= 16 px, got {spec}")
    return h, w


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``build-engine`` was asked to do (sizes are ``(H, W)``)."""

    model: Path | None
    out: Path | None = None
    onnx_only: bool = False
    roi_align: RoiAlign = "plugin"
    precision: Precision = "fp32"
    batch: BatchProfile = dataclasses.field(default_factory=lambda: BatchProfile(1, 4, 8))
    source_size: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    parity_frames: int = DEFAULT_PARITY_FRAMES
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    hardware_compatibility: HardwareCompatibility = "none"
    version_compatible: bool = False
    accept_parity_failure: bool = False

    def command(self, out: Path) -> list[str]:
        """The explicit ``build-engine`` argv that repeats this build (recorded in the manifest)."""
        b = self.batch
        argv = [PROGRAM] + (["--model", str(self.model)] if self.model is not None else [])
        argv += ["--out", str(out)] + (["--onnx-only"] if self.onnx_only else [])
        argv += ["--roi-align", self.roi_align, PRECISION_FLAG, self.precision, MIN_BATCH_FLAG, str(b.min),
                 OPT_BATCH_FLAG, str(b.opt), MAX_BATCH_FLAG, str(b.max)]
        if self.source_size is not None:
            argv += [SOURCE_SIZE_FLAG, f"{self.source_size[1]}x{self.source_size[0]}"]
        if self.input_size is not None:
            argv += [INPUT_SIZE_FLAG, f"{self.input_size[0]}x{self.input_size[1]}"]
        argv += ["--parity-frames", str(self.parity_frames)]
        if self.workspace_mib is not None:
            argv += ["--workspace-mib", str(self.workspace_mib)]
        if self.timing_cache is not None:
            argv += ["--timing-cache", str(self.timing_cache)]
        if self.hardware_compatibility != "none":
            argv += ["--hardware-compatibility", self.hardware_compatibility]
        argv += ["--version-compatible"] if self.version_compatible else []
        return argv + (["--accept-parity-failure"] if self.accept_parity_failure else [])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROGRAM, description="Export a Mask R-CNN to ONNX, build a TensorRT engine, write a manifest "
                "and check parity against PyTorch.")
    p.add_argument("--model", type=Path, metavar="PATH", help="our .safetensors model file or a torchvision .pth checkpoint "
                   "(default: the embedded demo model)")
    p.add_argument("--out", type=Path, metavar="PATH", help="engine path (.plan), or the .onnx path with --onnx-only; the graph "
                   "goes next to the engine as .onnx (default: <model>_<H>x<W>_<precision>.plan in this folder)")
    p.add_argument("--onnx-only", action="store_true", help="export and check the ONNX graph, build no engine")
    p.add_argument("--roi-align", choices=("plugin", "onnx"), help="fused TensorRT plugin (default for engines) "
                   "or ONNX RoiAlign ops (default with --onnx-only; runs in ONNX Runtime)")
    p.add_argument(PRECISION_FLAG, choices=PRECISIONS, default="fp32", help="default fp32")
    p.add_argument("--batch", default=DEFAULT_BATCH, metavar="MIN:OPT:MAX", help=f"batch profile (default {DEFAULT_BATCH})")
    for flag, what in ((MIN_BATCH_FLAG, "MIN"), (OPT_BATCH_FLAG, "OPT"), (MAX_BATCH_FLAG, "MAX")):
        p.add_argument(flag, type=int, metavar="N", help=f"override --batch's {what}")
    size = p.add_mutually_exclusive_group()
    size.add_argument(INPUT_FLAG, INPUT_SIZE_FLAG, dest="input", metavar="HxW",
                      help="frames arrive already at this network input size")
    size.add_argument(SOURCE_SIZE_FLAG, metavar="WxH", help="camera frame size; the network input is derived as "
                      f"the model's preprocessing would (default {DEFAULT_SOURCE_SIZE})")
    p.add_argument("--parity-frames", type=int, default=DEFAULT_PARITY_FRAMES, metavar="N",
                   help=f"frames for the parity check, 0 = skip (default {DEFAULT_PARITY_FRAMES})")
    p.add_argument("--workspace-mib", type=int, metavar="MIB", help="TensorRT builder workspace limit")
    p.add_argument("--timing-cache", type=Path, metavar="PATH", help="TensorRT timing cache file (read and updated)")
    p.add_argument("--hardware-compatibility", choices=("none", "same_compute_capability", "ampere_plus"),
                   default="none", metavar="LEVEL",
                   help="none, same_compute_capability or ampere_plus: the engine also runs on other GPUs of "
                   "that class (slower)")
    p.add_argument("--version-compatible", action="store_true", help="engine loads under later TensorRT 10/11.x")
    p.add_argument("--accept-parity-failure", action="store_true", help="exit 0 even when the parity gate fails "
                   "(the manifest records the failure and that it was accepted)")
    return p


def options_from_args(ns: argparse.Namespace) -> BuildOptions:
    """Validated :class:`BuildOptions`; :class:`UsageError` names the option and the value received."""
    batch = parse_batch(ns.batch)
    lo, opt, hi = (v if v is not None else d for v, d in
                   ((ns.min_batch, batch.min), (ns.opt_batch, batch.opt), (ns.max_batch, batch.max)))
    if ns.max_batch is not None and ns.opt_batch is None:
        opt = min(opt, hi)
    if ns.min_batch is not None and ns.opt_batch is None:
        opt = max(opt, lo)
    if not 1 <= lo <= opt <= hi:
        raise UsageError(f"MIN <= OPT <= MAX required, got {lo}:{opt}:{hi}")
    source = input_size = None
    if ns.input is not None:
        input_size = parse_size(ns.input, INPUT_FLAG, "HxW")
    else:
        source = parse_size(ns.source_size or DEFAULT_SOURCE_SIZE, SOURCE_SIZE_FLAG, "WxH")
    if ns.parity_frames < 0:
        raise UsageError(f"--parity-frames must be >= 0, got {ns.parity_frames}")
    if ns.workspace_mib is not None and ns.workspace_mib < 1:
        raise UsageError(f"--workspace-mib must be >= 1, got {ns.workspace_mib}")
    if ns.model is not None and ns.model.is_dir():
        raise UsageError(f"--model takes a model file, got the folder {ns.model}")
    return BuildOptions(
        model=ns.model, out=ns.out, onnx_only=ns.onnx_only,
        roi_align=ns.roi_align or ("onnx" if ns.onnx_only else "plugin"), precision=ns.precision,
        batch=BatchProfile(lo, opt, hi), source_size=source, input_size=input_size, parity_frames=ns.parity_frames,
        workspace_mib=ns.workspace_mib, timing_cache=ns.timing_cache,
        hardware_compatibility=ns.hardware_compatibility, version_compatible=ns.version_compatible,
        accept_parity_failure=ns.accept_parity_failure)
