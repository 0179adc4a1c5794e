"""The PyTorch path on a CUDA GPU: the machine probe, the CUDA runner against the CPU runner,
and masks pasted on the GPU published exactly as host-pasted ones."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engines.loading import load_runner
from engines.machine import collect_runtime_environment
from engines.parity import Tolerances, compare_all
from streamer.frames import Frame
from streamer.messages import MessageSpec, frame_result
from streamer.replay import REPLAY_CLASSES, ReplayRunner

RecordProperty = Callable[[str, object], None]
"""Type of pytest's ``record_property`` fixture."""

pytestmark = pytest.mark.gpu


def test_runtime_environment_names_the_gpu(cuda_capability: tuple[int, int],
                                           record_property: RecordProperty) -> None:
    """The probe that engine manifests are checked against sees this GPU, its driver and its CUDA version."""
    env = collect_runtime_environment()
    for key, value in vars(env).items():
        record_property(key, value)
    assert env.gpu_name, env
    assert env.compute_capability == f"{cuda_capability[0]}.{cuda_capability[1]}"
    assert env.driver_version and env.cuda_version, env


def test_cuda_runner_agrees_with_the_cpu_runner(cuda_capability: tuple[int, int], gpu_model: Path | None,
                                                gpu_frames: tuple[list[np.ndarray], Path],
                                                record_property: RecordProperty) -> None:
    """Same frames through the PyTorch runner on CUDA and on the CPU. Float rounding differs between
    the two (cuDNN convolutions): beyond the parity tolerances is a warning with the figures, since the
    engine parity gate, not this comparison, judges deployable outputs."""
    frames, _ = gpu_frames
    cpu = load_runner(gpu_model, device="cpu").infer(frames)
    cuda_runner = load_runner(gpu_model, device="cuda")
    assert cuda_runner.info.device.startswith("cuda"), cuda_runner.info
    cuda = cuda_runner.infer(frames)
    assert [d.image_size for d in cuda] == [d.image_size for d in cpu] == [f.shape[:2] for f in frames]
    stats = compare_all(cpu, cuda)
    record_property("vs_cpu", stats.summary())
    if failures := stats.failures(Tolerances()):
        warnings.warn(f"PyTorch CUDA vs CPU beyond the parity tolerances: {failures}; {stats.summary()}",
                      stacklevel=1)


@pytest.mark.parametrize(("height", "width"), [(1080, 1920), (97, 131)])
def test_replay_runner_pasting_on_the_gpu_publishes_what_host_paste_does(cuda_capability: tuple[int, int],
                                                                         height: int, width: int) -> None:
    """The replay runner of ``streamer bench-pipeline --paste-device cuda``: 20 instances per frame
    pasted on the GPU give the same messages, byte for byte, as the same detections pasted on the host."""
    image = np.zeros((height, width, 3), np.uint8)
    frame = Frame("cam", "cam", 0, 0.0, 0.0, 0.0, image)
    spec = MessageSpec(REPLAY_CLASSES, frozenset({"rle", "polygon"}), score_threshold=0.05)
    (host,) = ReplayRunner(20).infer([image])
    (device,) = ReplayRunner(20, paste_device="cuda").infer([image])
    assert host.pasted is None and device.pasted is not None and device.pasted[0] == 0.5
    assert len(device.pasted[1]) == len(device) == 20
    assert frame_result(frame, device, spec).messages == frame_result(frame, host, spec).messages
