"""Parity of a built artifact (TensorRT engine or ONNX graph) against the PyTorch model: the gate.

The build step ends here: the same frames go through the PyTorch reference
(:class:`engines.torch_runner.TorchRunner`), ``k`` perturbed copies of it (weights scaled by
``1 + rel * N(0, 1)``) and the candidate runner; :func:`engines.parity.judge_frame` finds the
reference instances that are stable under the perturbation and checks that the candidate
reproduces them (why: the module docstring of :mod:`engines.parity`). The result is a
pass/fail :class:`ParityReport` against stated marks (looser for fp16, see
:data:`PARITY_TOLERANCES` and :data:`GATE_MARKS`), printed as a table and stored in the
manifest. A failed gate keeps the files; ``build-engine --accept-parity-failure`` (named in
:data:`ACCEPT_FLAG`) takes the result anyway and records that in the manifest.

Frames: real photos from ``skimage.data`` (when scikit-image is installed) cropped to the
frame aspect ratio and resized to the frame size, then generated scenes (shapes on a
gradient) for the rest. Both are deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from engines.build_command import Precision
from engines.parity import GateMarks, GateStats, Tolerances, judge_frame
from engines.runner import Runner

ACCEPT_FLAG = "--accept-parity-failure"
"""The ``build-engine`` option that accepts a failed gate (exit 0, the manifest records it)."""

PARITY_TOLERANCES: dict[str, Tolerances] = {
    "fp32": Tolerances(),
    "fp16": Tolerances(min_matched=0.95, min_box_iou=0.9, max_box_delta=2.0, max_score_delta=2e-2, min_mask_iou=0.9),
}
"""Matching rule of one instance pair per precision. fp32: the project's torchvision-parity rule
(box IoU >= 0.99, |Δbox| <= 0.5 px, |Δscore| <= 1e-3, mask IoU >= 0.97). fp16 (backbone and
heads in half precision, box decoding / NMS / RoIAlign accumulation in fp32): box IoU >= 0.9,
|Δbox| <= 2 px, |Δscore| <= 0.02, mask IoU >= 0.9."""

GATE_MARKS: dict[str, GateMarks] = {
    "fp32": GateMarks(),
    "fp16": GateMarks(perturbation=1e-3, min_mean_mask_iou=0.95),
}
"""The gate per precision: the perturbation matches the candidate's expected noise (fp32:
1e-6 relative, ~10 float32 ulps; fp16: 1e-3, ~2 half-precision ulps)."""

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
"""``skimage.data`` photos used first, in this order."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class FrameParity:
    """One frame's measurements (the verdict is taken over all frames together)."""

    frame: str
    stats: GateStats


@dataclass(frozen=True)
class ParityReport:
    """Candidate vs reference over all frames. ``skipped`` (a reason) when it could not run."""

    candidate: str
    """E.g. ``"tensorrt (cuda:0)"`` or ``"onnxruntime (cpu)"``."""
    reference: str
    precision: Precision
    tolerances: Tolerances
    marks: GateMarks = field(default_factory=GateMarks)
    frames: tuple[FrameParity, ...] = ()
    skipped: str | None = None
    total: GateStats = field(default_factory=GateStats)
    accepted: bool = False
    """A failed gate taken anyway (``--accept-parity-failure``)."""

    @property
    def failures(self) -> list[str]:
        """Why the whole run fails the gate (merged over frames); empty = pass or skipped."""
        return [] if self.skipped else self.total.failures(self.marks)

    @property
    def passed(self) -> bool | None:
        """True / False; None when skipped."""
        return None if self.skipped else not self.failures

    @property
    def verdict(self) -> str:
        return "SKIPPED" if self.skipped else ("PASS" if self.passed else "FAIL")

    def table(self) -> str:
        """The report as fixed-width text: one row per frame, a total row, the marks, the verdict."""
        head = f"parity: {self.candidate} vs {self.reference} ({self.precision})"
        if self.skipped:
            return f"{head}: SKIPPED ({self.skipped})"
        t, g = self.tolerances, self.marks
        cols = ("frame", "ref", "cand", "stable", "reproduced", "all agreed", "floor", "mask IoU", "max|Δbox|",
                "max|Δscore|")
        rows = [_row(f.frame, f.stats) for f in self.frames] + [_row("total", self.total)]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()
        out = [head, line, "-" * len(line)]
        out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        out.append(f"instance rule: same label, box IoU >= {t.min_box_iou}, |Δbox| <= {t.max_box_delta} px, "
                   f"|Δscore| <= {t.max_score_delta}, mask IoU >= {t.min_mask_iou}")
        out.append(f"stable = reproduced by all {g.perturbed_runs} reference runs with weights perturbed by "
                   f"{g.perturbation:g} (relative); floor = their lowest agreement on all instances")
        out.append(f"gate: candidate reproduces >= {g.min_stable_agreed:.0%} of the stable instances, stable >= "
                   f"{g.min_stable_share:.0%} of the reference, mean mask IoU >= {g.min_mean_mask_iou}")
        verdict = f"verdict: {self.verdict}" + (f" ({'; '.join(self.failures)})" if self.failures else "")
        out.append(verdict + (f" - accepted anyway ({ACCEPT_FLAG})" if self.accepted else ""))
        return "\n".join(out)

    def as_dict(self) -> dict[str, Any]:
        """JSON object stored as the manifest's ``parity`` field."""
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            "accepted": self.accepted,
            "candidate": self.candidate,
            "reference": self.reference,
            "precision": self.precision,
            "tolerances": dataclasses.asdict(self.tolerances),
            "marks": dataclasses.asdict(self.marks),
            "skipped": self.skipped,
            "failures": self.failures,
            "total": self.total.as_dict(),
            "frames": [{"frame": f.frame, **f.stats.as_dict()} for f in self.frames],
        }


def _row(name: str, s: GateStats) -> tuple[str, ...]:
    floor = s.floor_fraction
    return (name, str(s.reference), str(s.candidate), f"{s.stable} ({s.stable_share:.0%})",
            f"{s.stable_agreed} ({s.stable_agreed_fraction:.0%})", f"{s.agreed} ({s.agreed_fraction:.0%})",
            "-" if floor is None else f"{floor:.0%}", f"{s.stable_mean_mask_iou:.4f}", f"{s.max_box_delta:.3g}",
            f"{s.max_score_delta:.2e}")


def tolerances_for(precision: Precision) -> Tolerances:
    """The instance rule for ``precision`` (:data:`PARITY_TOLERANCES`)."""
    return PARITY_TOLERANCES[precision]


def marks_for(precision: Precision) -> GateMarks:
    """The gate's marks for ``precision`` (:data:`GATE_MARKS`)."""
    return GATE_MARKS[precision]


# --------------------------------------------------------------------------- frames
def fit_to_frame(image: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """Centre-crop ``uint8[h, w, 3]`` to the ``height:width`` aspect ratio, then resize (bilinear, antialiased)."""
    h, w = image.shape[:2]
    if h * width > w * height:  # too tall: crop rows
        ch, cw = max(round(w * height / width), 1), w
    else:
        ch, cw = h, max(round(h * width / height), 1)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = torch.from_numpy(np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw])).permute(2, 0, 1)[None].float()
    out = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def generated_frame(height: int, width: int, seed: int) -> npt.NDArray[np.uint8]:
    """A deterministic scene: a colour gradient with 3-6 filled rectangles and discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    grad = (yy / max(height, 1))[..., None] * 50 + (xx / max(width, 1))[..., None] * rng.uniform(-50, 50, size=3)
    img = np.clip(base + grad, 0, 255)
    for _ in range(int(rng.integers(3, 7))):
        color = rng.uniform(0, 255, size=3)
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        r = rng.uniform(0.08, 0.25) * min(height, width)
        if rng.random() < 0.5:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r * rng.uniform(0.6, 1.6))
        img[inside] = color
    return img.astype(np.uint8)


def parity_frames(count: int, height: int, width: int) -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """``count`` named ``uint8[height, width, 3]`` RGB frames: skimage photos first, then generated ones."""
    if count < 0 or height < 1 or width < 1:
        raise ValueError(f"need count >= 0 and a positive frame size, got {count} frames of {height}x{width}")
    frames: list[tuple[str, npt.NDArray[np.uint8]]] = []
    try:
        import skimage.data as photos
    except ImportError:
        photos = None  # type: ignore[assignment]
    for name in PHOTOS if photos is not None else ():
        if len(frames) == count:
            break
        image = getattr(photos, name)()
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        frames.append((f"skimage:{name}", fit_to_frame(image[..., :3], height, width)))
    while len(frames) < count:
        frames.append((f"generated:{len(frames)}", generated_frame(height, width, seed=len(frames))))
    return frames


# --------------------------------------------------------------------------- running
def _chunks(items: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run_parity(
    reference: Runner,
    candidate: Runner,
    frames: Sequence[tuple[str, npt.NDArray[np.uint8]]],
    precision: Precision,
    batch_size: int = 1,
    wrap: Callable[[Iterable[Any], str, int], Iterable[Any]] | None = None,
    perturbed: Sequence[Runner] = (),
    marks: GateMarks | None = None,
) -> ParityReport:
    """Run the reference, its ``perturbed`` copies and the candidate on ``frames`` and judge.

    Args:
        frames: named ``uint8[H, W, 3]`` RGB frames, all of the candidate's frame size.
        batch_size: frames per ``infer`` call of every runner.
        wrap: optional progress wrapper ``(items, desc, total) -> items`` (e.g. ``Progress.bar``).
        perturbed: the reference with perturbed weights (:func:`engines.parity.perturbed_copy`);
            none = every reference instance must be reproduced (a strict gate).
        marks: the gate's marks (default :func:`marks_for` ``precision``).
    """
    tol = tolerances_for(precision)
    marks = marks or marks_for(precision)
    chunks = list(_chunks(list(frames), max(batch_size, 1)))
    it: Iterable[Sequence[tuple[str, npt.NDArray[np.uint8]]]] = chunks
    if wrap is not None:
        it = wrap(chunks, "parity batches", len(chunks))
    rows: list[FrameParity] = []
    total = GateStats()
    for chunk in it:
        images = [f for _, f in chunk]
        refs = reference.infer(images)
        perturbed_dets = [p.infer(images) for p in perturbed]
        cands = candidate.infer(images)
        for k, ((name, _), r, c) in enumerate(zip(chunk, refs, cands, strict=True)):
            stats = judge_frame(r, [p[k] for p in perturbed_dets], c, tol)
            total = total.merge(stats)
            rows.append(FrameParity(name, stats))
    return ParityReport(
        candidate=_describe(candidate), reference=_describe(reference), precision=precision, tolerances=tol,
        marks=marks, frames=tuple(rows), total=total,
    )


def skipped_report(reason: str, candidate: str, reference: str, precision: Precision) -> ParityReport:
    """A report that says why no parity was run (e.g. ONNX Runtime cannot run the plugin node)."""
    return ParityReport(candidate=candidate, reference=reference, precision=precision,
                        tolerances=tolerances_for(precision), marks=marks_for(precision), skipped=reason)


def _describe(runner: Runner) -> str:
    return f"{runner.info.backend} ({runner.info.device})"



def artifact_parity(
    model: Path | None,
    artifact: Path,
    backend: Literal["tensorrt", "onnxruntime"],
    frame_hw: tuple[int, int],
    precision: Precision,
    count: int,
    batch_size: int,
    reference_device: str = "cpu",
    identity_resize: bool = False,
    wrap: Callable[[Iterable[Any], str, int], Iterable[Any]] | None = None,
) -> ParityReport:
    """Parity of a built ``artifact`` (engine or ONNX graph) against ``model`` in PyTorch.

    Args:
        model: what ``build-engine --model`` took (None = the demo model).
        frame_hw: ``(H, W)`` of the frames the artifact takes; ``count`` frames are used.
        identity_resize: the graph takes frames at the network input size (``--input-size``):
            the reference's resize is made the identity too, as the export does.
    """
    from engines.loading import load_runner
    from engines.parity import perturbed_copy
    from engines.torch_runner import TorchRunner
    from engines.weights import load_model

    loaded = load_model(model)
    if identity_resize:
        loaded.model.cfg.min_size, loaded.model.cfg.max_size = min(frame_hw), max(frame_hw)
    marks = marks_for(precision)
    perturbed = [TorchRunner(perturbed_copy(loaded.model, marks.perturbation, seed),  # type: ignore[arg-type]
                             loaded.class_names, f"{loaded.name} (perturbed {seed})", device=reference_device)
                 for seed in range(1, marks.perturbed_runs + 1)]
    reference = TorchRunner(loaded.model, loaded.class_names, loaded.name, device=reference_device)
    candidate = load_runner(artifact, device="cuda" if backend == "tensorrt" else "cpu", backend=backend)
    try:
        return run_parity(reference, candidate, parity_frames(count, *frame_hw), precision, batch_size, wrap,
                          perturbed=perturbed, marks=marks)
    finally:
        candidate.close()
        reference.close()
