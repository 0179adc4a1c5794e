"""The shipped demo model: file, torchvision equivalence, and accuracy on a video it has not seen."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from pycocotools import mask as mask_utils

from engines.loading import load_runner
from engines.modelfile import REQUIRED_METADATA, read_metadata
from engines.presets import preset
from engines.reference import torchvision_model
from engines.weights import demo_model_path, load_model
from streamer.media import open_media
from streamer.offline import ProcessOptions, process_inputs
from streamer.schema import decode_rle
from tools.matching import MatchTally, match_frame
from tools.scenes.shapes import CLASS_NAMES
from tools.scenes.video import generate_video

UNSEEN_SEED = 90210  # not the sample video's seed (424242), nor a training seed (images, >= 10_000_000)


def torchvision_demo_construction() -> torch.nn.Module:
    """The exact torchvision construction the demo model's state dict loads into (docs/model-card.md)."""
    from torch import nn
    from torchvision.models import resnet18
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                               [64, 128, 256, 512], out_channels=128)
    model: nn.Module = MaskRCNN(
        backbone, num_classes=None, min_size=360, max_size=640,
        rpn_anchor_generator=AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5),
        box_head=TwoMLPHead(128 * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, 5),
        mask_head=MaskRCNNHeads(128, (128, 128, 128, 128), 1), mask_predictor=MaskRCNNPredictor(128, 128, 5))
    return model.eval()


def test_shipped_file_is_complete_and_small() -> None:
    path = demo_model_path()
    assert path.exists(), "engines/assets/demo_shapes.safetensors must ship with the package"
    assert path.stat().st_size <= 32 * 1024 * 1024
    meta = read_metadata(path)
    for key in (*REQUIRED_METADATA, "source", "created", "stored_dtype"):
        assert meta.get(key), key
    assert json.loads(meta["class_names"]) == ["__background__", "circle", "square", "triangle", "star"]
    cfg = json.loads(meta["config"])
    assert (cfg["backbone"], cfg["min_size"], cfg["max_size"], cfg["num_classes"]) == ("resnet18", 360, 640, 5)


def test_strict_torchvision_load_and_equal_outputs() -> None:
    lm = load_model(None)
    tv = torchvision_demo_construction()
    tv.load_state_dict(lm.model.state_dict(), strict=True)
    frame = next(iter(open_media(_sample()))).image
    with torch.no_grad():
        ref = tv([torch.from_numpy(frame).permute(2, 0, 1).float() / 255])[0]
    ours = lm.model(torch.from_numpy(frame)[None])[0]
    assert len(ref["boxes"]) == len(ours.boxes) > 0
    torch.testing.assert_close(ours.boxes, ref["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(ours.scores, ref["scores"], rtol=0, atol=1e-5)
    assert torch.equal(ours.labels, ref["labels"])


def test_demo_preset_is_the_shipped_architecture() -> None:
    """The ``demo`` preset is the shipped file's config, and the one torchvision builder loads it strictly."""
    lm = load_model(None)
    assert lm.model.cfg == preset("demo")
    assert lm.class_names == CLASS_NAMES
    tv = torchvision_model(preset("demo"), lm.model.state_dict())
    reference = torchvision_demo_construction()
    assert str(tv) == str(reference)
    assert list(tv.state_dict()) == list(reference.state_dict())


def _sample() -> Path:
    from streamer.demo import sample_video_path

    return sample_video_path()


@pytest.fixture(scope="module")
def unseen_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("unseen") / "unseen.mp4"
    gt = generate_video(path, seed=UNSEEN_SEED, seconds=1.6)
    return path, gt


@pytest.fixture(scope="module")
def unseen_scores(unseen_video: tuple[Path, dict]) -> dict[str, float]:
    """Published masks of the unseen video matched to its ground truth (instances >= 400 px)."""
    path, gt = unseen_video
    out = io.StringIO()
    failures = process_inputs([str(path)], load_runner(None), out, ProcessOptions(batch_size=2))
    assert not failures
    messages = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [m["frame"] for m in messages] == list(range(len(gt["images"])))
    tally = MatchTally()
    for msg in messages:
        anns = [a for a in gt["annotations"] if a["image_id"] == msg["frame"]]
        tally.add(match_frame([mask_utils.decode(a["segmentation"]).astype(bool) for a in anns],
                              [a["category_id"] for a in anns],
                              [decode_rle(i["mask"]) for i in msg["instances"]],
                              [i["label"] for i in msg["instances"]]))
    return tally.summary()


def test_end_to_end_masks_on_unseen_video(unseen_scores: dict[str, float],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """>= 95% of GT instances (area >= 400 px) found, mean mask IoU of matches >= 0.85."""
    s = unseen_scores
    with capsys.disabled():
        print(f"\ndemo e2e: found {s['found']}/{s['total']}, mean mask IoU {s['mean_iou']:.3f}, "
              f"class correct {s['correct']}/{s['found']}")
    assert s["total"] >= 50
    assert s["found"] / s["total"] >= 0.95
    assert s["mean_iou"] >= 0.85


def test_end_to_end_classes_on_unseen_video(unseen_scores: dict[str, float]) -> None:
    """Class right for >= 95% of matched instances."""
    assert unseen_scores["correct"] / unseen_scores["found"] >= 0.95
