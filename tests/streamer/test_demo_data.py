"""The synthetic demo data: scenes, exact visible masks, COCO ground truth, encoded videos."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from streamer.demo.coco import evaluate, load_coco
from tools.scenes.ground_truth import GroundTruthBuilder
from tools.scenes.shapes import (
    CLASS_NAMES,
    MIN_VISIBLE_AREA,
    Shape,
    generate_image,
    rasterize,
    render,
    shape_vertices,
)
from tools.scenes.video import generate_video, video_scenes


def test_same_seed_same_scene_other_seed_differs() -> None:
    a, b, c = generate_image(5), generate_image(5), generate_image(6)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)


def test_scene_shapes_and_label_range() -> None:
    scene = generate_image(11, height=120, width=200)
    assert scene.image.shape == (120, 200, 3) and scene.image.dtype == np.uint8
    assert scene.masks.shape == (len(scene.labels), 120, 200) and scene.masks.dtype == bool
    assert all(1 <= int(v) < len(CLASS_NAMES) for v in scene.labels)


def test_visible_masks_are_disjoint_and_large_enough() -> None:
    for seed in range(10):
        scene = generate_image(seed)
        assert (scene.masks.sum(axis=0) <= 1).all(), (
            "a pixel belongs to at most one visible instance"
        )
        assert (scene.masks.sum(axis=(1, 2)) >= MIN_VISIBLE_AREA).all()


def test_square_mask_is_exact_axis_aligned_block() -> None:
    # radius 10*sqrt(2) at 45° gives an axis-aligned 20x20 square from (20,30) to (40,50).
    square = Shape(2, (30.0, 40.0), 10 * np.sqrt(2), np.pi / 4, (255, 0, 0))
    (y0, x0), window = rasterize(square, 100, 100)
    full = np.zeros((100, 100), dtype=bool)
    full[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    expected = np.zeros((100, 100), dtype=bool)
    expected[30:50, 20:40] = True
    assert np.array_equal(full, expected)


def test_mask_pixels_carry_the_shape_colour_and_occluded_part_is_removed() -> None:
    background = np.full((80, 80, 3), 10.0, dtype=np.float32)
    back = Shape(1, (30.0, 40.0), 20.0, 0.0, (200, 0, 0))  # circle
    front = Shape(2, (50.0, 40.0), 15.0, 0.3, (0, 0, 200))  # square over its right side
    scene = render([back, front], background)
    assert list(scene.labels) == [1, 2]
    circle, square = scene.masks
    (y0, x0), window = rasterize(back, 80, 80)
    whole_circle = np.zeros((80, 80), dtype=bool)
    whole_circle[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    assert (circle & square).sum() == 0
    assert circle.sum() < whole_circle.sum(), "the square must hide part of the circle"
    assert np.array_equal(circle | (whole_circle & square), whole_circle)
    assert (scene.image[circle] == (200, 0, 0)).all()
    assert (scene.image[square] == (0, 0, 200)).all()
    assert (scene.image[~(circle | square)] == 10).all()


def test_tiny_visible_remainder_is_dropped() -> None:
    background = np.zeros((60, 60, 3), dtype=np.float32)
    hidden = Shape(1, (30.0, 30.0), 5.0, 0.0, (255, 255, 255))
    cover = Shape(2, (30.0, 30.0), 20.0, 0.0, (0, 255, 0))
    scene = render([hidden, cover], background)
    assert list(scene.labels) == [2]


def test_star_is_not_convex() -> None:
    star = Shape(4, (50.0, 50.0), 40.0, -np.pi / 2, (0, 0, 0), (0.4,))
    (y0, x0), window = rasterize(star, 100, 100)
    assert window[50 - y0, 50 - x0], "centre is inside"
    verts = shape_vertices(star)
    tip_a, tip_b = verts[0], verts[2]
    mid = (tip_a + tip_b) / 2  # between two outer tips, outside the star
    assert not window[int(mid[1]) - y0, int(mid[0]) - x0]


def test_coco_ground_truth_loads_and_scores_perfect_detections() -> None:
    builder = GroundTruthBuilder()
    for seed in (1, 2, 3):
        scene = generate_image(seed, height=120, width=160)
        builder.add(scene.masks, scene.labels)
    gt = json.loads(json.dumps(builder.to_dict()))
    coco = load_coco(gt)
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[0]))[0]
    assert ann["area"] == coco.annToMask(ann).sum()
    perfect = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": 1.0,
            "bbox": a["bbox"],
            "segmentation": a["segmentation"],
        }
        for a in gt["annotations"]
    ]
    assert evaluate(gt, perfect, "segm")["AP"] == pytest.approx(1.0)
    assert evaluate(gt, perfect, "bbox")["AP50"] == pytest.approx(1.0)


def test_video_decodes_with_expected_frames_and_matches_ground_truth(tmp_path: Path) -> None:
    path, gt_path = tmp_path / "clip.mp4", tmp_path / "clip.json"
    gt = generate_video(path, seed=3, width=160, height=96, fps=10, seconds=2, gt_path=gt_path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 20 == len(gt["images"])
    assert frames[0].shape == (96, 160, 3)
    assert json.loads(gt_path.read_text())["annotations"] == gt["annotations"]
    load_coco(gt)
    scenes = [scene for scene, _ in video_scenes(3, width=160, height=96, frames=20)]
    for index in (0, 19):
        anns = [a for a in gt["annotations"] if a["image_id"] == index]
        masks = np.zeros_like(scenes[index].masks)
        for k, a in enumerate(anns):
            rle = {
                "size": a["segmentation"]["size"],
                "counts": a["segmentation"]["counts"].encode(),
            }
            masks[k] = mask_utils.decode(rle).astype(bool)
        assert len(anns) == len(scenes[index].masks)
        assert np.array_equal(masks, scenes[index].masks)
        # lossy H.264 stays close to the rendered frame
        assert np.abs(frames[index].astype(int) - scenes[index].image).mean() < 8


def test_video_objects_move_enter_and_leave() -> None:
    frames = list(video_scenes(4, width=160, height=96, frames=150))
    tracks = [dict(zip(ids.tolist(), scene.masks, strict=True)) for scene, ids in frames]
    first, last = set(tracks[0]), set(tracks[-1])
    assert first - last, "some objects leave the frame"
    assert last - first, "new objects enter the frame"
    track = next(iter(first))
    centroid = np.argwhere(tracks[0][track]).mean(axis=0)
    later = np.argwhere(tracks[1][track]).mean(axis=0) if track in tracks[1] else centroid
    assert not np.allclose(centroid, later), "objects move between frames"


def test_odd_video_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        generate_video(tmp_path / "x.mp4", seed=0, width=161, height=96, seconds=0.2)
