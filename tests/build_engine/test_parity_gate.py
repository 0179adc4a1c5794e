"""The parity gate judges semantics: it passes float noise and fails real bugs (mutation tests).

Model: ``maskrcnn_resnet50_fpn`` (v1) with calibrated random weights (``tools.calibrate``,
calibrated at 480/800), run at 320/544 on three 240x320 frames (real photos) to keep the
suite fast.

PASS: another torch thread count, batch norms folded (float32 and float64), ONNX Runtime on
the exported graph (through ``build-engine --onnx-only``). FAIL: each mutation of our own
model code, applied by configuration or by patching a module of ``engines/model`` for the
candidate's calls only; the box-decode clamp on weights that reach it (:func:`clamp_stress`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from build_engine.parity_report import ParityReport, parity_frames, run_parity
from engines.manifest import manifest_path_for, read_manifest
from engines.model import box_ops
from engines.model.anchors import AnchorGrid
from engines.model.maskrcnn import MaskRCNN
from engines.model.state_dict import model_from_state_dict
from engines.parity import GateMarks, perturbed_copy
from engines.runner import Detections, ModelInfo, Runner
from engines.torch_runner import TorchRunner
from tools.calibrate import shared_calibrated_model

pytestmark = pytest.mark.timeout(900)  # fixtures calibrate R50 models: slow on a loaded 2-core machine

MIN_SIZE, MAX_SIZE = 320, 544
FRAME_HW = (240, 320)
FRAMES = 3


def clamp_stress(model: MaskRCNN) -> None:
    """Put the box regression beyond the decode clamp (in place), so that the clamp shapes most boxes.

    The RPN shrinks its anchors to ~5 % (dw, dh biased by -3: tiny proposals) and the box head
    grows them by exp(4.6) > 62.5 (dw/5, dh/5 biased to +4.6, past log(1000/16) = 4.135): with
    the clamp every such box is 62.5x its proposal, without it ~100x; clipping to the image
    hides the difference only for the larger proposals.
    """
    with torch.no_grad():
        rpn = model.rpn.head.bbox_pred
        assert rpn.bias is not None
        rpn.bias[(torch.arange(rpn.out_channels) % 4) >= 2] -= 3.0
        box = model.roi_heads.box_predictor.bbox_pred
        assert box.bias is not None
        wh = (torch.arange(box.out_features) % 4) >= 2
        box.weight[wh] *= 0.1
        box.bias[wh] = 5 * 4.6


def make_model() -> MaskRCNN:
    tv = shared_calibrated_model("v1", min_size=480, max_size=800)
    return model_from_state_dict(copy.deepcopy(tv.state_dict()), min_size=MIN_SIZE, max_size=MAX_SIZE)


def runner(model: MaskRCNN, name: str, fuse: bool | str = False) -> TorchRunner:
    return TorchRunner(copy.deepcopy(model), [str(i) for i in range(model.cfg.num_classes)], name, fuse=fuse)


class Wrapped(Runner):
    """A candidate runner: ``inner`` with frames, detections or a module patch changed around each call."""

    def __init__(self, inner: Runner, name: str, frames: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.uint8]]
                 | None = None, dets: Callable[[Detections], Detections] | None = None,
                 patch: Callable[[], contextlib.AbstractContextManager[None]] | None = None) -> None:
        self.inner, self.frames, self.dets, self.patch = inner, frames, dets, patch
        self.info = dataclasses.replace(inner.info, name=name)

    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        images = [self.frames(f) for f in frames] if self.frames else list(frames)
        with self.patch() if self.patch else contextlib.nullcontext():
            out = self.inner.infer(images)
        return [self.dets(d) for d in out] if self.dets else out


class Threads(Runner):
    """``inner`` on another torch thread count."""

    def __init__(self, inner: Runner, threads: int) -> None:
        self.inner, self.threads = inner, threads
        self.info: ModelInfo = inner.info

    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.inner.infer(frames)
        finally:
            torch.set_num_threads(before)


class ThresholdMoved(Detections):
    """Detections whose masks are pasted at another threshold (0.5 → ``moved``)."""

    moved: float = 0.5

    def paste(self, threshold: float = 0.5) -> npt.NDArray[np.bool_]:
        return super().paste(self.moved)


def moved_threshold(value: float) -> Callable[[Detections], Detections]:
    def f(d: Detections) -> Detections:
        out = ThresholdMoved(d.boxes, d.scores, d.labels, d.mask_probs, d.image_size)
        out.moved = value
        return out
    return f


@contextlib.contextmanager
def no_decode_clamp() -> Iterator[None]:
    saved = box_ops.BBOX_XFORM_CLIP
    box_ops.BBOX_XFORM_CLIP = math.inf
    try:
        yield
    finally:
        box_ops.BBOX_XFORM_CLIP = saved


def roi_mutant(model: MaskRCNN, name: str, **change: object) -> TorchRunner:
    m = copy.deepcopy(model)
    m.box_roi = dataclasses.replace(m.box_roi, **change)  # type: ignore[arg-type]
    m.mask_roi = dataclasses.replace(m.mask_roi, **change)  # type: ignore[arg-type]
    return runner(m, name)


def cfg_mutant(model: MaskRCNN, name: str, edit: Callable[[MaskRCNN], None]) -> TorchRunner:
    m = copy.deepcopy(model)
    edit(m)
    return runner(m, name)


def _swap_norm(m: MaskRCNN) -> None:
    m.cfg.image_mean, m.cfg.image_std = m.cfg.image_std, m.cfg.image_mean


def _anchor(m: MaskRCNN) -> None:
    sizes = list(m.cfg.anchor_sizes)
    sizes[1] = (48,)  # P3: 64 → 48
    m.anchor_grid = AnchorGrid(sizes, m.cfg.aspect_ratios)


MUTATIONS: dict[str, Callable[[MaskRCNN, Runner], Runner]] = {
    "roi_align_aligned": lambda m, base: roi_mutant(m, "aligned=True", aligned=True),
    "sampling_ratio": lambda m, base: roi_mutant(m, "sampling_ratio=0", sampling_ratio=0),
    "level_mapper_k0": lambda m, base: roi_mutant(m, "canonical_level=5", canonical_level=5),
    "rgb_bgr": lambda m, base: Wrapped(base, "BGR", frames=lambda f: np.ascontiguousarray(f[..., ::-1])),
    "normalization_swapped": lambda m, base: cfg_mutant(m, "mean<->std", _swap_norm),
    "mask_threshold": lambda m, base: Wrapped(base, "mask threshold 0.6", dets=moved_threshold(0.6)),
    "anchor_size": lambda m, base: cfg_mutant(m, "P3 anchor 48", _anchor),
}


@pytest.fixture(scope="module")
def model() -> MaskRCNN:
    return make_model()


@pytest.fixture(scope="module")
def frames() -> list[tuple[str, npt.NDArray[np.uint8]]]:
    return parity_frames(FRAMES, *FRAME_HW)


@pytest.fixture(scope="module")
def reference(model: MaskRCNN) -> Runner:
    return Cached(runner(model, "reference"))


@pytest.fixture(scope="module")
def perturbed(model: MaskRCNN) -> list[Runner]:
    marks = GateMarks()
    return [Cached(runner(perturbed_copy(model, marks.perturbation, s), f"perturbed {s}"))  # type: ignore[arg-type]
            for s in range(1, marks.perturbed_runs + 1)]


class Cached(Runner):
    """``inner`` computed once per frame set (the reference side is shared by every test)."""

    def __init__(self, inner: Runner) -> None:
        self.inner, self.info = inner, inner.info
        self.memo: dict[bytes, list[Detections]] = {}

    def infer(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        key = b"".join(f.tobytes()[:4096] + bytes(str(f.shape), "ascii") for f in frames)
        if key not in self.memo:
            self.memo[key] = self.inner.infer(frames)
        return self.memo[key]


def gate(reference: Runner, perturbed: list[Runner], candidate: Runner,
         frames: list[tuple[str, npt.NDArray[np.uint8]]]) -> ParityReport:
    report = run_parity(reference, candidate, frames, "fp32", batch_size=len(frames), perturbed=perturbed)
    print(f"\n{candidate.info.name}: {report.verdict}: {report.total.summary()}")
    return report


def test_reference_is_judgeable(reference: Runner, perturbed: list[Runner],
                                frames: list[tuple[str, npt.NDArray[np.uint8]]]) -> None:
    """The frames give the gate real material: many instances, most of them stable, and the
    decode clamp active on some of the boxes (else its mutation could not be seen)."""
    report = gate(reference, perturbed, reference, frames)
    assert report.passed and report.total.reference >= 150
    assert report.total.stable_share >= 0.6


@pytest.mark.parametrize("threads", [1])
def test_passes_other_thread_count(model: MaskRCNN, reference: Runner, perturbed: list[Runner],
                                   frames: list[tuple[str, npt.NDArray[np.uint8]]], threads: int) -> None:
    report = gate(reference, perturbed, Threads(runner(model, f"{threads} thread"), threads), frames)
    assert report.passed, report.table()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_passes_folded_norms(model: MaskRCNN, reference: Runner, perturbed: list[Runner],
                             frames: list[tuple[str, npt.NDArray[np.uint8]]], dtype: str) -> None:
    report = gate(reference, perturbed, runner(model, f"folded in {dtype}", fuse=dtype), frames)
    assert report.passed, report.table()


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_fails_mutation(name: str, model: MaskRCNN, reference: Runner, perturbed: list[Runner],
                        frames: list[tuple[str, npt.NDArray[np.uint8]]]) -> None:
    candidate = MUTATIONS[name](model, runner(model, "base"))
    report = gate(reference, perturbed, candidate, frames)
    assert report.passed is False, report.table()
    assert any("reproduces" in f or "mask IoU" in f for f in report.failures), report.failures


def test_fails_without_decode_clamp(model: MaskRCNN, frames: list[tuple[str, npt.NDArray[np.uint8]]]) -> None:
    """The clamp only changes boxes whose regression exceeds it, so this one runs on weights where
    it does (:func:`clamp_stress`); the same model passes against itself on one thread. One
    frame: the stressed weights clamp most of its ~100 boxes."""
    frames = frames[:1]
    stressed = copy.deepcopy(model)
    clamp_stress(stressed)
    reference = Cached(runner(stressed, "stressed reference"))
    marks = GateMarks()
    perturbed: list[Runner] = [runner(perturbed_copy(stressed, marks.perturbation, s), f"perturbed {s}")  # type: ignore[arg-type]
                               for s in range(1, marks.perturbed_runs + 1)]
    clean = gate(reference, perturbed, Threads(runner(stressed, "stressed, 1 thread"), 1), frames)
    assert clean.passed, clean.table()
    report = gate(reference, perturbed, Wrapped(runner(stressed, "b"), "no decode clamp", patch=no_decode_clamp),
                  frames)
    assert report.passed is False, report.table()
    assert any("reproduces" in f for f in report.failures), report.failures


@pytest.fixture(scope="module")
def model_file(model: MaskRCNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calibrated v1 R50 as our model file (min_size 320 stored in it: the small size)."""
    from engines.model.state_dict import migrate_keys
    from engines.modelfile import save_model_file

    path = tmp_path_factory.mktemp("gate") / "r50_v1.safetensors"
    names = [f"class{i}" for i in range(model.cfg.num_classes)]
    return save_model_file(path, migrate_keys(model.state_dict()), model.cfg, names, name="r50-v1-calibrated")


def _build_engine(model_file: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    cmd = [sys.executable, "-c", "import sys; from build_engine.cli import main; sys.exit(main())",
           "--model", str(model_file), "--onnx-only", "--roi-align", "onnx", "--source-size",
           f"{FRAME_HW[1]}x{FRAME_HW[0]}", "--batch", "1:1:1", "--parity-frames", "2", "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


def test_build_engine_accepts_onnx_runtime_on_calibrated_r50(model_file: Path, tmp_path: Path) -> None:
    """``--onnx-only --roi-align onnx`` on the calibrated R50: ONNX Runtime runs the exported
    graph (norms folded) and the gate passes it. A small source size (240x320, network input
    320x426) keeps the test short."""
    out = tmp_path / "r50.onnx"
    rc, stdout, stderr = _build_engine(model_file, out)
    print(stdout)
    assert rc == 0, stderr + stdout
    assert "verdict: PASS" in stdout and "stable" in stdout
    manifest = read_manifest(manifest_path_for(out))
    assert manifest.parity is not None and manifest.parity["passed"] is True
    assert manifest.parity["total"]["stable"] >= 100


def test_failed_gate_keeps_the_files_says_why_and_names_the_option(
        model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A real bug in the exported graph (mean and std swapped in its preprocessing, patched into
    our exporter) fails the gate: exit 1, the files stay, the message says why and names
    --accept-parity-failure, which then takes the result (exit 0, recorded in the manifest)."""
    import build_engine.export as export
    from build_engine.cli import main

    real_export = export.export_onnx

    def buggy_export(model: MaskRCNN, *args: object, **kwargs: object) -> object:
        bad = copy.deepcopy(model)
        _swap_norm(bad)
        return real_export(bad, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(export, "export_onnx", buggy_export)
    out = tmp_path / "bad.onnx"
    argv = ["--model", str(model_file), "--onnx-only", "--roi-align", "onnx", "--source-size",
            f"{FRAME_HW[1]}x{FRAME_HW[0]}", "--batch", "1:1:1", "--parity-frames", "1", "--out", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "verdict: FAIL" in captured.out and "reproduces" in captured.out
    assert "--accept-parity-failure" in captured.err and "files are kept" in captured.err
    assert out.is_file() and manifest_path_for(out).is_file()
    manifest = read_manifest(manifest_path_for(out))
    assert manifest.parity is not None and manifest.parity["passed"] is False and manifest.parity["accepted"] is False

    assert main([*argv, "--accept-parity-failure"]) == 0
    captured = capsys.readouterr()
    assert "verdict: FAIL" in captured.out and "accepted anyway (--accept-parity-failure)" in captured.out
    manifest = read_manifest(manifest_path_for(out))
    assert manifest.parity is not None and manifest.parity["accepted"] is True
    assert "--accept-parity-failure" in manifest.build_command
