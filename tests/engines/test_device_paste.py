"""Runners that paste on their device (CUDA in production) publish exactly what host pasting does.

On this machine the device is the CPU: the code path is the one a CUDA runner takes, minus the GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.torch_runner import TorchRunner
from engines.weights import load_model
from streamer.frames import Frame
from streamer.messages import MessageSpec, frame_result
from tests.streamer.media_files import source_frame


def test_runner_pasted_masks_equal_host_paste_and_are_used(tiny_model_path: Path) -> None:
    lm = load_model(tiny_model_path)
    image = source_frame(3, 128, 96)
    plain = TorchRunner(lm.model, lm.class_names, "tiny").infer([image])[0]
    pasting = TorchRunner(lm.model, lm.class_names, "tiny", paste_threshold=0.5).infer([image])[0]
    assert len(plain) > 0 and pasting.pasted is not None and pasting.pasted[0] == 0.5
    for a, b in zip(plain.box_masks(0.5), pasting.pasted[1], strict=True):
        assert (a.x0, a.y0) == (b.x0, b.y0) and np.array_equal(a.mask, b.mask)
    frame = Frame("s", "s", 0, 0.0, 0.0, 0.0, image)
    spec = MessageSpec(lm.class_names, frozenset({"rle"}), score_threshold=0.05)
    assert frame_result(frame, pasting, spec).messages == frame_result(frame, plain, spec).messages
    # pasted masks follow the selection; another threshold is pasted afresh on the host
    kept = pasting.filter(0.3)
    assert kept.pasted is not None and len(kept.pasted[1]) == len(kept)
    assert [m.area for m in pasting.box_masks(0.9)] == [m.area for m in plain.box_masks(0.9)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_runner_equals_cpu_runner(tiny_model_path: Path) -> None:
    lm = load_model(tiny_model_path)
    image = source_frame(3, 128, 96)
    cpu = TorchRunner(lm.model, lm.class_names, "tiny").infer([image])[0]
    cuda = TorchRunner(load_model(tiny_model_path).model, lm.class_names, "tiny", device="cuda",
                       paste_threshold=0.5).infer([image])[0]
    assert np.array_equal(cpu.labels, cuda.labels)
    np.testing.assert_allclose(cpu.boxes, cuda.boxes, atol=0.05)
    assert cuda.pasted is not None
