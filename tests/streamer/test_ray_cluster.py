"""``streamer process --ray`` on a real two-node Ray cluster, inside a private network namespace.

One cluster (``ray start --head`` + a second node, 1 CPU each; :mod:`tools.ray_cluster`)
runs, with the embedded demo model:

1. a job over a segmented video, a short video, a missing file and a non-media file, during
   which one worker process is killed by PID mid-segment: the merged output must equal the local
   run's byte for byte (tracking on: the driver tracks in frame order), every frame exactly once,
   the same error lines, exit 1;
2. ``--out DIR/ --resume`` with one input's output already there: only the other is processed;
3. ``--device cuda`` on the CPU-only cluster: refused (exit 2) naming the GPU count;
4. an address where nothing listens: exit 2 within seconds.

Frames are small and few (16 inferred frames locally, 16 + a redone segment on the cluster) and
torch runs one thread per process, so the whole module takes well under 2 minutes on 2 cores.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from streamer.process_cli import ProcessOptions, _load_runner, process_inputs
from tools.ray_cluster import keyframe_video, netns_available, run_in_namespace

pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]', or tools/setup.sh --test)")
if (_why := netns_available()) is not None:
    pytestmark = pytest.mark.skip(reason=f"real Ray cluster test: {_why}")

REPO = Path(__file__).resolve().parents[2]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""One torch thread per process: locally and on each worker (2 cores, shared)."""


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Inputs, the local reference, and the cluster steps' reports."""
    import torch

    work = tmp_path_factory.mktemp("ray")
    keyframe_video(work / "long.mp4", 0.48, gop=4, seed=3)       # 12 frames: 3 segments of 4
    keyframe_video(work / "short.mp4", 0.16, gop=4, seed=4)      # 4 frames: processed whole
    (work / "notes.mp4").write_text("not a video\n")
    inputs = ["long.mp4", "short.mp4", "missing.mp4", "notes.mp4"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = _load_runner(None, "cpu", None)
        assert runner is not None
        out, errors = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(work)
        try:
            process_inputs(inputs, runner, out, ProcessOptions(), errors=errors)
        finally:
            os.chdir(cwd)
            runner.close()
    finally:
        torch.set_num_threads(threads)
    (work / "local.jsonl").write_text(out.getvalue())

    resume_dir = work / "per-input"
    resume_dir.mkdir()
    long_lines = [ln for ln in out.getvalue().splitlines() if '"source":"long.mp4"' in ln]
    (resume_dir / "long.jsonl").write_text("\n".join(long_lines) + "\n")
    streamer = [sys.executable, "-m", "streamer.cli", "process"]
    steps = {"nodes_cpus": [1, 1], "temp_dir": str(work / "ray"), "steps": [
        {"argv": [*streamer, *inputs, "--ray", "{address}", "--segment-frames", "4",
                  "--out", "ray.jsonl"], "cwd": str(work), "env": ENV, "kill_worker": True},
        {"argv": [*streamer, "long.mp4", "short.mp4", "--ray", "{address}", "--out", "per-input/",
                  "--resume"], "cwd": str(work), "env": ENV},
        {"argv": [*streamer, "short.mp4", "--ray", "{address}", "--device", "cuda", "--out",
                  "cuda.jsonl"], "cwd": str(work), "env": ENV},
        {"argv": [*streamer, "short.mp4", "--ray", "127.0.0.1:1", "--out", "x.jsonl"],
         "cwd": str(work), "env": ENV},
    ]}
    with pytest.MonkeyPatch.context() as env:
        # the cluster's processes (drivers, nodes, workers) run this checkout's packages, installed or not
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        report = run_in_namespace(steps, work, timeout_s=200)
    return {"work": work, "local": out.getvalue(), "errors": errors.getvalue(), "report": report}


def test_killed_worker_output_equals_local_exactly_once(cluster_run: dict[str, Any]) -> None:
    step = cluster_run["report"]["steps"][0]
    assert step["killed"] is not None, f"no worker was caught mid-segment: {step['titles']} {step['stderr']}"
    assert step["rc"] == 1, step["stderr"]  # missing.mp4 and notes.mp4 fail, as locally
    got = (cluster_run["work"] / "ray.jsonl").read_text()
    frames = [(m["source"], m["frame"]) for m in map(json.loads, got.splitlines())]
    assert frames == [("long.mp4", i) for i in range(12)] + [("short.mp4", i) for i in range(4)]
    assert got == cluster_run["local"]  # byte for byte, track ids included
    assert any("track_id\":1" in line for line in got.splitlines())
    local_errors = cluster_run["errors"].splitlines()
    ray_errors = [ln for ln in step["stderr"].splitlines() if ln.startswith("error: ")]
    assert len(ray_errors) == len(local_errors) == 2
    assert ray_errors[0] == ("error: missing.mp4: no such file on node 127.0.0.1 (with --ray the workers "
                             "read the inputs: use a shared file system or the same path on every node)")
    assert ray_errors[1] == local_errors[1]  # notes.mp4: not a readable video, as locally


def test_resume_skips_complete_outputs(cluster_run: dict[str, Any]) -> None:
    step = cluster_run["report"]["steps"][1]
    assert step["rc"] == 0, step["stderr"]
    assert "long.mp4: output exists, skipped (--resume)" in step["stderr"]
    short = (cluster_run["work"] / "per-input" / "short.jsonl").read_text()
    assert short == "".join(ln + "\n" for ln in cluster_run["local"].splitlines()
                            if '"source":"short.mp4"' in ln)
    assert not list((cluster_run["work"] / "per-input").glob(".*tmp*"))


def test_cuda_on_a_cpu_cluster_is_refused(cluster_run: dict[str, Any]) -> None:
    step = cluster_run["report"]["steps"][2]
    assert step["rc"] == 2
    assert "the cluster has 0 GPUs (2 CPUs)" in step["stderr"]
    assert not (cluster_run["work"] / "cuda.jsonl").exists()


def test_unreachable_address_fails_fast(cluster_run: dict[str, Any]) -> None:
    step = cluster_run["report"]["steps"][3]
    assert step["rc"] == 2
    assert step["stderr"].strip().splitlines()[-1].startswith("error: --ray 127.0.0.1:1: unreachable")
    assert step["wall_s"] < 15

