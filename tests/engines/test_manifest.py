"""Engine manifests recorded on other machines, checked against environments and needs."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from engines.machine import collect_runtime_environment, parse_nvidia_smi
from engines.manifest import (
    SCHEMA,
    EngineIncompatibleError,
    Manifest,
    Requirements,
    RuntimeEnvironment,
    check_compatible,
    compatibility_message,
    ensure_compatible,
    manifest_path_for,
    read_manifest,
)

FIXTURES = Path(__file__).parent / "fixtures"
A5000 = FIXTURES / "a5000_trt10.9_fp16.manifest.json"
A100_AMPERE_PLUS = FIXTURES / "a100_trt10.12_ampere_plus.manifest.json"
PLUGIN = "maskrcnn_streamer::MultilevelRoIAlign"


@pytest.fixture
def a5000() -> Manifest:
    return read_manifest(A5000)


def _machine(m: Manifest, **changes: Any) -> RuntimeEnvironment:
    """The build machine of ``m``, with some facts changed."""
    return dataclasses.replace(m.environment, **changes)


def _refusal(m: Manifest, env: RuntimeEnvironment, required: Requirements | None = None) -> EngineIncompatibleError:
    with pytest.raises(EngineIncompatibleError) as info:
        ensure_compatible(m, env, required, engine="out/model.plan")
    return info.value


def test_recorded_manifest_round_trips_through_json(a5000: Manifest) -> None:
    assert a5000.schema == SCHEMA
    assert a5000.build.batch.max == 8 and a5000.build.plugins[0].id == PLUGIN
    assert Manifest.from_json(a5000.to_json()) == a5000
    assert json.loads(a5000.to_json()) == json.loads(A5000.read_text())


def test_same_machine_and_needs_within_the_build_are_accepted(a5000: Manifest) -> None:
    needs = Requirements(precision="fp16", batch_size=8, input_size=(800, 1344), plugins={PLUGIN: "1"})

    assert check_compatible(a5000, _machine(a5000), needs) == []
    assert ensure_compatible(a5000, _machine(a5000), needs) == []


def test_other_tensorrt_version_is_refused_with_the_rebuild_command(a5000: Manifest) -> None:
    err = _refusal(a5000, _machine(a5000, tensorrt_version="10.13.3.9"))

    assert [m.field for m in err.mismatches] == ["environment.tensorrt_version"]
    msg = str(err)
    assert "out/model.plan" in msg and "10.9.0.34" in msg and "10.13.3.9" in msg
    assert shlex.join(a5000.build_command) in msg


def test_other_compute_capability_is_refused(a5000: Manifest) -> None:
    err = _refusal(a5000, _machine(a5000, compute_capability="8.9", gpu_name="NVIDIA L4"))

    assert [m.field for m in err.mismatches] == ["environment.compute_capability"]
    assert "environment.compute_capability: engine has 8.6, here 8.9" in str(err)


def test_machine_without_tensorrt_or_gpu_is_refused(a5000: Manifest) -> None:
    err = _refusal(a5000, _machine(a5000, tensorrt_version=None, compute_capability=None, gpu_name=None))

    assert {m.field for m in err.mismatches} == {"environment.tensorrt_version", "environment.compute_capability"}
    assert "no TensorRT" in str(err) and "no CUDA GPU" in str(err)


def test_this_machine_as_collected_is_judged_by_what_it_really_has(a5000: Manifest) -> None:
    here = collect_runtime_environment()
    fields = {m.field for m in check_compatible(a5000, here) if m.fatal}

    assert ("environment.tensorrt_version" in fields) == (here.tensorrt_version != "10.9.0.34")
    assert ("environment.compute_capability" in fields) == (here.compute_capability != "8.6")


def test_other_precision_is_refused_and_the_command_asks_for_it(a5000: Manifest) -> None:
    err = _refusal(a5000, _machine(a5000), Requirements(precision="fp32"))

    assert [m.field for m in err.mismatches] == ["build.precision"]
    expected = shlex.join(a5000.build_command).replace("--precision fp16", "--precision fp32")
    assert expected in str(err)


@pytest.mark.parametrize(("batch", "edit"), [(16, ("--max-batch 8", "--max-batch 16"))])
def test_batch_outside_the_profile_is_refused(a5000: Manifest, batch: int, edit: tuple[str, str]) -> None:
    err = _refusal(a5000, _machine(a5000), Requirements(batch_size=batch))

    assert [m.field for m in err.mismatches] == ["build.batch"]
    assert "batch 1..8" in str(err) and f"batch {batch}" in str(err)
    assert shlex.join(a5000.build_command).replace(*edit) in str(err)


def test_other_input_size_is_refused(a5000: Manifest) -> None:
    err = _refusal(a5000, _machine(a5000), Requirements(input_size=(608, 1088)))

    assert [m.field for m in err.mismatches] == ["build.input_size"]
    assert "--input-size 608x1088" in str(err)


def test_other_plugin_version_is_refused() -> None:
    old = read_manifest(A100_AMPERE_PLUS)

    err = _refusal(old, _machine(old), Requirements(plugins={PLUGIN: "1"}))

    assert [m.field for m in err.mismatches] == ["build.plugins"]
    assert f"{PLUGIN} v0" in str(err) and f"{PLUGIN} v1" in str(err)


def test_rebuild_command_edits_flag_equals_value_form() -> None:
    old = read_manifest(A100_AMPERE_PLUS)

    err = _refusal(old, _machine(old), Requirements(precision="fp16", batch_size=32))

    msg = str(err)
    assert "--precision=fp16" in msg and "--precision=fp32" not in msg
    assert msg.rstrip().endswith("--max-batch 32")  # absent from the recorded command: appended


def test_unrecorded_build_command_is_said_so(a5000: Manifest) -> None:
    bare = dataclasses.replace(a5000, build_command=())
    mismatches = check_compatible(bare, _machine(bare, tensorrt_version="11.4.0.106"))

    assert "build command was not recorded" in compatibility_message(bare, mismatches)


def test_other_gpu_model_of_the_same_capability_only_warns(a5000: Manifest) -> None:
    warnings = ensure_compatible(a5000, _machine(a5000, gpu_name="NVIDIA A10"))

    assert [(m.field, m.fatal) for m in warnings] == [("environment.gpu_name", False)]


def test_older_driver_only_warns(a5000: Manifest) -> None:
    warnings = ensure_compatible(a5000, _machine(a5000, driver_version="535.183.01", cuda_version="12.2"))

    assert {m.field for m in warnings} == {"environment.driver_version", "environment.cuda_version"}
    assert not any(m.fatal for m in warnings)


@pytest.mark.parametrize(("cc", "ok"), [("8.0", True), ("8.9", True), ("9.0", True), ("7.5", False)])
def test_ampere_plus_engine_runs_on_any_ampere_or_later_gpu(cc: str, ok: bool) -> None:
    m = read_manifest(A100_AMPERE_PLUS)
    fatal = [x.field for x in check_compatible(m, _machine(m, compute_capability=cc)) if x.fatal]

    assert fatal == ([] if ok else ["environment.compute_capability"])


@pytest.mark.parametrize(("trt", "ok"), [("10.12.0.36", True), ("10.14.1.48", True), ("10.9.0.34", False), ("11.4.0.106", False)])
def test_version_compatible_engine_accepts_later_tensorrt_of_its_major(trt: str, ok: bool) -> None:
    m = read_manifest(A100_AMPERE_PLUS)
    fatal = [x.field for x in check_compatible(m, _machine(m, tensorrt_version=trt)) if x.fatal]

    assert fatal == ([] if ok else ["environment.tensorrt_version"])


def test_missing_or_broken_manifests_say_to_rebuild(tmp_path: Path, a5000: Manifest) -> None:
    engine = tmp_path / "model.plan"
    assert manifest_path_for(engine) == tmp_path / "model.plan.manifest.json"
    with pytest.raises(FileNotFoundError, match="rebuild"):
        read_manifest(manifest_path_for(engine))

    raw = json.loads(a5000.to_json())
    cases = {
        "old-schema": {**raw, "schema": "maskrcnn-streamer/engine-manifest/0"},
        "bad-batch": {**raw, "build": {**raw["build"], "batch": {"min": 4, "opt": 2, "max": 8}}},
        "bad-precision": {**raw, "build": {**raw["build"], "precision": "int4"}},
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=str(path)):
            read_manifest(path)
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        read_manifest(tmp_path / "garbage.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NVIDIA H100 80GB HBM3, 9.0, 550.54.15\n", ("NVIDIA H100 80GB HBM3", "9.0", "550.54.15")),
        ("Tesla T4, [N/A], 470.256.02\n", ("Tesla T4", None, "470.256.02")),
        ("", None),
    ],
)
def test_parse_nvidia_smi(text: str, expected: tuple[str, str | None, str] | None) -> None:
    assert parse_nvidia_smi(text) == expected
