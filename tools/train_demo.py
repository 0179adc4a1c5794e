"""Train the shipped demo model: torchvision Mask R-CNN, ResNet-18 FPN (128 ch), on synthetic shapes.

Images are generated on the fly by ``tools.scenes.shapes.generate_image`` with seeds
``TRAIN_SEED_BASE + iteration * batch + i`` (held-out evaluation seeds start at
``tools.scenes.ground_truth.EVAL_SEED_BASE`` and never meet these). Training uses ordinary BatchNorm; the
result is folded into the FrozenBatchNorm2d construction and written as a plain state dict.

    nice -n 5 python3 -m tools.train_demo --iters 3000 --out out/

Outputs under ``--out``: ``train.log`` (progress), ``ckpt.pth`` (resumable, every few minutes),
``demo_tv.pth`` (frozen-BN state dict), ``demo_config.json`` (constructor arguments and recipe).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from tools.demo_training import (
    build_model,
    demo_config,
    frozen_state_dict,
    recorded_kwargs,
    training_pair,
)
from tools.scenes.shapes import CLASS_NAMES, generate_image

TRAIN_SEED_BASE = 10_000_000
CALIBRATION_SEED_BASE = 20_000_000
"""BatchNorm statistics are re-estimated on scenes with these seeds (disjoint from train and eval)."""

@torch.no_grad()
def recalibrate_bn(model: MaskRCNN, size: tuple[int, int], images: int, say: Any) -> None:
    """Re-estimate every BatchNorm2d's running mean/var on ``images`` generated frames of ``size``.

    Frames (seeds from ``CALIBRATION_SEED_BASE``, 2..6 shapes) go one at a time through the
    model's transform and backbone (the only place with BatchNorm); the statistics are the exact
    average over them (``momentum=None``), not the lagging training-time running average. Leaves
    the model in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.eval()
    for bn in bns:
        bn.train()
    for i in range(images):
        scene = generate_image(
            CALIBRATION_SEED_BASE + i, height=size[0], width=size[1], max_shapes=6
        )
        tensor = torch.from_numpy(scene.image).permute(2, 0, 1).float().div(255)
        batch, _ = model.transform([tensor.to(next(model.parameters()).device)])
        model.backbone(batch.tensors)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()
    say(f"BatchNorm statistics re-estimated on {images} {size[1]}x{size[0]} frames")


def freeze_bn(model: MaskRCNN) -> None:
    """Put every BatchNorm2d in eval mode: normalise with the running statistics, stop updating them.

    Training with batch statistics of 2 images lets the network lean on per-image normalisation
    (each scene has one dominant background colour), which population statistics at inference
    do not give; training the last part of the schedule with frozen statistics removes that gap.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def make_batch(
    iteration: int, batch: int, size: tuple[int, int], max_shapes: int, device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Training images (float 0..1 ``[3, H, W]``) and targets for one iteration; empty scenes are skipped."""
    images: list[torch.Tensor] = []
    targets: list[dict[str, torch.Tensor]] = []
    seed = TRAIN_SEED_BASE + iteration * batch * 4
    while len(images) < batch:
        scene = generate_image(seed, height=size[0], width=size[1], max_shapes=max_shapes)
        seed += 1
        if len(scene.labels) == 0:
            continue
        image, target = training_pair(scene.image, scene.masks, scene.labels, device)
        images.append(image)
        targets.append(target)
    return images, targets


def lr_at(it: int, iters: int, base_lr: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 1% of ``base_lr``."""
    if it < warmup:
        return base_lr * (0.001 + 0.999 * it / warmup)
    t = (it - warmup) / max(iters - warmup, 1)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def _extension(text: str) -> tuple[int, int]:
    """Parse ``--extend AT:ITERS``."""
    at, _, iters = text.partition(":")
    if not (at.isdigit() and iters.isdigit() and int(at) < int(iters)):
        raise argparse.ArgumentTypeError(f"--extend wants AT:ITERS with AT < ITERS, got {text!r}")
    return int(at), int(iters)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=320, help="training image height (px)")
    parser.add_argument("--width", type=int, default=320, help="training image width (px)")
    parser.add_argument(
        "--max-shapes", type=int, default=6, help="shapes per training image: 2..this"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--ckpt-minutes", type=float, default=4.0)
    parser.add_argument(
        "--budget-min",
        type=float,
        default=0.0,
        help="if > 0, fix --iters at the end of warmup so training takes about this long",
    )
    parser.add_argument(
        "--freeze-bn-at",
        type=int,
        default=-1,
        help="from this iteration on, train with BN statistics re-estimated then frozen "
        "(0: from the start, -1: never)",
    )
    parser.add_argument(
        "--bn-calibration", type=int, default=100, help="frames to re-estimate BN statistics on"
    )
    parser.add_argument(
        "--extend",
        type=_extension,
        default=None,
        metavar="AT:ITERS",
        help="from iteration AT on, the schedule is ITERS long (a run lengthened while it ran)",
    )
    parser.add_argument("--bench", type=int, default=0, help="only time this many iterations")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "train.log").open("a")

    def say(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    model = build_model(frozen_bn=False).to(device)
    cfg = demo_config()
    # Training crops are fed at native scale: the transform must not resize them.
    model.transform.min_size = (min(args.height, args.width),)
    model.transform.max_size = max(args.height, args.width)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ckpt_path = args.out / "ckpt.pth"
    start, elapsed_before, iters = 0, 0.0, args.bench or args.iters
    base_iters = iters  # the schedule length before any --extend
    if ckpt_path.exists() and not args.bench:
        ckpt = torch.load(ckpt_path, map_location=device)
        model.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optim"])
        start, elapsed_before, iters = ckpt["iteration"], ckpt["elapsed_s"], ckpt["iters"]
        base_iters = ckpt.get("base_iters", iters)
        if args.extend and start >= args.extend[0]:
            iters = args.extend[1]
        torch.set_rng_state(ckpt["torch_rng"])
        say(f"resumed from {ckpt_path} at iteration {start} of {iters}")
    say(f"args {vars(args)}")
    model.train()
    if 0 <= args.freeze_bn_at < start:
        freeze_bn(model)
        say(f"BatchNorm frozen since iteration {args.freeze_bn_at}")
    t0 = time.time()
    last_ckpt = t0
    smooth: dict[str, float] = {}
    it = start
    while it < iters:
        if it == args.warmup and args.budget_min > 0 and it > start:
            # Fix the schedule length once, from the warmup's throughput (reproduce with --iters).
            left_s = args.budget_min * 60 - (elapsed_before + time.time() - t0)
            iters = max(
                args.warmup + 1, int(args.warmup + left_s * (it - start) / (time.time() - t0))
            )
            base_iters = iters
            say(f"budget {args.budget_min} min: schedule fixed at --iters {iters}")
        if args.extend and it == args.extend[0]:
            iters = args.extend[1]
            say(f"schedule length changed at iteration {it}: now --iters {iters}")
        if args.freeze_bn_at >= 0 and it == args.freeze_bn_at:
            recalibrate_bn(model, (args.height, args.width), args.bn_calibration, say)
            model.train()
            freeze_bn(model)
            say(f"BatchNorm frozen from iteration {it}")
        lr = lr_at(it, iters, args.lr, args.warmup)
        for g in optim.param_groups:
            g["lr"] = lr
        images, targets = make_batch(
            it, args.batch, (args.height, args.width), args.max_shapes, device
        )
        losses = model(images, targets)
        total = sum(losses.values())
        optim.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optim.step()
        for k, v in losses.items():
            smooth[k] = 0.95 * smooth.get(k, v.item()) + 0.05 * v.item()
        it += 1
        now = time.time()
        if it % 20 == 0 or it == iters:
            rate = (it - start) / (now - t0)
            eta = (iters - it) / rate
            parts = " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in smooth.items())
            say(
                f"it {it}/{iters} lr={lr:.2e} total={sum(smooth.values()):.3f} {parts} {rate:.2f} it/s ETA {eta / 60:.1f} min"
            )
        if not args.bench and (now - last_ckpt > args.ckpt_minutes * 60 or it == iters):
            torch.save(
                {
                    "model": model.state_dict(),
                    "optim": optim.state_dict(),
                    "iteration": it,
                    "iters": iters,
                    "base_iters": base_iters,
                    "elapsed_s": elapsed_before + now - t0,
                    "torch_rng": torch.get_rng_state(),
                },
                ckpt_path.with_suffix(".tmp"),
            )
            ckpt_path.with_suffix(".tmp").replace(ckpt_path)
            last_ckpt = now
    if args.bench:
        return
    wall = elapsed_before + time.time() - t0
    args.iters = base_iters
    model = model.cpu()
    # Back to the inference transform (training fed its crops unscaled).
    model.transform.min_size = (cfg.min_size,)
    model.transform.max_size = cfg.max_size
    export(model.eval(), args, wall, say)


def export(model: MaskRCNN, args: argparse.Namespace, wall_s: float, say: Any) -> None:
    """Fold BN into the FrozenBatchNorm2d construction, check it, write ``demo_tv.pth`` and the config."""
    model = model.cpu()
    state = frozen_state_dict(model)
    frozen = build_model(frozen_bn=True).eval()
    frozen.load_state_dict(state, strict=True)
    check = [
        torch.from_numpy(generate_image(s).image).permute(2, 0, 1).float().div(255) for s in (1, 2)
    ]
    with torch.no_grad():
        a, b = model(check), frozen(check)
    for x, y in zip(a, b, strict=True):
        # Same maths, different float op order (scale/shift folded vs normalise-then-affine).
        if not torch.equal(x["labels"], y["labels"]):
            raise RuntimeError("frozen-BN model gives other labels than the BN model in eval mode")
        for k, tol in (("boxes", 1e-2), ("scores", 1e-4), ("masks", 1e-3)):
            diff = (x[k] - y[k]).abs().max().item() if x[k].numel() else 0.0
            if diff > tol:
                raise RuntimeError(f"frozen-BN model differs from the BN model on {k!r} by {diff}")
    say("frozen-BN strict load OK; eval outputs equal to the BN model's within float rounding")
    torch.save(state, args.out / "demo_tv.pth")
    n_params = sum(v.numel() for k, v in state.items() if "running_" not in k)
    cfg = demo_config()
    config = {
        "architecture": "torchvision MaskRCNN, resnet18 + BackboneWithFPN",
        "class_names": list(CLASS_NAMES),
        "backbone": {
            "body": "resnet18",
            "norm_layer": "FrozenBatchNorm2d",
            "return_layers": {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
            "in_channels_list": [64, 128, 256, 512],
            "out_channels": cfg.fpn_channels,
        },
        "rpn_anchor_generator": {
            "sizes": [list(s) for s in cfg.anchor_sizes],
            "aspect_ratios": [list(a) for a in cfg.aspect_ratios],
        },
        "box_head": {"in_channels": cfg.fpn_channels * 7 * 7, "representation_size": cfg.box_representation},
        "box_predictor": {"in_channels": cfg.box_representation, "num_classes": cfg.num_classes},
        "mask_head": {"in_channels": cfg.fpn_channels, "layers": list(cfg.mask_layers), "dilation": 1},
        "mask_predictor": {
            "in_channels": cfg.mask_layers[-1],
            "dim_reduced": cfg.mask_dim_reduced,
            "num_classes": cfg.num_classes,
        },
        "maskrcnn_kwargs": recorded_kwargs(cfg),
        "parameters": n_params,
        "training": {
            "data": "tools.scenes.shapes.generate_image, on the fly",
            "train_seed_base": TRAIN_SEED_BASE,
            "image_size_hw": [args.height, args.width],
            "shapes_per_image": [2, args.max_shapes],
            "transform_during_training": {
                "min_size": min(args.height, args.width),
                "max_size": max(args.height, args.width),
            },
            "iterations": args.iters,
            "extend": list(args.extend) if args.extend else None,
            "iterations_run": args.extend[1] if args.extend else args.iters,
            "batch": args.batch,
            "optimizer": "AdamW",
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup_iters": args.warmup,
            "schedule": "linear warmup, cosine to 1%",
            "grad_clip_norm": 10.0,
            "norm": "BatchNorm2d (batch statistics) during training, folded to FrozenBatchNorm2d",
            "bn_freeze": {
                "from_iteration": args.freeze_bn_at if args.freeze_bn_at >= 0 else None,
                "calibration_frames": args.bn_calibration,
                "calibration_seed_base": CALIBRATION_SEED_BASE,
                "how": "running mean/var reset and averaged exactly over frames fed one at a "
                "time, then BatchNorm2d in eval mode for the rest of training",
            },
            "seed": args.seed,
            "device": args.device,
            "threads": args.threads,
            "wall_time_s": round(wall_s, 1),
            "torch": torch.__version__,
        },
    }
    (args.out / "demo_config.json").write_text(json.dumps(config, indent=2) + "\n")
    say(f"wrote {args.out / 'demo_tv.pth'} ({n_params} parameters) and demo_config.json")


if __name__ == "__main__":
    main()
