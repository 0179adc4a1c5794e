"""streamer.messages: the one postprocessing step, on good and bad detections."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np

from engines.runner import Detections
from streamer.frames import Frame
from streamer.messages import MessageSpec, frame_result
from streamer.schema import decode_rle

NAMES = ("__background__", "circle", "square")
H, W = 48, 64
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "frame-schema.json").read_text())


def _frame() -> Frame:
    return Frame("cam", "rtsp://cam/x", 7, 0.28, 1_700_000_000.0, 0.0, np.zeros((H, W, 3), np.uint8))


def _dets(boxes: list[list[float]], scores: list[float]) -> Detections:
    k = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(k, 4), np.array(scores, np.float32),
                      np.ones(k, np.int64), np.full((k, 28, 28), 0.9, np.float32), (H, W))


SPEC = MessageSpec(NAMES, frozenset({"rle", "polygon", "none"}), score_threshold=0.5)


def test_zero_instances_give_a_valid_empty_message() -> None:
    r = frame_result(_frame(), _dets([], []), SPEC)
    for msg in r.messages.values():
        jsonschema.validate(msg, SCHEMA)
        assert msg["instances"] == [] and (msg["stream"], msg["frame"]) == ("cam", 7)
    assert r.dropped == {}


def test_nan_and_inverted_boxes_are_dropped_and_counted_outside_boxes_get_empty_masks() -> None:
    det = _dets([[10, 10, 30, 30],            # fine
                 [np.nan, 0, 5, 5],           # nonfinite box
                 [5, 5, 20, 20],              # nonfinite score (below)
                 [30, 10, 10, 30],            # inverted
                 [100, 100, 140, 120]],       # wholly outside the frame
                [0.9, 0.9, np.nan, 0.8, 0.7])
    r = frame_result(_frame(), det, SPEC)
    assert r.dropped == {"nonfinite": 2, "inverted": 1}
    rle = r.messages["rle"]
    jsonschema.validate(rle, SCHEMA)
    assert [i["box"] for i in rle["instances"]] == [[10, 10, 30, 30], [100, 100, 140, 120]]
    inside, outside = (decode_rle(i["mask"]) for i in rle["instances"])
    ys, xs = np.nonzero(inside)  # the box grown by 30/28 (torchvision's padded paste): 9..30
    assert inside[12:28, 12:28].all() and (ys.min(), ys.max(), xs.min(), xs.max()) >= (9, 0, 9, 0)
    assert ys.max() <= 30 and xs.max() <= 30
    assert not outside.any() and outside.shape == (H, W)
    assert r.messages["polygon"]["instances"][1]["mask"] == {"polygons": []}
    assert "mask" not in r.messages["none"]["instances"][0]


def test_process_messages_have_no_live_fields() -> None:
    spec = MessageSpec(NAMES, frozenset({"rle"}), 0.5, live=False)
    msg = frame_result(_frame(), _dets([[1, 1, 9, 9]], [0.9]), spec).messages["rle"]
    assert "stream" not in msg and "capture_time" not in msg and msg["source"] == "rtsp://cam/x"


def test_rounded_equals_pythons_round_bit_for_bit_on_float32() -> None:
    """The vectorized rounding of scores (5 digits) and boxes (2 digits) gives exactly Python's
    ``round`` on float32 values: random values, exact decimal ties (k/8, k/2^14, multiples of
    0.005), signed zeros, infinities, NaN, extremes; and falls back to ``round`` for float64,
    where the vectorized formula is wrong (shown on values where it differs)."""
    from streamer.schema import rounded

    rng = np.random.default_rng(1)
    vals = np.concatenate([
        rng.uniform(-50, 4000, 100_000), rng.uniform(0, 1, 100_000), rng.uniform(-1e-3, 1e-3, 5_000),
        np.arange(-4000, 40_000) / 8, np.arange(0, 50_000) / 2**14, np.arange(0, 20_000) * 0.005,
        np.arange(0, 20_000) * 0.000005,
        [0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45, 1e14, 16_777_216.0, 0.125, 2.675, 2.5],
    ]).astype(np.float32)
    for digits in (2, 5):
        ref = [repr(round(v, digits)) for v in vals.tolist()]
        assert [repr(v) for v in rounded(vals, digits)] == ref
        assert [[repr(v) for v in row] for row in rounded(vals[:4000].reshape(-1, 4), digits)] == \
            [ref[i:i + 4] for i in range(0, 4000, 4)]

    wide = (np.arange(0, 20_000) + 0.5) / 100  # float64 near-ties: x * 100 rounds onto the tie
    formula = (np.rint(wide * 100.0) / 100.0).tolist()
    assert any(a != round(v, 2) for a, v in zip(formula, wide.tolist(), strict=True))
    assert rounded(wide, 2) == [round(v, 2) for v in wide.tolist()]


def test_the_serializer_writes_json_dumps_compact_bytes_and_documents_where_it_differs() -> None:
    """The sinks' one serializer (orjson) writes what ``json.dumps(msg, separators=(",", ":"))``
    writes for a message of default settings, byte for byte, in every encoding; elsewhere it
    differs only in spelling (exponent, UTF-8 text): the values read back are the same, bit for bit."""
    from streamer.frame_json import dumps, encode, encode_line

    spec = MessageSpec(NAMES, frozenset({"rle", "polygon", "none"}), score_threshold=0.05)
    det = _dets([[10, 10, 30, 30], [-5.5, 3.25, 20.125, 47.99], [40, 20, 64, 48]], [0.93, 0.05001, 0.5])
    for msg in frame_result(_frame(), det, spec).messages.values():
        assert dumps(msg) == json.dumps(msg, separators=(",", ":"))
        assert encode(msg) == dumps(msg).encode() and encode_line(msg) == encode(msg) + b"\n"

    frame = Frame("caméra-1", "rtsp://hôte/x", 7, 0.28, 1_700_000_000.123456, 0.0, np.zeros((H, W, 3), np.uint8))
    det = _dets([[10, 10, 30, 30], [-5.5, 3.25, 20.125, 47.99], [40, 20, 64, 48]], [0.93, 0.00001, 0.5])
    spec = MessageSpec(("__background__", "ünïcode"), frozenset({"rle", "polygon", "none"}), score_threshold=0.0)
    for msg in frame_result(frame, det, spec).messages.values():
        text = dumps(msg)
        assert json.loads(text) == msg
        assert '"stream":"caméra-1"' in text and '"class":"ünïcode"' in text
        assert text != json.dumps(msg, separators=(",", ":"))
