"""Scaling of ``streamer process --ray``: the same videos locally and with 1 and 2 Ray workers.

::

    python3 -m tools.bench_ray [--videos 4] [--seconds 0.96] [--gop 8] [--segment-frames 8]
                               [--size 160x96] [--json FILE]

Generates ``--videos`` demo scenes (``tools.scenes.video.generate_video``, re-encoded with a
keyframe every ``--gop`` frames), starts a real two-node Ray cluster (1 CPU per node) inside a
private network namespace (:mod:`tools.ray_cluster`: loopback only, root needed), and runs,
on the same machine and in the same conditions (one torch thread per process, embedded demo
model): the local ``streamer process``, then ``--ray`` with ``--workers 1`` and ``--workers 2``.
It reports each run's wall time and frames/s, the speed-ups, the driver's per-segment figures
(worker time, Ray overhead = submit → result minus the worker's own time, startup) and checks
that the three outputs are byte-identical. Figures from this machine: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from tools.ray_cluster import keyframe_video, netns_available, run_in_namespace

SUMMARY = re.compile(r"ray: (\d+) segments in ([\d.]+) s \(driver\), ([\d.]+) s per segment on the "
                     r"workers, overhead (\d+) ms per segment, first segment submitted ([\d.]+) s")


def main() -> int:
    """Run the benchmark; print the table (and write ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=0.96, help="length of each video (25 fps)")
    ap.add_argument("--gop", type=int, default=8, help="frames between keyframes")
    ap.add_argument("--segment-frames", type=int, default=8)
    ap.add_argument("--size", default="160x96", help="WxH of the videos (even)")
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args()
    why = netns_available()
    if why is not None:
        print(f"error: bench_ray needs a network namespace: {why}", file=sys.stderr)
        return 2
    width, height = (int(v) for v in args.size.split("x"))
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        names = [f"v{i}.mp4" for i in range(args.videos)]
        for i, name in enumerate(names):
            keyframe_video(work / name, args.seconds, args.gop, seed=10 + i, width=width, height=height)
        cli = [sys.executable, "-m", "streamer.cli", "process", *names]
        ray = ["--ray", "{address}", "--segment-frames", str(args.segment_frames)]
        steps = {"nodes_cpus": [1, 1], "temp_dir": str(work / "ray"), "steps": [
            {"argv": [*cli, "--out", "local.jsonl"], "cwd": tmp, "env": env},
            {"argv": [*cli, *ray, "--workers", "1", "--out", "ray1.jsonl"], "cwd": tmp, "env": env},
            {"argv": [*cli, *ray, "--workers", "2", "--out", "ray2.jsonl"], "cwd": tmp, "env": env},
        ]}
        report = run_in_namespace(steps, work, timeout_s=3600)
        outputs = [(work / f).read_bytes() for f in ("local.jsonl", "ray1.jsonl", "ray2.jsonl")]
    frames = outputs[0].count(b"\n")
    runs = []
    for label, step in zip(("local", "ray 1 worker", "ray 2 workers"), report["steps"], strict=True):
        if step["rc"] != 0:
            print(f"error: {label} failed ({step['rc']}):\n{step['stderr']}", file=sys.stderr)
            return 1
        m = SUMMARY.search(step["stderr"])
        run = {"run": label, "wall_s": step["wall_s"], "fps": round(frames / step["wall_s"], 2)}
        if m:
            run.update(segments=int(m[1]), worker_s_per_segment=float(m[3]),
                       overhead_ms_per_segment=int(m[4]), startup_s=float(m[5]))
        runs.append(run)
    result = {"frames": frames, "videos": args.videos, "size": args.size,
              "segment_frames": args.segment_frames, "cluster_start_s": report["cluster_start_s"],
              "identical": outputs[0] == outputs[1] == outputs[2], "load_avg": os.getloadavg()[0],
              "runs": runs,
              "speedup_2_vs_1": round(runs[1]["wall_s"] / runs[2]["wall_s"], 2),
              "speedup_2_vs_local": round(runs[0]["wall_s"] / runs[2]["wall_s"], 2)}
    print(f"{frames} frames ({args.videos} videos {args.size}, segments of {args.segment_frames} frames), "
          f"outputs identical: {result['identical']}, load average {result['load_avg']:.1f}")
    for r in runs:
        extra = (f", {r['segments']} segments, {r['worker_s_per_segment']:.2f} s/segment on the worker, "
                 f"Ray overhead {r['overhead_ms_per_segment']} ms/segment, startup {r['startup_s']:.1f} s"
                 if "segments" in r else "")
        print(f"  {r['run']:<14} {r['wall_s']:7.1f} s  {r['fps']:5.2f} frames/s{extra}")
    print(f"  speed-up 2 vs 1 worker: {result['speedup_2_vs_1']}x; 2 workers vs local: "
          f"{result['speedup_2_vs_local']}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
