"""``streamer process --ray`` without a cluster: keyframe segments, outputs, usage errors.

The real-cluster test is tests/streamer/test_ray_cluster.py; these run everywhere in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.cli import main
from streamer.media import open_media
from streamer.ray_output import OutputSink
from streamer.segments import decode_segment, plan_segments
from tools.ray_cluster import keyframe_video


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return keyframe_video(tmp_path_factory.mktemp("seg") / "gop.mp4", 1.6, gop=8, seed=5)


def test_segments_concatenate_to_the_sequential_decode(gop_video: Path) -> None:
    plan = plan_segments("clip.mp4", 8, file=str(gop_video))
    assert [s.first_frame for s in plan.segments] == [0, 8, 16, 24, 32]
    assert plan.expected_frames == 40 and [s.frames for s in plan.segments] == [8] * 5
    with open_media(gop_video, name="clip.mp4") as reader:
        ref = [(f.stream, f.index, f.pts, f.image) for f in reader]
    got = [(f.stream, f.index, f.pts, f.image) for s in reversed(plan.segments) for f in decode_segment(s)]
    got.sort(key=lambda r: r[1])
    assert [r[:3] for r in got] == [r[:3] for r in ref]
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(got, ref, strict=True))


def test_short_files_and_images_are_one_segment(gop_video: Path, tmp_path: Path) -> None:
    assert len(plan_segments(str(gop_video), 30).segments) == 1  # 40 frames < 2 x 30
    assert plan_segments(str(gop_video), None).segments[0].whole
    from PIL import Image

    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    seg = plan_segments(str(tmp_path / "a.png"), 1).segments[0]
    assert seg.whole and not seg.video


def test_merged_output_appears_only_when_finished(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    sink = OutputSink.create(str(target), ["a.mp4"], resume=False)
    sink.write("a.mp4", ['{"frame":0}'], ok=True)
    assert not target.exists()
    sink.finish()
    assert target.read_text() == '{"frame":0}\n' and not list(tmp_path.glob("*.tmp-*"))
    aborted = OutputSink.create(str(tmp_path / "b.jsonl"), ["a.mp4"], resume=False)
    aborted.abort()
    assert list(tmp_path.iterdir()) == [target]


def test_per_input_outputs_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "res"
    sink = OutputSink.create(f"{out}/", ["x/a.mp4", "b.mkv"], resume=True)
    sink.write("x/a.mp4", ["1"], ok=True)
    sink.write("b.mkv", ["2"], ok=False)
    assert (out / "a.jsonl").read_text() == "1\n" and (out / "b.jsonl.partial").read_text() == "2\n"
    again = OutputSink.create(str(out), ["x/a.mp4", "b.mkv"], resume=True)
    assert again.complete("x/a.mp4") and not again.complete("b.mkv")
    with pytest.raises(ValueError, match=r"would both write clip\.jsonl"):
        OutputSink.create(f"{out}/", ["a/clip.mp4", "b/clip.mkv"], resume=False)
    with pytest.raises(ValueError, match="--resume needs --out DIR/"):
        OutputSink.create(str(tmp_path / "one.jsonl"), ["a.mp4"], resume=True)


def test_usage_errors(gop_video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["process", str(gop_video), "--resume"]) == 2
    assert "--resume needs --ray ADDRESS" in capsys.readouterr().err
    assert main(["process", str(gop_video), "--ray", "auto", "--annotate", "x.mp4"]) == 2
    assert "--annotate is not available with --ray" in capsys.readouterr().err
    assert main(["process", str(gop_video), "--ray", "nohostport", "--out", "-"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_missing_ray_names_the_extra(gop_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "o.jsonl"
    assert main(["process", str(gop_video), "--ray", "auto", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --ray needs Ray, which is not installed: pip install 'maskrcnn-streamer[ray]'"]
    assert not list(tmp_path.iterdir())
