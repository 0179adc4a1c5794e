"""Package a demo-model state dict as the shipped model file (safetensors, float16 storage).

    python3 -m tools.package_demo out/ft3/demo_tv.pth       # → engines/assets/demo_shapes.safetensors
    python3 -m tools.package_demo out/ft3/demo_tv.pth --out /tmp/cand.safetensors --rounded out/ft3/shipped.pth

The state dict is the frozen-BN torchvision one that ``tools.train_demo`` and
``tools.finetune_demo`` write. What tensors cannot tell (anchor sizes, resize limits) comes from
the ``demo`` preset (:mod:`engines.presets`) and the class names from the scene generator
(``tools.scenes.shapes.CLASS_NAMES``), so the file loads as exactly the model-card construction.
``--rounded`` also writes the float16-rounded weights back as a float32 state dict, the weights
the shipped file really holds (for ``tools.eval_demo``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from engines.model.state_dict import detect_config, migrate_keys
from engines.modelfile import load_model_file, save_model_file
from engines.presets import preset
from engines.weights import demo_model_path
from tools.scenes.shapes import CLASS_NAMES

DEFAULT_SOURCE = (
    "trained from scratch on synthetic shapes: tools/train_demo.py on an H200 (1131 it, batch 8), then "
    "tools/finetune_demo.py on CPU; see docs/model-card.md"
)


def package(weights: Path, out: Path, source: str = DEFAULT_SOURCE) -> Path:
    """Write the model file for the state dict at ``weights`` to ``out``; returns ``out``."""
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    demo = preset("demo")
    cfg = detect_config(migrate_keys(sd), anchor_sizes=demo.anchor_sizes, aspect_ratios=demo.aspect_ratios,
                        min_size=demo.min_size, max_size=demo.max_size)
    return save_model_file(out, sd, cfg, CLASS_NAMES, name="demo-shapes-r18fpn", source=source, half=True)


def rounded_state_dict(model_file: Path) -> dict[str, torch.Tensor]:
    """The weights a float16-stored model file holds, as a float32 torchvision state dict."""
    return load_model_file(model_file).model.state_dict()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", type=Path, help="frozen-BN torchvision state dict (.pth)")
    p.add_argument("--out", type=Path, default=demo_model_path())
    p.add_argument("--source", default=DEFAULT_SOURCE, help="provenance written into the metadata")
    p.add_argument("--rounded", type=Path, default=None, help="also write the fp16-rounded state dict here")
    args = p.parse_args()
    path = package(args.weights, args.out, args.source)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.rounded is not None:
        torch.save(rounded_state_dict(path), args.rounded)
        print(f"wrote {args.rounded}")


if __name__ == "__main__":
    main()
