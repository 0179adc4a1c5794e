"""A real two-node Ray cluster inside a private network namespace, for ``tools.bench_ray`` and the tests.

::

    python3 tools/ray_cluster.py STEPS.json REPORT.json     # what run_in_namespace() runs

re-executes itself under ``unshare --net --pid --fork --mount-proc`` (root), brings ``lo`` up
(127.0.0.1 is then the only address, so no Ray traffic can leave loopback), starts
``ray start --head`` and more ``ray start`` node processes with the CPU counts in STEPS.json, runs
each step's command (``{address}`` is replaced by the head's ``127.0.0.1:PORT``), and writes each
step's exit status, stdout, stderr, wall time and, for ``"kill_worker": true``, the PID of the
``SegmentWorker`` process it killed with SIGKILL while that worker was running a segment.
Every Ray process lives in the namespace's PID namespace: when the script ends, the kernel ends
them all (nothing else on the machine is touched, ``ray stop`` is never needed)::

    {"nodes_cpus": [1, 1], "temp_dir": "/tmp/x/ray",
     "steps": [{"argv": ["streamer", "process", "a.mp4", "--ray", "{address}"], "cwd": "/tmp/x",
                "kill_worker": true, "env": {"OMP_NUM_THREADS": "1"}}]}
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PORT = 6399
INSIDE = "STREAMER_RAY_NETNS"
KILL_AFTER_S = 1.0
"""A worker is killed once it has been running a segment for this long (mid-segment)."""


def keyframe_video(path: Path, seconds: float, gop: int, seed: int, width: int = 160,
                   height: int = 96) -> Path:
    """A demo scene (:func:`tools.scenes.video.generate_video`) re-encoded with a keyframe every
    ``gop`` frames (B-frames kept)."""
    import av

    from tools.scenes.video import generate_video

    src = path.with_suffix(".src.mp4")
    generate_video(src, seed=seed, width=width, height=height, seconds=seconds)
    with av.open(str(src)) as inp, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20", "g": str(gop), "keyint_min": str(gop),
                          "sc_threshold": "0"}
        for frame in inp.decode(video=0):
            img = frame.to_ndarray(format="rgb24")
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    src.unlink()
    return path


def netns_available() -> str | None:
    """Why the namespace cannot be made here (a skip reason), or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8)"
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "ip", "link", "set", "lo", "up"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace (root needed): {probe.stderr.strip()}"
    return None


def run_in_namespace(steps: dict[str, Any], workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``steps`` on a fresh cluster in a fresh namespace; ``{"cluster_start_s", "steps": [...]}``."""
    spec, report = workdir / "ray-steps.json", workdir / "ray-report.json"
    spec.write_text(json.dumps(steps))
    proc = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", sys.executable,
                           __file__, str(spec), str(report)], env={**os.environ, INSIDE: "1"},
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not report.exists():
        raise RuntimeError(f"ray_cluster.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def _start_cluster(nodes_cpus: list[int], temp_dir: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}",
            f"--num-cpus={nodes_cpus[0]}", "--num-gpus=0", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    subprocess.run(head, check=True, env=env, capture_output=True)
    for cpus in nodes_cpus[1:]:
        subprocess.run(["ray", "start", f"--address=127.0.0.1:{PORT}", "--node-ip-address=127.0.0.1",
                        f"--num-cpus={cpus}", "--num-gpus=0"], check=True, env=env, capture_output=True)


def _workers() -> dict[int, str]:
    """PID → process title of every SegmentWorker process in this PID namespace."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::SegmentWorker"):
            found[int(entry.name)] = title
    return found


def _busy(pid: int) -> bool:
    """A thread of ``pid`` is running a segment."""
    try:
        return any((t / "comm").read_text().strip() == "segment-run"
                   for t in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False


def _run_step(step: dict[str, Any]) -> dict[str, Any]:
    address = f"127.0.0.1:{PORT}"
    argv = [a.replace("{address}", address) for a in step["argv"]]
    env = {**os.environ, **step.get("env", {})}
    env.pop(INSIDE, None)
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=step.get("cwd"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed = None
    seen: set[str] = set()
    if step.get("kill_worker"):
        # A worker thread is named "segment-run" while it runs a segment (streamer.ray_worker).
        busy_since: dict[int, float] = {}
        while proc.poll() is None and killed is None:
            now = time.monotonic()
            for pid, title in _workers().items():
                seen.add(title)
                if not _busy(pid):
                    busy_since.pop(pid, None)
                    continue
                if now - busy_since.setdefault(pid, now) >= KILL_AFTER_S:
                    os.kill(pid, signal.SIGKILL)
                    killed = {"pid": pid, "title": title, "after_s": round(now - start, 2)}
                    break
            time.sleep(0.05)
    out, err = proc.communicate(timeout=step.get("timeout_s", 300))
    return {"argv": argv, "rc": proc.returncode, "stdout": out, "stderr": err,
            "wall_s": round(time.monotonic() - start, 3), "killed": killed, "titles": sorted(seen)}


def main(spec_path: str, report_path: str) -> int:
    """Inside the namespace: start the cluster, run the steps, write the report."""
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.monotonic()
    _start_cluster(spec.get("nodes_cpus", [1, 1]), spec["temp_dir"])
    started = round(time.monotonic() - t0, 2)
    steps = [_run_step(step) for step in spec["steps"]]
    Path(report_path).write_text(json.dumps({"cluster_start_s": started, "steps": steps}))
    return 0


if __name__ == "__main__":
    if os.environ.get(INSIDE) != "1":
        sys.exit("run through run_in_namespace() (it creates the network namespace)")
    sys.exit(main(sys.argv[1], sys.argv[2]))
