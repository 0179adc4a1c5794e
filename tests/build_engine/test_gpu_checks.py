"""The ``gpu`` tests (tests/gpu) and tools/roi_align_gpu.py: the parts that run without a GPU, and the skips here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from build_engine.kernel_host import find_compiler, load_host_kernel
from build_engine.onnx_check import check_onnx, tensorrt_problems
from build_engine.plugin_spec import PLUGIN_NAME
from tests.gpu.two_pooler_network import plugin_graph
from tools.roi_align_gpu import MASK_POOLER, compare_to_reference, fpn_shapes, random_rois

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skips of a machine without CUDA")
def test_gpu_tests_skip_with_the_reason_without_cuda() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "tests/gpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " skipped" in summary and "passed" not in summary and "failed" not in summary, summary
    reasons = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert reasons and all("needs a CUDA GPU: torch.cuda.is_available() is False" in r for r in reasons), reasons


def test_the_engine_loading_check_imports_no_build_step() -> None:
    """The fresh process that loads engines uses engines.* only: an AOT engine must not need our plugin module."""
    code = ("import sys, tests.gpu.engine_load_check; "
            "print(sorted(m for m in sys.modules if m.startswith(('build_engine', 'tensorrt'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         timeout=300)
    assert out.stdout.strip() == "[]"


def test_two_pooler_graph_is_one_the_parser_rules_accept() -> None:
    onnx = pytest.importorskip("onnx", reason="onnx (pip install '.[export]') reads the two-pooler graph")
    shapes = fpn_shapes(2, 32, (320, 480))
    for dtype in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        model = onnx.load_from_string(plugin_graph(dtype, shapes, 206))
        check_onnx(model)
        assert tensorrt_problems(model) == []
        sizes = [next(a.i for a in n.attribute if a.name == "output_size") for n in model.graph.node
                 if n.op_type == PLUGIN_NAME]
        assert sizes == [7, 14]


@pytest.mark.skipif(find_compiler() is None, reason="needs a C++ compiler (g++) for the kernel's host build")
def test_reference_comparison_accepts_the_kernel_and_catches_an_error() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(s, generator=gen) for s in fpn_shapes(2, 4, (128, 192))]
    rois = random_rois(gen, 40, 2, (128, 192))
    got = torch.from_numpy(load_host_kernel(MASK_POOLER)([f.numpy() for f in feats], rois.numpy()))
    assert compare_to_reference(got, feats, rois, MASK_POOLER)["ok"]
    got[3] += 1e-2
    row = compare_to_reference(got, feats, rois, MASK_POOLER)
    assert not row["ok"] and row["bad_rois"] == 1
