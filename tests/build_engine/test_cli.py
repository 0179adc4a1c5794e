"""``build-engine``: real exports of a small real model, parity against PyTorch, and its error messages."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from build_engine.cli import main
from build_engine.options import (
    BuildOptions,
    UsageError,
    make_parser,
    options_from_args,
    parse_batch,
    parse_size,
)
from build_engine.pipeline import output_paths
from build_engine.plugin_spec import PLUGIN_ID, PLUGIN_VERSION
from engines.manifest import (
    BatchProfile,
    Requirements,
    check_compatible,
    manifest_path_for,
    read_manifest,
    rebuild_command,
)

pytest.importorskip("onnx")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
FIXTURES = Path(__file__).parents[1] / "engines" / "fixtures"


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, nothing else
    assert err[0].startswith("build-engine: error: ")
    return err[0]


# --------------------------------------------------------------------------- option values
@pytest.mark.parametrize(("spec", "profile"), [("1:4:8", (1, 4, 8)), ("2", (2, 2, 2)), ("1:1:16", (1, 1, 16))])
def test_batch_spec(spec: str, profile: tuple[int, int, int]) -> None:
    assert parse_batch(spec) == BatchProfile(*profile)


@pytest.mark.parametrize(("spec", "message"), [
    ("4:2:8", "MIN <= OPT <= MAX required, got 4:2:8"),
    ("1:x:8", "MIN:OPT:MAX with integers >= 1"),
    ("0:1:2", "MIN:OPT:MAX with integers >= 1"),
    ("1:2", "MIN:OPT:MAX with integers >= 1"),
])
def test_bad_batch_spec_is_refused(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_batch(spec)


def test_sizes_are_read_in_the_flags_order() -> None:
    assert parse_size("1920x1080", "--source-size", "WxH") == (1080, 1920)
    assert parse_size("800X1344", "--input", "HxW") == (800, 1344)
    for bad in ("1920", "1920x", "axb", "8x8", "1920x1080x3"):
        with pytest.raises(UsageError, match="--source-size"):
            parse_size(bad, "--source-size", "WxH")


def test_defaults_and_overrides() -> None:
    opts = options_from_args(make_parser().parse_args(["--onnx-only"]))
    assert (opts.roi_align, opts.precision, opts.batch, opts.source_size) == ("onnx", "fp32", BatchProfile(1, 4, 8),
                                                                              (1080, 1920))
    assert options_from_args(make_parser().parse_args([])).roi_align == "plugin"  # engines use the fused kernel
    opts = options_from_args(make_parser().parse_args(["--batch", "1:4:8", "--max-batch", "16", "--input", "96x128"]))
    assert opts.batch == BatchProfile(1, 4, 16) and opts.input_size == (96, 128) and opts.source_size is None
    assert options_from_args(make_parser().parse_args(["--max-batch", "2"])).batch == BatchProfile(1, 2, 2)


def test_recorded_command_repeats_the_build() -> None:
    ns = make_parser().parse_args(["--model", "m.safetensors", "--precision", "fp16", "--batch", "2:4:8",
                                   "--source-size", "1280x720", "--parity-frames", "2"])
    opts = options_from_args(ns)
    argv = opts.command(Path("out/m.plan"))

    assert argv[0] == "build-engine"
    again = options_from_args(make_parser().parse_args(argv[1:]))
    assert again == dataclasses.replace(opts, out=Path("out/m.plan"))


def test_rebuild_commands_from_the_manifest_are_valid_build_engine_commands() -> None:
    """engines.manifest edits the recorded command; the result must parse and ask for what was needed."""
    recorded = options_from_args(make_parser().parse_args(["--model", "m.safetensors", "--precision", "fp16",
                                                           "--source-size", "1920x1080"]))
    m = read_manifest(FIXTURES / "a5000_trt10.9_fp16.manifest.json")
    m = dataclasses.replace(m, build_command=tuple(recorded.command(Path("m.plan"))))
    needs = Requirements(precision="fp32", batch_size=16, input_size=(608, 1088))

    argv = shlex.split(rebuild_command(m, check_compatible(m, m.environment, needs)) or "")
    opts = options_from_args(make_parser().parse_args(argv[1:]))

    assert (opts.precision, opts.batch.max, opts.input_size, opts.source_size) == ("fp32", 16, (608, 1088), None)


def test_output_paths() -> None:
    plan = BuildOptions(model=None, out=Path("x/m.plan"))
    assert output_paths(plan, "m", (120, 160)) == (Path("x/m.onnx"), Path("x/m.plan"))
    only = BuildOptions(model=None, out=Path("x/m.onnx"), onnx_only=True)
    assert output_paths(only, "m", (120, 160)) == (Path("x/m.onnx"), None)
    assert output_paths(BuildOptions(model=None), "tiny", (120, 160)) == (Path("tiny_120x160_fp32.onnx"),
                                                                          Path("tiny_120x160_fp32.plan"))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("args", "message"), [
    (["--batch", "4:2:8"], "MIN <= OPT <= MAX required, got 4:2:8"),
    (["--source-size", "1920"], "--source-size takes WxH"),
    (["--input", "0x100"], "--input takes HxW|sides must be >= 16"),
    (["--input", "96x128", "--source-size", "160x120"], "not allowed with argument"),
    (["--precision", "int8"], "invalid choice: 'int8'"),
])
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--onnx-only", *args]) == 2
    line = _error_line(capsys)
    assert any(part in line for part in message.split("|")), line


def test_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(tmp_path / "nope.safetensors"), "--onnx-only", "--out", str(tmp_path / "a.onnx")]) == 1
    assert "nope.safetensors: no such file" in _error_line(capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["notes.pth", "notes.safetensors"])
def test_file_that_is_no_model(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / name
    bad.write_text("these are meeting notes, not weights\n")

    assert main(["--model", str(bad), "--onnx-only", "--out", str(tmp_path / "a.onnx")]) == 1
    line = _error_line(capsys)
    assert str(bad) in line
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message of a machine without TensorRT")
def test_engine_requested_without_tensorrt(tiny_model_path: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(tiny_model_path), "--source-size", "160x120", "--out", str(tmp_path / "t.plan")]) == 1
    line = _error_line(capsys)
    assert "TensorRT is not installed (import tensorrt failed: " in line
    assert "use --onnx-only to export the graph, or run on the GPU box" in line
    assert not list(tmp_path.iterdir())  # refused before any work


# --------------------------------------------------------------------------- real builds
def test_onnx_only_build_as_a_real_command_passes_parity(tiny_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifacts" / "tiny.onnx"
    cmd = [sys.executable, "-c", "import sys; from build_engine.cli import main; sys.exit(main())",
           "--model", str(tiny_model_path), "--onnx-only", "--roi-align", "onnx", "--source-size", "160x120",
           "--batch", "1:2:4", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    assert proc.returncode == 0, proc.stderr
    assert "network input 128x170 (HxW) for 160x120 (WxH)" in proc.stderr
    for stage in ("[1/3] export: done", "[2/3] ONNX check: done", "[3/3] parity: done"):
        assert stage in proc.stderr
    assert "verdict: PASS" in proc.stdout and "skimage:astronaut" in proc.stdout
    manifest = read_manifest(manifest_path_for(out))
    assert out.is_file() and manifest.build.plugins == () and manifest.build.input_size == (128, 170)
    assert manifest.inputs[0].shape == (-1, 120, 160, 3) and manifest.build.batch == BatchProfile(1, 2, 4)
    assert manifest.graph is not None and manifest.graph["frame_size"] == "120x160"
    assert manifest.parity is not None and manifest.parity["verdict"] == "PASS"
    assert manifest.parity["total"]["reference"] > 0  # the model detects things: parity compared real detections
    assert len(manifest.parity["frames"]) == 4
    assert manifest.build_command[:3] == ("build-engine", "--model", str(tiny_model_path))


def test_onnx_only_plugin_graph(tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny_plugin.onnx"

    code = main(["--model", str(tiny_model_path), "--onnx-only", "--roi-align", "plugin", "--source-size", "160x120",
                 "--out", str(out)])

    assert code == 0
    manifest = read_manifest(manifest_path_for(out))
    assert [(p.id, p.version) for p in manifest.build.plugins] == [(PLUGIN_ID, PLUGIN_VERSION)]
    assert manifest.parity is not None and manifest.parity["verdict"] == "SKIPPED"
    assert "ONNX Runtime cannot run the TensorRT RoIAlign plugin" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT libraries (libnvinfer) not installed")
def test_engine_build_with_parity_on_the_gpu(tiny_model_path: Path, tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    engine = tmp_path / "tiny.plan"
    assert main(["--model", str(tiny_model_path), "--source-size", "160x120", "--batch", "1:2:4",
                 "--out", str(engine)]) == 0
    manifest = read_manifest(manifest_path_for(engine))
    assert manifest.parity is not None and manifest.parity["verdict"] == "PASS"
    assert manifest.environment.tensorrt_version is not None
