"""``streamer convert``: a torchvision Mask R-CNN checkpoint → our self-contained model file.

    streamer convert model_final.pth --out shapes.safetensors --class-names-file classes.txt

Architecture, depth and class count are read from the checkpoint's tensors; what tensors
cannot tell (input sizes, anchors) comes from torchvision's defaults or the flags below.
COCO names are used for 91-class checkpoints when no names are given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from engines.classes import default_class_names, parse_class_names, read_class_names
from engines.modelfile import save_model_file
from engines.weights import ModelLoadError, load_checkpoint

log = logging.getLogger(__name__)


def _anchor_sizes(text: str) -> tuple[tuple[int, ...], ...]:
    try:
        sizes = tuple((int(v),) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"anchor sizes are 5 comma-separated integers, got {text!r}") from None
    if len(sizes) != 5:
        raise argparse.ArgumentTypeError(f"anchor sizes need one size per FPN level (5), got {len(sizes)}")
    return sizes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("convert", help="convert a torchvision checkpoint into a model file",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="torchvision state dict or training checkpoint (.pth/.pt)")
    p.add_argument("--out", type=Path, required=True, help="output model file (.safetensors)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--class-names", metavar="A,B,...", help="comma-separated names (background implied)")
    names.add_argument("--class-names-file", type=Path, metavar="FILE", help="one class name per line")
    p.add_argument("--name", help="model name (default: the checkpoint's file stem)")
    p.add_argument("--min-size", type=int, help="short side after resizing (torchvision default 800)")
    p.add_argument("--max-size", type=int, help="long side cap after resizing (torchvision default 1333)")
    p.add_argument("--anchor-sizes", type=_anchor_sizes, metavar="S2,S3,S4,S5,S6",
                   help="one anchor size per FPN level (torchvision default 32,64,128,256,512)")
    p.add_argument("--half", action="store_true", help="store weights in float16 (half the file size)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for key in ("min_size", "max_size", "anchor_sizes"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    try:
        lm = load_checkpoint(args.checkpoint, **overrides)
        k = lm.model.cfg.num_classes
        if args.class_names:
            names = parse_class_names(args.class_names.split(","), k)
        elif args.class_names_file:
            names = read_class_names(args.class_names_file, k)
        else:
            names = default_class_names(k)
    except (ModelLoadError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.out.suffix != ".safetensors":
        print(f"error: --out must end in .safetensors, got {args.out}", file=sys.stderr)
        return 2
    cfg = lm.model.cfg
    save_model_file(args.out, lm.model.state_dict(), cfg, names, name=args.name or args.checkpoint.stem,
                    source=f"converted from {args.checkpoint.name}", half=args.half)
    log.info("wrote %s: %s FPN, %d classes, input %d/%d", args.out, cfg.backbone, k, cfg.min_size, cfg.max_size)
    return 0
