"""``streamer process``: frames in, JSON lines out, failures reported per input.

The process layer is tested with ``FixedRunner`` (known detections, records batch sizes);
the command end to end (``streamer.cli.main`` and a real subprocess) with the
``tiny_model_path`` model file (tests/conftest.py).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import select
import struct
import subprocess
import sys
import termios
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from streamer.cli import main
from streamer.frames import Frame
from streamer.media import MediaError, open_media
from streamer.offline import ProcessOptions, equal_size_batches, process_inputs
from streamer.progress import BarProgress, LogProgress, progress
from streamer.schema import decode_rle
from tests.streamer.media_files import IMAGE_CASES, N_FRAMES, VIDEO_CASES, FixedRunner

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "frame-schema.json").read_text())


@cache
def _validator() -> Any:
    """A JSON Schema 2020-12 validator of docs/frame-schema.json (jsonschema imported here)."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a test dependency: pip install "
                                     "'.[test]') validates the messages against docs/frame-schema.json")
    return jsonschema.Draft202012Validator(SCHEMA)


def _messages(text: str) -> list[dict[str, Any]]:
    """Parse JSON lines, validating each against docs/frame-schema.json."""
    messages = [json.loads(line) for line in text.splitlines()]
    for m in messages:
        _validator().validate(m)
    return messages


def _frames_by_source(messages: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in messages:
        out.setdefault(m["source"], []).append(m["frame"])
    return out


def test_schema_document_is_valid_and_versioned() -> None:
    _validator().check_schema(SCHEMA)
    assert SCHEMA["$id"].endswith("/frame/1")
    assert SCHEMA["properties"]["schema"]["const"] == "maskrcnn-streamer/frame/1"


def test_every_frame_of_every_input_once_in_order(media_dir: Path) -> None:
    cases = VIDEO_CASES + IMAGE_CASES
    inputs = [str(media_dir / c.name) for c in cases]
    out = io.StringIO()
    assert process_inputs(inputs, FixedRunner(), out) == []
    messages = _messages(out.getvalue())
    assert list(_frames_by_source(messages)) == inputs  # input order, each input contiguous
    assert _frames_by_source(messages) == {i: list(range(c.n_frames)) for i, c in zip(inputs, cases, strict=True)}
    # FixedRunner's "thing": the middle-half box, mask probabilities all 1.
    (pasted,) = FixedRunner().infer([np.zeros((64, 96, 3), np.uint8)])[0].filter(0.5).paste()
    assert pasted[16:48, 24:72].all()
    for m in messages:
        assert (m["width"], m["height"]) == (96, 64)
        assert [inst["class"] for inst in m["instances"]] == ["thing"]  # the 0.3 "faint" is dropped
        assert np.array_equal(decode_rle(m["instances"][0]["mask"]), pasted)
        if m["source"].endswith((".png", ".jpg")):
            assert m["pts"] is None
        else:
            assert m["pts"] == pytest.approx(m["frame"] / 10, abs=1e-3)


def test_batches_hold_equal_size_frames_and_give_the_same_messages(media_dir: Path) -> None:
    inputs = [str(media_dir / "h264.mp4"), str(media_dir / "odd.avi"), str(media_dir / "photo.png")]
    one, three = io.StringIO(), io.StringIO()
    process_inputs(inputs, FixedRunner(), one, ProcessOptions(batch_size=1))
    runner = FixedRunner()
    process_inputs(inputs, runner, three, ProcessOptions(batch_size=3))
    assert runner.batches == [3, 3, 2, 3, 3, 2, 1]  # batches never span inputs
    assert one.getvalue() == three.getvalue()


def test_a_size_change_ends_the_batch() -> None:
    sizes = [(4, 6), (4, 6), (8, 6), (8, 6), (8, 6), (4, 6)]
    frames = [Frame("in", "in", i, None, 0.0, 0.0, np.zeros((*s, 3), np.uint8)) for i, s in enumerate(sizes)]
    batches = list(equal_size_batches(frames, 2))
    assert [[f.index for f in b] for b in batches] == [[0, 1], [2, 3], [4], [5]]


def test_score_threshold_and_mask_encodings(media_dir: Path) -> None:
    photo = str(media_dir / "photo.png")
    polygon, none = io.StringIO(), io.StringIO()
    process_inputs([photo], FixedRunner(), polygon,
                   ProcessOptions(score_threshold=0.2, mask_encoding="polygon"))
    process_inputs([photo], FixedRunner(), none, ProcessOptions(mask_encoding="none"))
    (with_polygons,) = _messages(polygon.getvalue())
    assert [i["score"] for i in with_polygons["instances"]] == pytest.approx([0.9, 0.3])
    thing = with_polygons["instances"][0]
    assert thing["box"] == [24.0, 16.0, 72.0, 48.0]
    rle = mask_utils.frPyObjects(thing["mask"]["polygons"], 64, 96)
    (pasted,) = FixedRunner().infer([np.zeros((64, 96, 3), np.uint8)])[0].filter(0.5).paste()
    assert np.array_equal(mask_utils.decode(mask_utils.merge(rle)).astype(bool), pasted)
    (without,) = _messages(none.getvalue())
    assert "mask" not in without["instances"][0]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_bad_inputs_are_reported_and_the_others_processed(media_dir: Path, batch_size: int) -> None:
    bad = {"missing.mp4": "no such file", "notes.txt": "not a readable video or image",
           "tone.wav": "no video stream", "truncated.mp4": "truncated after frame "}
    inputs = [str(media_dir / n) for n in ["missing.mp4", "h264.mp4", "notes.txt", "truncated.mp4",
                                           "tone.wav", "photo.png"]]
    out, errors = io.StringIO(), io.StringIO()
    failures = process_inputs(inputs, FixedRunner(), out, ProcessOptions(batch_size=batch_size),
                              errors=errors)
    assert [(Path(f.path).name, bad[Path(f.path).name] in f.reason) for f in failures] == [
        (n, True) for n in ["missing.mp4", "notes.txt", "truncated.mp4", "tone.wav"]]
    lines = errors.getvalue().splitlines()
    assert lines == [f"error: {f.path}: {f.reason}" for f in failures]
    decodable: list[int] = []
    with pytest.raises(MediaError), open_media(media_dir / "truncated.mp4") as reader:
        decodable.extend(f.index for f in reader)
    frames = _frames_by_source(_messages(out.getvalue()))
    assert frames == {str(media_dir / "h264.mp4"): list(range(N_FRAMES)),
                      str(media_dir / "truncated.mp4"): decodable,
                      str(media_dir / "photo.png"): [0]}
    assert 0 < len(decodable) < 30


@pytest.mark.parametrize("argv", [
    [],
    ["process"],
    ["process", "x.mp4", "--batch", "0"],
    ["process", "x.mp4", "--device", "gpu"],
    ["process", "x.mp4", "--score-threshold", "1.5"],
    ["process", "x.mp4", "--mask-encoding", "bits"],
    ["process", "x.mp4", "--annotate", "out.avi"],
    ["process", "a/x.mp4", "b/x.mkv", "--annotate", "out.mp4"],
    ["process", "x.mp4", "--model", "does-not-exist.safetensors"],
    ["process", "x.mp4", "--out", "/no/such/dir/out.jsonl"],
    ["--log-level", "loud", "process", "x.mp4"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: streamer" in err and "error:" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["process", "--help"]) == 0
    assert "--mask-encoding" in capsys.readouterr().out


def test_log_progress_lines_follow_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    caplog.set_level("INFO", logger="streamer.progress")
    bar = LogProgress("clip.mp4", total=100, unit="frame", interval_s=5.0, clock=lambda: now[0])
    for _ in range(30):  # one frame each 0.5 s: a line at 5, 10 and 15 s
        now[0] += 0.5
        bar.update(1)
    bar.close()
    bar.close()
    assert [r.getMessage() for r in caplog.records] == [
        "clip.mp4: 10/100 frames, 2.0 frames/s",
        "clip.mp4: 20/100 frames, 2.0 frames/s",
        "clip.mp4: 30/100 frames, 2.0 frames/s",
        "clip.mp4: done, 30 frames in 15.0 s, 2.0 frames/s",
    ]


@pytest.mark.parametrize(("lines", "columns"), [(24, 100), (0, 0)])  # 0 x 0: a pty nobody sized
def test_progress_is_a_bar_on_a_terminal_and_log_lines_elsewhere(lines: int, columns: int) -> None:
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    with os.fdopen(follower, "w") as tty:
        bar = progress("clip.mp4", total=8, stream=tty)
        assert isinstance(bar, BarProgress)
        with bar:
            bar.update(8)
        tty.flush()
        raw = b""
        while select.select([leader], [], [], 0.5)[0]:
            raw += os.read(leader, 4096)
    os.close(leader)
    shown = raw.decode()
    assert "clip.mp4" in shown and "8/8" in shown and "frame/s" in shown
    assert isinstance(progress("clip.mp4", total=8, stream=io.StringIO()), LogProgress)


def test_log_progress_summary_says_stopped_after_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="streamer.progress")
    with pytest.raises(OSError), LogProgress("cut.mp4", total=None, unit="frame") as bar:
        bar.update(1)
        raise OSError("disk gone")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("cut.mp4: stopped, 1 frame in ")


# --- end to end with a real model file ---------------------------------------------------------


def test_cli_writes_jsonl_and_annotations(tiny_model_path: Path, media_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    inputs = [str(media_dir / "short.mp4"), str(media_dir / "photo.png")]
    out = tmp_path / "out.jsonl"
    status = main(["process", *inputs, "--model", str(tiny_model_path), "--out", str(out),
                   "--batch", "2", "--annotate", f"{tmp_path}/ann/"])
    assert status == 0
    messages = _messages(out.read_text())
    assert _frames_by_source(messages) == {inputs[0]: [0, 1, 2], inputs[1]: [0]}
    assert any(m["instances"] for m in messages), "the tiny model is calibrated to detect things"
    for m in messages:
        for inst in m["instances"]:
            assert inst["score"] >= 0.5
            assert decode_rle(inst["mask"]).shape == (m["height"], m["width"])
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == [
        "photo.png", "short-000000.png", "short-000001.png", "short-000002.png"]
    err = capsys.readouterr().err
    assert f"{inputs[0]}: done, 3 frames" in err  # stderr is not a TTY: log lines


def test_cli_stdout_and_exit_1_on_bad_inputs(tiny_model_path: Path, media_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    inputs = [str(media_dir / n) for n in ["notes.txt", "photo.jpg", "cut.mp4", "missing.gif"]]
    assert main(["process", *inputs, "--model", str(tiny_model_path), "--mask-encoding", "polygon"]) == 1
    captured = capsys.readouterr()
    frames = _frames_by_source(_messages(captured.out))
    assert frames[inputs[1]] == [0]
    assert frames[inputs[2]] == list(range(len(frames[inputs[2]]))) and len(frames[inputs[2]]) > 0
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert [e.split(": ")[1] for e in errors] == [inputs[0], inputs[2], inputs[3]]
    assert f"truncated after frame {len(frames[inputs[2]]) - 1}: " in errors[1]


def test_unloadable_model_is_one_error_line_exit_1(media_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a model")
    assert main(["process", str(media_dir / "photo.png"), "--model", str(broken)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: cannot load the model: ")
    assert errors[0].count(str(broken)) == 1
    assert "Traceback" not in captured.err


def test_console_command_exit_statuses(tiny_model_path: Path, media_dir: Path) -> None:
    """The command as a real process (``python -m streamer.cli``): 1 with a bad input, 2 for a usage error."""
    cmd = [sys.executable, "-m", "streamer.cli"]
    ran = subprocess.run([*cmd, "--log-level", "warning", "process", str(media_dir / "photo.png"),
                          str(media_dir / "garbage.mp4"), "--model", str(tiny_model_path)],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1, ran.stderr
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {media_dir / 'garbage.mp4'}: not a readable video "
                      "or image (Invalid data found when processing input)"]
    assert "Traceback" not in ran.stderr
    assert len(ran.stdout.splitlines()) == 1
    usage = subprocess.run([*cmd, "process", "x.mp4", "--batch", "-1"], capture_output=True,
                           text=True, timeout=120)
    assert usage.returncode == 2 and "--batch" in usage.stderr
