"""The GPU verification script (tools/trt_verify.py): the parts that run without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from build_engine.kernel_host import load_host_kernel
from build_engine.onnx_check import check_onnx, tensorrt_problems
from build_engine.plugin_spec import PLUGIN_NAME

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

import roi_align_gpu  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_script_refuses_to_run_without_cuda(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(TOOLS / "trt_verify.py"), "--out", str(tmp_path / "v")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "torch sees no CUDA device" in proc.stderr


def test_the_engine_loading_child_imports_no_build_step() -> None:
    """The fresh process that loads engines uses engines.* only: an AOT engine must not need our plugin module."""
    code = ("import sys, engines.trt_runner, engines.loading, engines.parity; "
            "print(sorted(m for m in sys.modules if m.startswith(('build_engine', 'tensorrt'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"


def test_two_pooler_graph_is_one_the_parser_rules_accept() -> None:
    shapes = roi_align_gpu.fpn_shapes(2, 32, (320, 480))
    for dtype in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        model = onnx.load_from_string(roi_align_gpu._plugin_graph(dtype, shapes, 206))
        check_onnx(model)
        assert tensorrt_problems(model) == []
        sizes = [next(a.i for a in n.attribute if a.name == "output_size") for n in model.graph.node
                 if n.op_type == PLUGIN_NAME]
        assert sizes == [7, 14]


def test_reference_comparison_accepts_the_kernel_and_catches_an_error() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(s, generator=gen) for s in roi_align_gpu.fpn_shapes(2, 4, (128, 192))]
    rois = roi_align_gpu.random_rois(gen, 40, 2, (128, 192))
    params = roi_align_gpu.MASK_POOLER
    got = torch.from_numpy(load_host_kernel(params)([f.numpy() for f in feats], rois.numpy()))
    assert roi_align_gpu.compare_to_reference(got, feats, rois, params)["ok"]
    got[3] += 1e-2
    row = roi_align_gpu.compare_to_reference(got, feats, rois, params)
    assert not row["ok"] and row["bad_rois"] == 1
