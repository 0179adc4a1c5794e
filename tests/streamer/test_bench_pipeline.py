"""``streamer bench-pipeline`` runs the real daemon path end to end and reports what it measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from streamer.cli import main
from streamer.replay import ReplayRunner, synthetic_detections


def test_synthetic_detections_are_valid_and_realistic() -> None:
    det = synthetic_detections(50, 1080, 1920, seed=3)
    assert len(det) == 50 and not any(flag.any() for flag in det.invalid().values())
    assert (det.boxes[:, [0, 2]] <= 1920).all() and (det.boxes[:, [1, 3]] <= 1080).all()
    sides = det.boxes[:, 2:] - det.boxes[:, :2]
    assert 10 < np.median(sides) < 400
    # soft masks: mostly above the threshold inside, below outside, a rim in between
    assert 0.2 < float((det.mask_probs > 0.5).mean()) < 0.9
    assert (np.diff(det.scores) <= 0).all()
    runner = ReplayRunner(5)
    a, b = runner.infer([np.zeros((60, 80, 3), np.uint8)] * 2)
    assert len(a) == len(b) == 5 and a.image_size == (60, 80)


def test_the_replay_runners_boxes_move_like_a_cameras_and_stay_in_the_frame() -> None:
    """Consecutive answers differ by at most ``speed_px`` per axis, boxes keep their sizes and
    bounce off the edges (after 5,000 frames still inside); ``speed_px=0`` repeats one frame."""
    from streamer.replay import BoxMotion

    image = np.zeros((1080, 1920, 3), np.uint8)
    base = synthetic_detections(20, 1080, 1920, seed=0).boxes
    first, second = ReplayRunner(20, speed_px=2.0).infer([image] * 2)
    assert np.array_equal(first.boxes, base)
    step = np.abs(second.boxes - first.boxes)
    assert 0 < step.max() <= 2.0 + 1e-3 and np.allclose(step[:, :2], step[:, 2:], atol=1e-3)
    far = BoxMotion(base, np.full((20, 2), 1.0), 1080, 1920).at(5000)
    assert (far[:, :2] >= 0).all() and (far[:, 2] <= 1920).all() and (far[:, 3] <= 1080).all()
    assert np.allclose(far[:, 2:] - far[:, :2], base[:, 2:] - base[:, :2], atol=1e-3)
    still = ReplayRunner(20, speed_px=0).infer([image] * 2)
    assert np.array_equal(still[0].boxes, still[1].boxes)


def test_bench_pipeline_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code = main(["bench-pipeline", "--streams", "2", "--frames", "6", "--size", "320x240", "--instances", "5",
                 "--post-instances", "5", "--rounds", "3", "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["decode_only"]["frames"] == 12 and r["pipeline"]["frames"] == 12  # each round its own output
    assert r["pipeline"]["exit"] == 0 and r["decode_only"]["fps"] > 0
    ratios = sorted(rnd["ratio"] for rnd in r["rounds"])
    assert len(ratios) == 3 and r["pipeline_vs_decode"] == ratios[1] > 0
    stages = r["pipeline"]["stage_cpu_ms_per_frame"]
    assert set(stages) == {"decode", "inference", "postprocess", "track", "publish"} and stages["postprocess"] > 0
    assert r["tracking"] is True and stages["track"] > 0
    beyond = r["cpu_beyond_decode"]
    parts = sum(ms for part, ms in beyond.items() if part != "total")
    assert abs(parts - beyond["total"]) < 1e-9 and beyond["postprocess"] == stages["postprocess"]
    post = r["postprocess"][0]
    assert post["instances"] == 5 and post["ms"] > 0 and post["cold_ms"] > 0


def test_bench_pipeline_without_tracking_spends_nothing_on_it(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench-pipeline", "--streams", "1", "--frames", "4", "--size", "320x240", "--instances", "5",
                 "--post-instances", "", "--rounds", "1", "--no-tracking", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["tracking"] is False and r["pipeline"]["frames"] == 4
    assert r["pipeline"]["stage_cpu_ms_per_frame"]["track"] == 0


def test_bench_pipeline_refuses_zero_rounds(capsys: Any) -> None:
    assert main(["bench-pipeline", "--rounds", "0"]) == 2
    assert "argument --rounds: must be at least 1, got 0" in capsys.readouterr().err
