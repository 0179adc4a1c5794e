"""streamer.media: real files encoded with PyAV, decoded with PyAV."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.frames import Frame
from streamer.media import MediaError, open_media
from tests.streamer.media_files import (
    FPS,
    HEIGHT,
    IMAGE_CASES,
    LONG_FRAMES,
    N_FRAMES,
    VIDEO_CASES,
    WIDTH,
    MediaCase,
    encode_video,
    source_frame,
)


def _nearest_source(image: np.ndarray, n: int) -> int:
    """Index of the source frame ``image`` is closest to (mean absolute difference)."""
    errors = [np.abs(image.astype(np.int16) - source_frame(i)).mean() for i in range(n)]
    return int(np.argmin(errors))


@pytest.mark.parametrize("case", VIDEO_CASES + IMAGE_CASES, ids=lambda c: c.name)
def test_decodes_every_frame_in_order(media_dir: Path, case: MediaCase) -> None:
    with open_media(media_dir / case.name) as reader:
        info = reader.info
        frames = list(reader)
    assert (info.kind, info.width, info.height) == (case.kind, case.width, case.height)
    assert [f.index for f in frames] == list(range(case.n_frames))
    for f in frames:
        assert f.image.dtype == np.uint8 and f.image.shape == (case.height, case.width, 3)
        assert f.image.flags.c_contiguous
        # Lossy codecs and gif's 256 colours still keep each frame nearest its own source.
        assert _nearest_source(f.image, case.n_frames if case.kind == "video" else N_FRAMES) == f.index
    if case.kind == "image":
        assert frames[0].pts is None and info.fps is None and info.frame_count == 1
    else:
        pts = [f.pts for f in frames]
        assert pts == pytest.approx([i / FPS for i in range(N_FRAMES)], abs=1e-3)
        assert info.fps == pytest.approx(FPS)
        assert info.expected_frames == N_FRAMES


def test_frames_carry_index_pts_image_and_the_path(media_dir: Path) -> None:
    path = str(media_dir / "h264.mp4")
    with open_media(path) as reader:
        f = next(iter(reader))
    assert (f.index, f.pts, f.image.shape, f.stream, f.source) == (0, 0.0, (HEIGHT, WIDTH, 3), path, path)


def test_frame_count_unknown_in_matroska_is_estimated_from_duration(media_dir: Path) -> None:
    with open_media(media_dir / "vp9.mkv") as reader:
        assert reader.info.frame_count is None
        assert reader.info.expected_frames == N_FRAMES


@pytest.mark.parametrize(("name", "why"), [
    ("truncated.mp4", "ends inside a packet"),       # mp4 index intact, last sample cut
    ("truncated.mkv", "the container declares"),     # mkv: no error, shorter than its duration
    ("truncated.avi", "Invalid data"),               # FFmpeg decode error on the cut frame
])
def test_truncated_file_yields_decodable_frames_then_error(media_dir: Path, name: str, why: str) -> None:
    frames: list[Frame] = []
    with pytest.raises(MediaError) as info, open_media(media_dir / name) as reader:
        frames.extend(reader)
    assert 0 < len(frames) < LONG_FRAMES
    assert [f.index for f in frames] == list(range(len(frames)))
    err = info.value
    assert err.path == str(media_dir / name)
    assert err.reason.startswith(f"truncated after frame {len(frames) - 1}: ")
    assert why in err.reason
    assert "\n" not in str(err) and str(err).startswith(f"{media_dir / name}: ")


def test_file_cut_between_packets_is_truncated(media_dir: Path, tmp_path: Path) -> None:
    """No FFmpeg error and no partial packet: only the declared frame count tells."""
    with av.open(str(media_dir / "long.mp4")) as container:
        ends = [p.pos + p.size for p in container.demux(video=0) if p.size]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((media_dir / "long.mp4").read_bytes()[: ends[11]])  # 12 whole packets
    frames: list[Frame] = []
    with pytest.raises(MediaError) as info, open_media(cut) as reader:
        frames.extend(reader)
    assert len(frames) == 12
    assert info.value.reason == ("truncated after frame 11: the container declares 30 frames "
                                 "but holds only 12 (12 decode)")


@pytest.mark.parametrize(("name", "reason"), [
    ("missing.mp4", "no such file"),
    ("notes.txt", "not a readable video or image"),
    ("garbage.mp4", "not a readable video or image"),
    ("tone.wav", "no video stream (streams: audio)"),
    (".", "is a directory"),
])
def test_unopenable_inputs_raise_media_error(media_dir: Path, name: str, reason: str) -> None:
    path = media_dir / name
    with pytest.raises(MediaError) as info:
        open_media(path)
    assert info.value.path == str(path)
    assert reason in info.value.reason


def test_cut_image_decodes_no_frame(media_dir: Path, tmp_path: Path) -> None:
    data = (media_dir / "photo.png").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="no frame decodes"), open_media(cut) as reader:
        list(reader)


def test_reader_iterates_once(media_dir: Path) -> None:
    with open_media(media_dir / "photo.png") as reader:
        assert len(list(reader)) == 1
        with pytest.raises(RuntimeError, match="iterates once"):
            list(reader)


@pytest.mark.parametrize("case", VIDEO_CASES + IMAGE_CASES, ids=lambda c: c.name)
def test_rgb_is_pyav_per_frame_conversion(media_dir: Path, case: MediaCase) -> None:
    """The reused converter (streamer.decode) gives exactly what ``VideoFrame.to_ndarray`` does."""
    with av.open(str(media_dir / case.name)) as container:
        expected = [vf.to_ndarray(format="rgb24") for vf in container.decode(video=0)]
    with open_media(media_dir / case.name) as reader:
        got = [f.image for f in reader]
    assert len(got) == len(expected) == case.n_frames
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def _threads_created() -> int:
    """Threads and processes this machine has created since boot (``processes`` of /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("processes "):
            return int(line.split()[1])
    raise AssertionError("no 'processes' line in /proc/stat")


@pytest.mark.skipif(not Path("/proc/stat").exists() or (os.cpu_count() or 1) < 2,
                    reason="needs Linux's /proc/stat, and 2+ CPUs for swscale to use slice threads")
def test_rgb_conversion_makes_no_thread_per_frame(tmp_path: Path) -> None:
    """One swscale context per pass: PyAV's per-frame conversion created and joined its slice
    threads for every frame (2 per frame on 2 CPUs)."""
    path = encode_video(tmp_path / "long.mp4", "libx264", n_frames=60, width=640, height=360)
    with open_media(path) as reader:
        frames = iter(reader)
        next(frames)  # the decoder's and converter's threads start here
        before = _threads_created()
        rest = sum(1 for _ in frames)
        created = _threads_created() - before
    assert rest == 59 and created < 15, f"{created} threads created for 59 frames"
