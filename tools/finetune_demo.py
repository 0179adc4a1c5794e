"""Fine-tune the demo model on frames of generated *videos* and on shapes cut by the edge (CPU or CUDA).

The first training run (``tools.train_demo``) saw still images only; shapes cut by the frame
edge while entering or leaving, and moving occluders, were rare. This continues from a frozen-BN
state dict on a mix of still images (``--border-fraction`` of their shapes cut by the image edge)
and random crops of video frames, with a cosine schedule sized to a wall-time budget, and writes
the frozen-BN state dict back. ``--train box-head`` updates only the box head and classifier
(backbone, RPN and mask head stay as they are, and each iteration is cheaper).

    python3 -m tools.finetune_demo --weights out/gpu/demo_tv_fp16rounded.pth --minutes 20 --out out/ft
    python3 -m tools.finetune_demo --weights out/ft/demo_tv_shipped.pth --train box-head \
        --full-frame --border-fraction 0.5 --video-fraction 0.3 --box-batch 256 --minutes 60 --out out/ft3
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from tools.demo_training import build_model, demo_config, training_pair
from tools.scenes.shapes import generate_image
from tools.scenes.video import video_scenes

FINETUNE_SEED_BASE = 5_000_000  # videos; disjoint from the sample video and the test videos
MIN_VISIBLE_PX = 30
FRAME_HW = (demo_config().min_size, demo_config().max_size)
"""Whole generated frames (360×640) are fed at the model's own resize, i.e. unscaled."""


def video_crop(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random ``size``-square crop (0: the whole frame) of a random frame of a random video."""
    seed = FINETUNE_SEED_BASE + int(rng.integers(0, 1_000_000))
    steps = int(rng.integers(1, 80))
    *_, (scene, _) = video_scenes(seed, frames=steps)
    h, w = scene.image.shape[:2]
    if size == 0:
        return scene.image, scene.masks, scene.labels
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    masks = scene.masks[:, y:y + size, x:x + size]
    keep = masks.reshape(len(masks), -1).sum(1) >= MIN_VISIBLE_PX
    return scene.image[y:y + size, x:x + size], masks[keep], scene.labels[keep]


def batch(rng: np.random.Generator, n: int, size: int, device: torch.device, video_fraction: float = 0.5,
          border_fraction: float = 0.0, full_frame: bool = False) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``n`` training images and targets; ``full_frame`` uses whole frames (``FRAME_HW``) instead of ``size`` crops."""
    images: list[torch.Tensor] = []
    targets: list[dict[str, torch.Tensor]] = []
    while len(images) < n:
        if rng.random() < video_fraction:
            img, masks, labels = video_crop(rng, 0 if full_frame else size)
        else:
            h, w = FRAME_HW if full_frame else (size, size)
            sc = generate_image(int(rng.integers(30_000_000, 40_000_000)), height=h, width=w,
                                border_fraction=border_fraction)
            img, masks, labels = sc.image, sc.masks, sc.labels
        if len(labels) == 0:
            continue
        image, target = training_pair(img, masks, labels, device)
        images.append(image)
        targets.append(target)
    return images, targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="frozen-BN torchvision state dict")
    p.add_argument("--out", type=Path, default=Path("out/ft"))
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--video-fraction", type=float, default=0.5, help="share of video-frame crops per batch")
    p.add_argument("--border-fraction", type=float, default=0.0,
                   help="share of the still images' shapes placed on the image edge")
    p.add_argument("--full-frame", action="store_true", help="whole 640x360 frames instead of --size crops")
    p.add_argument("--train", choices=("all", "box-head"), default="all", help="which weights to update")
    p.add_argument("--box-batch", type=int, default=None, help="RoIs sampled per image for the box head")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = torch.device(args.device)
    model = build_model(frozen_bn=True)
    model.load_state_dict(torch.load(args.weights, map_location="cpu"), strict=True)
    model.transform.min_size = (FRAME_HW[0],) if args.full_frame else (args.size,)
    model.transform.max_size = FRAME_HW[1] if args.full_frame else args.size
    if args.box_batch is not None:
        model.roi_heads.fg_bg_sampler.batch_size_per_image = args.box_batch
    if args.train == "box-head":
        for name, q in model.named_parameters():
            q.requires_grad_(name.startswith(("roi_heads.box_head.", "roi_heads.box_predictor.")))
    model.to(device).train()
    params = [q for q in model.parameters() if q.requires_grad]
    print(f"training {sum(q.numel() for q in params)} parameters ({args.train})", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    args.out.mkdir(parents=True, exist_ok=True)
    t0, it, iters = time.time(), 0, 10**9
    while it < iters:
        if it == 20:  # size the cosine schedule to the budget from the measured speed
            per_it = (time.time() - t0) / 20
            iters = max(40, int(args.minutes * 60 / per_it))
            print(f"{per_it:.2f} s/it -> {iters} iterations", flush=True)
        frac = 0.0 if iters == 10**9 else it / iters
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        images, targets = batch(rng, args.batch, args.size, device, args.video_fraction,
                                args.border_fraction, args.full_frame)
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        it += 1
        if it % 20 == 0:
            print(f"{time.strftime('%H:%M:%S')} it {it}/{iters} loss {float(loss.detach()):.3f} "
                  + " ".join(f"{k[5:]}={float(v.detach()):.3f}" for k, v in losses.items()), flush=True)
    model.eval()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, args.out / "demo_tv.pth")
    print(f"wrote {args.out / 'demo_tv.pth'} after {it} iterations, {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
