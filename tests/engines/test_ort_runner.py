"""ONNX Runtime on the exported portable graph equals the PyTorch model (tiny real model, real photos).

Pass marks as for torchvision parity: >= 99% of PyTorch's instances matched (same label,
box IoU >= 0.99), |Δbox| <= 0.5 px, |Δscore| <= 1e-3, mask IoU >= 0.97.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import skimage.data
from onnx import TensorProto, helper
from skimage.transform import resize

from build_engine.export import export_onnx
from build_engine.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE, onnx_attributes
from engines.loading import load_runner
from engines.ort_runner import OrtLoadError, OrtRunner, providers_for
from engines.parity import Tolerances, compare, compare_all
from engines.roi_align import RoIAlignParams
from engines.runner import Detections
from engines.static_io import FrameSizeError, GraphInfo, GraphMetadataError
from engines.torch_runner import TorchRunner
from engines.weights import LoadedModel, load_model

SOURCE_HW = (96, 128)  # camera frames; the tiny model (min_size 128) resizes them to 128x170
INPUT_HW = (128, 170)  # frames already at the network input size (a fixed point of the model's resize)
PHOTOS = ("astronaut", "coffee", "chelsea")


def _photos(hw: tuple[int, int]) -> list[np.ndarray]:
    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()[..., :3]
        out.append((resize(img, hw, anti_aliasing=True) * 255).round().astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def loaded(tiny_model_path: Path) -> LoadedModel:
    return load_model(tiny_model_path)


@pytest.fixture(scope="module")
def torch_runner(tiny_model_path: Path) -> TorchRunner:
    lm = load_model(tiny_model_path)  # its own copy: TorchRunner fuses the model in place
    return TorchRunner(lm.model, lm.class_names, lm.name)


@pytest.fixture(scope="module")
def source_graph(loaded: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ort") / "tiny-source.onnx"
    export_onnx(loaded.model, path, source_hw=SOURCE_HW, roi_align="onnx", class_names=loaded.class_names,
                name=loaded.name)
    return path


@pytest.fixture(scope="module")
def runner(source_graph: Path) -> OrtRunner:
    return OrtRunner(source_graph)


def _check_parity(ref: list[Detections], cand: list[Detections], tol: Tolerances) -> None:
    stats = compare_all(ref, cand, tol)
    print(f"\nparity: {stats.summary()}")
    assert stats.reference >= 30, "the tiny model should detect things on every photo"
    assert not stats.failures(tol), stats.failures(tol)


def test_source_size_graph_equals_pytorch(runner: OrtRunner, torch_runner: TorchRunner) -> None:
    frames = _photos(SOURCE_HW)
    dets = runner.infer(frames)
    _check_parity(torch_runner.infer(frames), dets, Tolerances())
    for d in dets:
        assert d.image_size == SOURCE_HW and d.labels.dtype == np.int64 and d.mask_probs.shape[1:] == (28, 28)
        assert np.all(np.diff(d.scores) <= 0), "sorted by decreasing score"
        assert d.boxes[:, 2].max() <= SOURCE_HW[1] and d.boxes[:, 3].max() <= SOURCE_HW[0]


def test_input_size_graph_equals_pytorch(loaded: LoadedModel, torch_runner: TorchRunner, tmp_path: Path) -> None:
    path = tmp_path / "tiny-input.onnx"
    info = export_onnx(loaded.model, path, input_hw=INPUT_HW, class_names=loaded.class_names)
    assert info.network_size == INPUT_HW and info.input_mode == "input", "normalize and pad only"
    frames = _photos(INPUT_HW)[:2]
    _check_parity(torch_runner.infer(frames), OrtRunner(path).infer(frames), Tolerances())


def test_fp16_graph_stays_close_to_pytorch(loaded: LoadedModel, torch_runner: TorchRunner, tmp_path: Path) -> None:
    """float16 convolutions (random-weight model): boxes and scores within fp16 rounding; masks of this
    uncalibrated-for-fp16 model sit near the 0.5 threshold, so only their boxes are compared."""
    path = tmp_path / "tiny-fp16.onnx"
    export_onnx(loaded.model, path, source_hw=SOURCE_HW, precision="fp16")
    frames = _photos(SOURCE_HW)[:2]
    ref, dets = torch_runner.infer(frames), OrtRunner(path).infer(frames)
    stats = compare_all(ref, dets, Tolerances(min_box_iou=0.9))
    print(f"\nfp16: {stats.summary()}")
    assert stats.matched_fraction >= 0.95 and stats.max_box_delta <= 1.0 and stats.max_score_delta <= 0.05


def test_batch_equals_single_frames(runner: OrtRunner) -> None:
    frames = _photos(SOURCE_HW)[:2]
    batch = runner.infer([frames[0], frames[1]])
    for frame, d in zip(frames, batch, strict=True):
        (single,) = runner.infer([frame])
        st = compare(single, d)
        assert len(d) == len(single) == st.matched > 0
        assert st.max_box_delta <= 1e-3 and st.max_score_delta <= 1e-5 and st.min_mask_iou >= 0.99
    assert runner.infer([]) == []


def test_wrong_frame_size_says_what_the_graph_takes(runner: OrtRunner) -> None:
    good = _photos(SOURCE_HW)[0]
    with pytest.raises(FrameSizeError) as err:
        runner.infer([good, np.zeros((480, 640, 3), np.uint8)])
    msg = str(err.value)
    assert "frame 1 is 640x480 (WxH)" in msg and "built for 128x96 frames" in msg
    assert "build-engine --source-size 128x96" in msg and "rebuild with build-engine --source-size 640x480" in msg
    with pytest.raises(ValueError, match=r"frame 0 must be uint8\[H, W, 3\] RGB, got float32"):
        runner.infer([good.astype(np.float32)])


def test_load_runner_opens_onnx_files(source_graph: Path, loaded: LoadedModel) -> None:
    r = load_runner(source_graph)
    assert isinstance(r, OrtRunner)
    assert (r.info.backend, r.info.device, r.info.name) == ("onnxruntime", "cpu", loaded.name)
    assert r.info.class_names == loaded.class_names
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.infer(_photos(SOURCE_HW)[:1])


# ----------------------------------------------------------------------------- refusals (hand-made files)
def _save(path: Path, nodes: list[onnx.NodeProto], meta: dict[str, str], custom: bool = False) -> Path:
    x = helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", 8, 8, 3])
    y = helper.make_tensor_value_info("counts", TensorProto.UINT8, None)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(PLUGIN_NAMESPACE, 1)] if custom else [])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def _meta(**changes: str) -> dict[str, str]:
    info = GraphInfo(name="m", class_names=("__background__", "a"), frame_size=(8, 8), input_mode="source",
                     network_size=(8, 8), precision="fp32", roi_align="onnx")
    return {**info.to_metadata(), **changes}


def test_plugin_graph_is_refused_with_advice(tmp_path: Path) -> None:
    attrs: dict[str, Any] = dict(onnx_attributes(RoIAlignParams()))
    node = helper.make_node(PLUGIN_NAME, ["frames"] * 5, ["counts"], domain=PLUGIN_NAMESPACE,
                            plugin_namespace=PLUGIN_NAMESPACE, plugin_version="1", **attrs)
    path = _save(tmp_path / "plugin.onnx", [node], _meta(roi_align="plugin"), custom=True)
    with pytest.raises(OrtLoadError, match=r"TensorRT RoIAlign plugin .* build a TensorRT engine .* --roi-align onnx"):
        OrtRunner(path)


def test_graph_without_our_metadata_is_refused(tmp_path: Path) -> None:
    identity = [helper.make_node("Identity", ["frames"], ["counts"])]
    with pytest.raises(GraphMetadataError, match=r"metadata keys \['format', .*\] are missing.*build-engine"):
        OrtRunner(_save(tmp_path / "bare.onnx", identity, {}))
    with pytest.raises(OrtLoadError, match="expected input 'frames' and outputs"):
        OrtRunner(_save(tmp_path / "io.onnx", identity, _meta()))
    with pytest.raises(GraphMetadataError, match="class_names/config metadata is not valid JSON"):
        OrtRunner(_save(tmp_path / "json.onnx", identity, _meta(class_names="[a")))
    with pytest.raises(OrtLoadError, match="no such file"):
        OrtRunner(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(OrtLoadError, match="onnxruntime cannot load it"):
        OrtRunner(tmp_path / "junk.onnx")


def test_device_selection() -> None:
    assert providers_for("cpu", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], "cpu")
    providers, dev = providers_for("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers[0] == ("CUDAExecutionProvider", {"device_id": 1}) and dev == "cuda:1"
    with pytest.raises(OrtLoadError, match=r"no CUDAExecutionProvider .* onnxruntime-gpu or use --device cpu"):
        providers_for("cuda", ["CPUExecutionProvider"])
    with pytest.raises(OrtLoadError, match=r"^device must be 'cpu', 'cuda' or 'cuda:N' \(N >= 0\), got 'gpu'$"):
        providers_for("gpu", ["CPUExecutionProvider"])
