"""Weights on disk → a PyTorch :class:`MaskRCNN` with its class names (:class:`LoadedModel`).

=====================  ==========================================
file                   what it is
=====================  ==========================================
``None``               the embedded demo model (package data)
``*.safetensors``      our model file (``engines.modelfile``)
``*.pth/.pt/.ckpt``    a torchvision Mask R-CNN checkpoint
=====================  ==========================================

The PyTorch runtime (:mod:`engines.torch_runner`) runs what this opens; exporters and
references use it directly.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from engines.classes import default_class_names
from engines.model.maskrcnn import MaskRCNN
from engines.model.state_dict import StateDictError, model_from_state_dict
from engines.modelfile import ModelFileError, load_model_file

DEMO_MODEL = "demo_shapes.safetensors"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


class ModelLoadError(ValueError):
    """The model could not be opened; the message names the file, the reason and what to do."""


@dataclass
class LoadedModel:
    model: MaskRCNN
    class_names: tuple[str, ...]
    name: str


def demo_model_path() -> Path:
    """Path of the embedded demo model (may not exist in a source tree without assets)."""
    return Path(str(resources.files("engines").joinpath("assets", DEMO_MODEL)))


def load_checkpoint(path: str | Path, **overrides: Any) -> LoadedModel:
    """A torchvision checkpoint (state dict or training checkpoint) → model with default class names."""
    path = Path(path)
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign files
        raise ModelLoadError(f"{path}: {_checkpoint_refusal(e)}; expected a torchvision Mask R-CNN "
                             "state dict (or a training checkpoint holding one under 'model') saved "
                             "with torch.save, or a .safetensors model file") from e
    try:
        model = model_from_state_dict(obj, **overrides)
    except StateDictError as e:
        raise ModelLoadError(f"{path}: {e}") from e
    return LoadedModel(model, default_class_names(model.cfg.num_classes), path.stem)


def _checkpoint_refusal(err: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file.

    PyTorch's own message spans many lines and suggests ``weights_only=False`` (which would run
    code from the file); only the name of the offending Python object is kept.
    """
    text = str(err)
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].split(" was not an allowed", 1)[0].strip()
            return f"holds Python objects besides tensors, refused for safety ({detail})"
    first = " ".join(text.split())[:120] or type(err).__name__
    return f"not a PyTorch checkpoint ({type(err).__name__}: {first})"


def load_model(path: str | Path | None, **overrides: Any) -> LoadedModel:
    """Our model file or a torchvision checkpoint as a :class:`LoadedModel` (PyTorch)."""
    if path is None:
        path = demo_model_path()
        if not path.exists():
            raise ModelLoadError(f"the embedded demo model is missing ({path}); reinstall the package or pass --model")
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file; pass --model with a .safetensors model file or a .pth checkpoint")
    if path.suffix == ".safetensors":
        if overrides:
            raise ModelLoadError(f"{path}: overrides {sorted(overrides)} apply to checkpoints only; "
                                 "a model file carries its own settings")
        try:
            mf = load_model_file(path)
        except ModelFileError as e:
            raise ModelLoadError(str(e)) from e
        return LoadedModel(mf.model, mf.class_names, mf.name)
    return load_checkpoint(path, **overrides)
