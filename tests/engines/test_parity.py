"""Parity with torchvision 0.29 on the same (calibrated random) weights and real photographs.

Our default path must sit at torchvision's own noise floor: the reference is
torchvision on this process's torch thread count; the floor is torchvision on another thread
count against it, measured in the same run; ours (default settings) must agree with the
reference on >= floor - 0.02 of its instances, by the matching rule of
:class:`engines.parity.Tolerances` (same label, box IoU >= 0.99, |Δbox| <= 0.5 px, |Δscore|
<= 1e-3, mask IoU >= 0.97), for v1, v2 and R18-FPN at torchvision's default size (800/1333,
one photo, 100 instances: the suite's time budget) and the small size (480/800, three photos).
Weights are calibrated at the size they run at, on the photos compared (scores spread over
(0, 1) except v2 at 800/1333, see ``SATURATED``; every instance >= 0.05). Full figures (four photos): ``tests/measure_parity.py``.
Also: batched equals single-frame; the static-shape (export) mode equals the dynamic mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engines.model.state_dict import model_from_state_dict
from engines.parity import ParityStats, compare, compare_all
from engines.reference import torchvision_detections
from engines.runner import Detections
from engines.torch_runner import TorchRunner
from tools.calibrate import real_images, shared_calibrated_model

pytestmark = pytest.mark.timeout(900)  # fixtures calibrate R50 models: slow on a loaded 2-core machine

SIZES = {"small": (480, 800), "default": (800, 1333)}
PHOTOS = {"small": 3, "default": 1}
"""Photos calibrated on and compared, per size (800/1333 is slow on 2 CPU cores)."""
SATURATED = {("v2", "default")}
"""Cases whose calibrated scores do not spread: v2 at 800/1333 keeps 100 detections scoring
0.79-0.99 (0.89-0.997 when calibrated on three photos); tests/calibrate.py does not yet spread
them. Its parity is still asserted; only the spread check is skipped."""
FLOOR_MARGIN = 0.02


@dataclass
class Case:
    kind: str
    size: str
    tv: torch.nn.Module
    runner: TorchRunner
    frames: list[np.ndarray]
    reference: list[Detections]
    """torchvision on this process's thread count."""
    floor: ParityStats
    """torchvision on another thread count, against ``reference``."""


def _threads() -> tuple[int, int]:
    """(reference, floor) thread counts: this process's, and 1 (2 when this process runs one thread)."""
    n = torch.get_num_threads()
    return n, (1 if n > 1 else 2)


@pytest.fixture(scope="module", params=[(k, s) for k in ("v1", "v2", "r18") for s in SIZES],
                ids=lambda p: f"{p[0]}-{p[1]}")
def case(request: pytest.FixtureRequest) -> Case:
    kind, size = request.param
    lo, hi = SIZES[size]
    tv = shared_calibrated_model(kind, min_size=lo, max_size=hi, photos=PHOTOS[size])
    frames = [f.numpy() for f in real_images()][:PHOTOS[size]]
    ours = model_from_state_dict(tv.state_dict(), min_size=lo, max_size=hi)
    runner = TorchRunner(ours, [str(i) for i in range(ours.cfg.num_classes)], kind)
    ref_threads, floor_threads = _threads()
    reference = torchvision_detections(tv, frames)
    torch.set_num_threads(floor_threads)
    try:
        floor = compare_all(reference, torchvision_detections(tv, frames))
    finally:
        torch.set_num_threads(ref_threads)
    return Case(kind, size, tv, runner, frames, reference, floor)


def test_default_path_at_the_noise_floor(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    ours = case.runner.infer(case.frames)
    stats = compare_all(case.reference, ours)
    with capsys.disabled():
        print(f"\nparity {case.kind} {case.size} {SIZES[case.size]}: floor (torchvision, other thread count) "
              f"{case.floor.agreed_fraction:.4f}; ours {stats.summary()}")
    assert stats.reference >= 50 * len(case.frames), "calibration should give torchvision real detections"
    assert min(len(d) for d in ours) > 0
    scores = np.concatenate([d.scores for d in ours])
    assert scores.min() >= 0.05 and scores.max() < 1.0, "every instance >= 0.05, none saturated at 1"
    if (case.kind, case.size) not in SATURATED:
        assert np.ptp(scores) > 0.3, "scores spread over (0, 1)"
    cover = np.concatenate([d.paste().mean((1, 2)) for d in ours])
    assert (cover > 0).mean() > 0.9 and (cover < 0.9).all(), "masks neither empty nor full"
    assert stats.agreed_fraction >= case.floor.agreed_fraction - FLOOR_MARGIN, (
        f"ours agrees with torchvision on {stats.agreed_fraction:.4f} of its instances, below the noise floor "
        f"{case.floor.agreed_fraction:.4f} - {FLOOR_MARGIN}: {stats.summary()}")


@pytest.fixture(scope="module")
def pair(case: Case) -> TorchRunner:
    if case.size != "small":
        pytest.skip("batching and the static mode are checked at the small size only (time budget)")
    return case.runner


def test_batched_equals_single(pair: TorchRunner, case: Case) -> None:
    runner = pair
    f = case.frames[0]
    batch = runner.infer([f, f[:, ::-1].copy(), f])
    single = runner.infer([f])[0]
    for d in (batch[0], batch[2]):
        st = compare(single, d)
        assert st.matched == st.reference == len(d)
        assert st.max_box_delta <= 1e-3 and st.max_score_delta <= 1e-5


def test_static_mode_equals_dynamic(pair: TorchRunner, case: Case) -> None:
    model = pair.model
    f = case.frames[2]
    batch = torch.from_numpy(np.stack([f, f[::-1].copy()]))
    dyn = model(batch)
    st = model.forward_static(batch)
    d = model.cfg.detections_per_img
    assert st.boxes.shape == (2, d, 4) and st.mask_probs.shape == (2, d, 28, 28) and st.counts.shape == (2,)
    cap = model.cfg.static_box_candidates
    if int(st.candidates.max()) > cap:
        # Exactness holds while the class-boxes above the score threshold fit the candidate cap
        # (TensorRT's TopK limit); random weights can exceed it: check with a larger cap.
        assert int(st.counts.max()) <= d
        model.cfg.static_box_candidates = int(st.candidates.max())
        try:
            st = model.forward_static(batch)
        finally:
            model.cfg.static_box_candidates = cap
    for i in range(2):
        n = int(st.counts[i])
        assert n == len(dyn[i].boxes)
        torch.testing.assert_close(st.boxes[i, :n], dyn[i].boxes, rtol=0, atol=1e-4)
        torch.testing.assert_close(st.scores[i, :n], dyn[i].scores, rtol=0, atol=1e-6)
        assert torch.equal(st.labels[i, :n].long(), dyn[i].labels)
        torch.testing.assert_close(st.mask_probs[i, :n], dyn[i].mask_probs, rtol=0, atol=1e-5)
        assert torch.all(st.scores[i, n:] == 0)
