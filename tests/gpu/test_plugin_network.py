"""The RoIAlign plugin inside TensorRT: one engine holding the box and the mask pooler as plugin
nodes only, built at hardware compatibility ``none`` and (GPU >= 8.0) ``ampere_plus``, run and
compared with the reference op (fp32 and fp16). Each level runs in a fresh process: a process
registers the plugin for one target."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from build_engine.ptx import Compiler

RecordProperty = Callable[[str, object], None]
"""Type of pytest's ``record_property`` fixture."""

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("level", ["none", "ampere_plus"])
def test_two_pooler_plugin_network_equals_the_reference_op(cuda_capability: tuple[int, int], tensorrt: ModuleType,
                                                           ptx_compiler: Compiler, level: str, tmp_path: Path,
                                                           record_property: RecordProperty) -> None:
    if level == "ampere_plus" and cuda_capability < (8, 0):
        pytest.skip(f"ampere_plus needs a GPU >= 8.0, this one is {cuda_capability}")
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "tests.gpu.two_pooler_network", level, str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1100, check=False)
    log = (proc.stdout + proc.stderr)[-4000:]
    assert out.is_file(), f"exit {proc.returncode}, no report:\n{log}"
    rows = json.loads(out.read_text())["rows"]
    record_property("rows", rows)
    assert [(r["pooler"], r["dtype"]) for r in rows] == [
        ("box", "float32"), ("mask", "float32"), ("box", "float16"), ("mask", "float16")]
    assert all(r["ok"] for r in rows), rows
    assert proc.returncode == 0, log
