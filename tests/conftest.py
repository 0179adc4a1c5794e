"""Shared fixtures: small real models (random weights, calibrated on real photos); the options
of the ``gpu`` tests (tests/gpu: ``python3 -m pytest -m gpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpu", "the gpu tests (tests/gpu): engines built and checked on this machine's GPU")
    group.addoption("--gpu-model", type=Path, default=None, metavar="PATH",
                    help="model file of the engine checks (default: the embedded demo model)")
    group.addoption("--gpu-source-size", default="320x240", metavar="WxH",
                    help="frame size the engines are built for (default 320x240)")
    group.addoption("--gpu-parity-frames", type=int, default=4, metavar="N",
                    help="frames of the engines' parity checks (default 4)")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model file (ResNet-18 FPN-64, 5 shape classes, min_size 128) that detects things.

    Random weights calibrated on real photos: fast on CPU (~0.1 s for a 128×96 frame), with
    non-trivial boxes, scores and masks. Not a trained model: use the demo model for accuracy.
    """
    from engines.model.state_dict import detect_config, migrate_keys
    from engines.modelfile import save_model_file
    from tools.calibrate import calibrated_model
    from tools.scenes.shapes import CLASS_NAMES

    tv = calibrated_model("tiny", min_size=128, max_size=224)
    sd = migrate_keys(tv.state_dict())
    cfg = detect_config(sd, min_size=128, max_size=224)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    save_model_file(path, sd, cfg, CLASS_NAMES, name="tiny-random", source="tests: calibrated random weights")
    return path
