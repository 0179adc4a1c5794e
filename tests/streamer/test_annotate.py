"""streamer.annotate: drawing on real photos, writing real H.264 videos and PNGs, decoding them back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from engines.masks import BoxMask
from engines.runner import Detections
from streamer.annotate import (
    AnnotateTarget,
    PngWriter,
    VideoWriter,
    class_color,
    draw_detections,
    track_color,
)
from streamer.media import MediaInfo, open_media
from streamer.offline import ProcessOptions, process_inputs
from tests.streamer.media_files import HEIGHT, N_FRAMES, WIDTH, FixedRunner, source_frame

NAMES = ("__background__", "circle", "square")


def _detections(boxes: list[list[float]], scores: list[float], labels: list[int],
                size: tuple[int, int] = (HEIGHT, WIDTH)) -> Detections:
    k = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(k, 4), np.array(scores, np.float32),
                      np.array(labels, np.int64), np.ones((k, 28, 28), np.float32), size)


def _disk(cx: float, cy: float, r: float, size: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    yy, xx = np.mgrid[: size[0], : size[1]]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def _decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_mask_pixels_are_blended_with_the_class_colour() -> None:
    src = source_frame(0)
    det = _detections([[20, 20, 70, 52]], [0.9], [1])
    mask = _disk(45, 36, 10)
    out = draw_detections(src, det, [BoxMask(0, 0, mask)], NAMES)
    colour = np.array(class_color(1), np.float64)
    expected = 0.5 * src[mask] + 0.5 * colour
    assert np.abs(out[mask] - expected).max() <= 0.5 + 1e-9
    # Each blended pixel moved halfway toward the class colour.
    before = np.linalg.norm(src[mask] - colour, axis=1)
    after = np.linalg.norm(out[mask].astype(np.float64) - colour, axis=1)
    assert np.allclose(after, before / 2, atol=1.0)
    # Rows below the box carry neither mask, outline nor label: untouched.
    assert np.array_equal(out[54:], src[54:])
    assert np.array_equal(src, source_frame(0)), "the input image must not be modified"


def test_box_outline_and_label_use_the_class_colour() -> None:
    src = source_frame(0)
    det = _detections([[20, 20, 70, 52]], [0.9], [2])
    out = draw_detections(src, det, None, NAMES)
    colour = class_color(2)
    assert tuple(out[36, 20]) == colour and tuple(out[36, 69]) == colour  # left/right edges
    assert tuple(out[51, 45]) == colour                                  # bottom edge
    band, src_band = out[:20, 20:70].reshape(-1, 3), src[:20, 20:70].reshape(-1, 3)
    assert (band == colour).all(axis=1).sum() > 50                       # label background
    text = (band != colour).any(axis=1) & (band != src_band).any(axis=1)
    assert (band[text] < 80).all(axis=1).sum() > 5                       # dark (anti-aliased) text
    assert np.array_equal(out[22:50, 22:68], src[22:50, 22:68])          # no mask: inside untouched


def test_label_text_is_white_on_dark_class_colours() -> None:
    assert sum(class_color(1)) < 400  # label 1 is a dark blue
    src = source_frame(0)
    out = draw_detections(src, _detections([[20, 20, 70, 52]], [0.9], [1]), None, NAMES)
    band, src_band = out[:20, 20:70].reshape(-1, 3), src[:20, 20:70].reshape(-1, 3)
    text = (band != class_color(1)).any(axis=1) & (band != src_band).any(axis=1)
    assert (band[text] > 180).all(axis=1).sum() > 5
    assert (band[text] < 80).all(axis=1).sum() == 0


def test_most_confident_instance_is_drawn_on_top() -> None:
    src = source_frame(0)
    det = _detections([[10, 20, 60, 60], [30, 20, 90, 60]], [0.4, 0.8], [1, 2])
    masks = np.stack([_disk(40, 40, 12), _disk(50, 40, 12)])
    out = draw_detections(src, det, [BoxMask(0, 0, m) for m in masks], NAMES)
    y, x = 40, 45  # in both masks
    low, high = np.array(class_color(1)), np.array(class_color(2))
    expected = 0.5 * (0.5 * src[y, x] + 0.5 * low) + 0.5 * high
    assert np.abs(out[y, x] - expected).max() <= 1.0


def test_masks_must_match_detections_and_image() -> None:
    det = _detections([[0, 0, 10, 10]], [0.9], [1])
    with pytest.raises(ValueError, match=r"one box mask per detection \(1\), got 2"):
        draw_detections(source_frame(0), det, [BoxMask(0, 0, np.zeros((4, 4), bool))] * 2, NAMES)
    with pytest.raises(ValueError, match=r"mask 0 \(32x48 at x=60, y=0\) does not fit the 96x64 image"):
        draw_detections(source_frame(0), det, [BoxMask(60, 0, np.zeros((32, 48), bool))], NAMES)


def test_tracked_instances_are_coloured_and_labelled_by_track() -> None:
    det = _detections([[8, 8, 40, 40], [50, 8, 90, 40]], [0.9, 0.8], [1, 1])
    masks = [BoxMask(8, 8, np.ones((32, 32), bool)), BoxMask(50, 8, np.ones((32, 40), bool))]
    image = source_frame(0)
    out = draw_detections(image, det, masks, NAMES, track_ids=[7, None])
    centre = out[24, 24].astype(np.float64)
    expected = 0.5 * image[24, 24] + 0.5 * np.array(track_color(7), np.float64)
    assert np.abs(centre - expected).max() <= 1.0
    other = 0.5 * image[24, 70] + 0.5 * np.array(class_color(1), np.float64)  # no id: the class colour
    assert np.abs(out[24, 70] - other).max() <= 1.0
    labelled = draw_detections(image, det, masks, NAMES, track_ids=[7, 12])
    assert not np.array_equal(labelled, out)  # "#12 circle 0.80" replaces "circle 0.80"
    with pytest.raises(ValueError, match=r"one id per detection \(2\), got 1"):
        draw_detections(image, det, masks, NAMES, track_ids=[1])
    assert len({track_color(i) for i in range(1, 41)}) == 40


def test_class_colours_are_stable_and_distinct() -> None:
    colours = [class_color(label) for label in range(1, 21)]
    assert colours == [class_color(label) for label in range(1, 21)]
    assert len(set(colours)) == 20


def _annotate_clip(name: str, media_dir: Path, target: Path) -> tuple[list[np.ndarray], int]:
    """Run ``FixedRunner`` over ``name`` with ``--annotate target``; the decoded source frames and #messages."""
    out = io.StringIO()
    options = ProcessOptions(annotate=AnnotateTarget.parse(str(target)))
    failures = process_inputs([str(media_dir / name)], FixedRunner(), out, options)
    assert failures == []
    with open_media(media_dir / name) as reader:
        frames = [f.image for f in reader]
    return frames, len(out.getvalue().splitlines())


@pytest.mark.parametrize("name", ["h264.mp4", "vp9.webm", "anim.gif", "mjpeg.avi", "photo.png"])
def test_annotated_video_has_source_frames_and_blended_mask(media_dir: Path, tmp_path: Path,
                                                            name: str) -> None:
    target = tmp_path / "annotated.mp4"
    source, n_messages = _annotate_clip(name, media_dir, target)
    annotated = _decode_all(target)
    assert len(annotated) == len(source) == n_messages
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
    for i, (src, ann) in enumerate(zip(source, annotated, strict=True)):
        # FixedRunner's 0.9 "thing" fills the middle half: in its class colour while untracked
        # (images; frame 0, before the track is confirmed), then in its track's colour
        tracked = name != "photo.png" and i >= 1
        thing = np.array(track_color(1) if tracked else class_color(1), np.float64)
        assert ann.shape == src.shape
        centre_src = src[28:36, 40:56].astype(np.float64)
        centre_ann = ann[28:36, 40:56].astype(np.float64)
        moved = np.linalg.norm(centre_ann - thing, axis=-1).mean()
        start = np.linalg.norm(centre_src - thing, axis=-1).mean()
        assert moved == pytest.approx(start / 2, abs=6.0)  # halfway, within H.264 loss
        # The corner outside both boxes stays the source (H.264 loss only; block means, as
        # H.264 smooths away gif's dithering).
        corner_diff = ann[56:, 80:].mean(axis=(0, 1)) - src[56:, 80:].mean(axis=(0, 1))
        assert np.abs(corner_diff).max() < 8


def test_odd_sized_source_is_padded_to_even(media_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "odd.mp4"
    source, _ = _annotate_clip("odd.avi", media_dir, target)
    annotated = _decode_all(target)
    assert len(annotated) == len(source) == N_FRAMES
    assert source[0].shape == (63, 95, 3)
    assert annotated[0].shape == (64, 96, 3)  # yuv420p needs even sizes: one edge row/column added
    assert np.abs(annotated[0][63].astype(np.int16) - annotated[0][62]).mean() < 6


def test_video_writer_timing_follows_source_rate(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "v.mkv", fps=12.5)
    for i in range(5):
        writer.write(source_frame(i))
    writer.close()
    writer.close()  # idempotent
    with av.open(str(tmp_path / "v.mkv")) as container:
        times = [f.time for f in container.decode(video=0)]
    assert times == pytest.approx([i / 12.5 for i in range(5)], abs=2e-3)


def test_png_directory_holds_exact_annotated_frames(media_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "pngs"
    options = ProcessOptions(annotate=AnnotateTarget.parse(f"{target}/"))
    runner = FixedRunner()
    inputs = [str(media_dir / "h264.mp4"), str(media_dir / "photo.png")]
    assert process_inputs(inputs, runner, io.StringIO(), options) == []
    names = sorted(p.name for p in target.iterdir())
    assert names == [f"h264-{i:06d}.png" for i in range(N_FRAMES)] + ["photo.png"]
    with open_media(media_dir / "photo.png") as reader:
        src = next(iter(reader)).image
    det = runner.infer([src])[0].filter(0.5)
    expected = draw_detections(src, det, det.box_masks(), FixedRunner.CLASS_NAMES)
    assert np.array_equal(np.asarray(Image.open(target / "photo.png")), expected)


@pytest.mark.parametrize("floor", [None, 0.5])
def test_annotate_threshold_draws_only_confident_instances(media_dir: Path, tmp_path: Path,
                                                           floor: float | None) -> None:
    """Messages keep every instance >= --score-threshold; drawings only those >= --annotate-threshold."""
    target = tmp_path / "pngs"
    options = ProcessOptions(score_threshold=0.1, annotate=AnnotateTarget.parse(f"{target}/"),
                             annotate_threshold=floor)
    out = io.StringIO()
    runner = FixedRunner()
    assert process_inputs([str(media_dir / "photo.png")], runner, out, options) == []
    assert [i["score"] for i in json.loads(out.getvalue())["instances"]] == pytest.approx([0.9, 0.3])
    with open_media(media_dir / "photo.png") as reader:
        src = next(iter(reader)).image
    det = runner.infer([src])[0].filter(0.1 if floor is None else floor)
    assert len(det) == (2 if floor is None else 1)
    expected = draw_detections(src, det, det.box_masks(), FixedRunner.CLASS_NAMES)
    assert np.array_equal(np.asarray(Image.open(target / "photo.png")), expected)


def test_png_writer_names_frames(tmp_path: Path) -> None:
    writer = PngWriter(tmp_path / "new", "clip", still=False)
    writer.write(source_frame(0))
    writer.write(source_frame(1))
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["clip-000000.png", "clip-000001.png"]


def test_target_parsing(tmp_path: Path) -> None:
    assert AnnotateTarget.parse("out.mp4") == AnnotateTarget(Path("out.mp4"), is_dir=False)
    assert AnnotateTarget.parse("out.MKV").is_dir is False
    assert AnnotateTarget.parse("frames/") == AnnotateTarget(Path("frames"), is_dir=True)
    assert AnnotateTarget.parse(str(tmp_path)).is_dir  # an existing directory needs no slash
    with pytest.raises(ValueError, match=r"ending in \.mp4, \.mkv, \.mov.*'out\.avi'"):
        AnnotateTarget.parse("out.avi")


def test_target_names_one_output_per_input(tmp_path: Path) -> None:
    info = MediaInfo("a/clip.mp4", "video", WIDTH, HEIGHT, N_FRAMES, 10.0, 0.8, "h264")
    target = AnnotateTarget.parse(str(tmp_path / "out.mp4"))
    assert target.video_path("a/clip.mp4", 2) == tmp_path / "out-clip.mp4"
    single = target.writer_for("a/clip.mp4", info, n_inputs=1)
    several = target.writer_for("a/clip.mp4", info, n_inputs=2)
    assert isinstance(single, VideoWriter) and single.path == tmp_path / "out.mp4"
    assert isinstance(several, VideoWriter) and several.path == tmp_path / "out-clip.mp4"
    target.check_inputs(["a/clip.mp4"])
    target.check_inputs(["a/clip.mp4", "b/other.mp4"])
    with pytest.raises(ValueError, match="same name stem 'clip'"):
        target.check_inputs(["a/clip.mp4", "b/clip.mkv"])
    AnnotateTarget.parse("out.mp4").check_inputs(["a/clip.mp4", "a/clip.mp4"])  # same file twice


def test_target_never_overwrites_an_input(tmp_path: Path) -> None:
    clip, photo = str(tmp_path / "clip.mp4"), str(tmp_path / "photo.png")
    with pytest.raises(ValueError, match="would overwrite that input"):
        AnnotateTarget.parse(clip).check_inputs([clip])
    with pytest.raises(ValueError, match="would overwrite that input"):
        AnnotateTarget.parse(f"{tmp_path}/").check_inputs([clip, photo])
    AnnotateTarget.parse(f"{tmp_path}/ann/").check_inputs([clip, photo])
    AnnotateTarget.parse(str(tmp_path / "out.mp4")).check_inputs([clip, photo])
