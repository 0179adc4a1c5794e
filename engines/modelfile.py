"""Our model file: one safetensors file holding weights, architecture, class names and preprocessing.

Layout: tensors under torchvision's state-dict names (so the weights stay usable with
torchvision), and string metadata:

* ``format``: ``"maskrcnn-streamer/model/1"``
* ``name``: model name;
* ``config``: JSON of :class:`engines.model.config.MaskRCNNConfig` (architecture, anchors,
  preprocessing sizes, thresholds);
* ``class_names``: JSON list, index 0 = background;
* ``source``: where the weights came from (free text), ``created``: ISO time.

Tensors may be stored in float16 to halve the file (``half=True``); they are loaded as float32.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors.torch import safe_open as _safe_open

from engines.model.config import MaskRCNNConfig
from engines.model.maskrcnn import MaskRCNN
from engines.model.state_dict import load_into

FORMAT = "maskrcnn-streamer/model/1"
REQUIRED_METADATA = ("format", "name", "config", "class_names")


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and what is wrong."""


@dataclass
class ModelFile:
    """A loaded model file: the built model plus its metadata."""

    model: MaskRCNN
    name: str
    class_names: tuple[str, ...]
    metadata: dict[str, str]


def save_model_file(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    cfg: MaskRCNNConfig,
    class_names: Sequence[str],
    name: str,
    source: str = "",
    half: bool = False,
) -> Path:
    """Write ``state_dict`` (torchvision key names) and metadata to ``path``."""
    if len(class_names) != cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {cfg.num_classes}-class model")
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
            v = v.to(torch.float16)
        tensors[k] = v
    meta = {
        "format": FORMAT,
        "name": name,
        "config": json.dumps(cfg.to_dict()),
        "class_names": json.dumps(list(class_names)),
        "source": source,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "stored_dtype": "float16" if half else "float32",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a model file, validated; :class:`ModelFileError` if it is not one."""
    try:
        with _safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{path}: not a readable safetensors model file ({e})") from e
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: safetensors file lacks model metadata {missing}; convert checkpoints with "
                             "`streamer convert CHECKPOINT --out MODEL.safetensors`")
    if meta["format"] != FORMAT:
        raise ModelFileError(f"{path}: format {meta['format']!r} is not {FORMAT!r}")
    return dict(meta)


def load_model_file(path: str | Path) -> ModelFile:
    """Build and strictly load the model stored in ``path``."""
    meta = read_metadata(path)
    try:
        cfg = MaskRCNNConfig.from_dict(json.loads(meta["config"]))
        names = tuple(json.loads(meta["class_names"]))
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: invalid model metadata: {e}") from e
    sd: dict[str, Any] = load_file(str(path))
    model = MaskRCNN(cfg)
    try:
        load_into(model, sd)
    except ValueError as e:
        raise ModelFileError(f"{path}: {e}") from e
    return ModelFile(model, meta["name"], names, meta)
