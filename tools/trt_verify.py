"""Everything about the TensorRT path that needs a GPU, in one run, for a person with a TensorRT box.

::

    python tools/trt_verify.py --out trt-verify            # the demo model, 320x240 frames
    python tools/trt_verify.py --out v --model r50.safetensors --source-size 640x480 --frames 8 --timing

Needs torch with CUDA; cupy for the kernel steps (``pip install cupy-cuda12x`` / ``-cuda13x``);
TensorRT >= 10.9 with its libraries and a PTX compiler (nvcc, or cuda-python's NVRTC) for the
engine steps. A step whose requirement is missing is SKIPPED with the reason; the others run:

1. ``environment``: GPU, driver CUDA version, torch, TensorRT, the PTX compiler chosen.
2. ``kernel_parity`` (no TensorRT): the plugin's PTX, launched with cupy as TensorRT launches
   it, vs the CPU reference op: box 7x7, mask 14x14, aligned/adaptive, max; fp32 and fp16;
   PTX for this GPU and, on a GPU >= 8.0, the ``ampere_plus`` target compute_80.
3. ``torch_cuda_vs_cpu`` (no TensorRT): the PyTorch runner on CUDA vs on the CPU
   (``engines.parity.compare_all``; out of tolerance is a WARN: the gate judges engines).
4. ``build_fp32`` / ``build_fp16``: ``build-engine`` for ``--source-size``, batch 1:2:4, with
   its parity gate against the PyTorch runner (``--frames`` frames); exit 0 = gate passed.
5. ``load_fp32`` / ``load_fp16``: each engine in a fresh process that imports neither
   ``build_engine`` nor ``tensorrt.plugin``: loaded on the main thread, run on another thread
   (twice: equal outputs), closed on a third; layers inspected (plugin layers, fp16 layers);
   compared with the PyTorch CUDA runner (figures recorded).
6. ``plugin_network_<level>``: one engine holding both poolers (plugin nodes only) vs the
   reference op, at hardware compatibility ``none`` and (GPU >= 8.0) ``ampere_plus``.
7. ``kernel_timing`` (``--timing``): the kernel vs torchvision's MultiScaleRoIAlign.

Writes ``<out>/report.json`` and ``<out>/report.md`` and prints the table. Exit status: 0 no
failure, 1 a step failed, 2 no CUDA device.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
Result = tuple[str, dict[str, Any]]
"""``(status, details)``; status is PASS, FAIL, WARN or SKIP."""


def _has(module: str) -> str | None:
    """None when ``module`` imports, else the reason."""
    try:
        __import__(module)
    except (ImportError, OSError) as exc:
        return f"{module} not importable: {exc}"
    return None


def _child(args: list[str], timeout: int) -> tuple[int, str, dict[str, Any]]:
    """Run this script in a fresh process; ``(exit code, output tail, JSON it wrote)``."""
    out_json = Path(args[args.index("--json") + 1])
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)
    data = json.loads(out_json.read_text()) if out_json.is_file() else {}
    return proc.returncode, (proc.stdout + proc.stderr)[-3000:], data


# --------------------------------------------------------------------------- steps
def step_environment(ns: argparse.Namespace) -> Result:
    import torch

    from build_engine.ptx import find_compiler
    from engines.machine import collect_runtime_environment

    env = collect_runtime_environment()
    details: dict[str, Any] = {"gpu": env.gpu_name, "compute_capability": env.compute_capability,
                               "driver": env.driver_version, "driver_cuda": env.cuda_version,
                               "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                               "tensorrt": env.tensorrt_version}
    try:
        details["ptx_compiler"] = find_compiler(max_cuda=env.cuda_version).describe()
    except RuntimeError as exc:
        details["ptx_compiler"] = f"none usable: {exc}"
    return "PASS", details


def step_kernel_parity(ns: argparse.Namespace) -> Result:
    import torch
    from roi_align_gpu import kernel_parity

    from build_engine.ptx import find_compiler, ptx_arch
    from engines.machine import collect_runtime_environment

    cc = torch.cuda.get_device_capability()
    compiler = find_compiler(max_cuda=collect_runtime_environment().cuda_version)
    rows = kernel_parity(cc, compiler)
    if cc >= (8, 0):
        rows += kernel_parity(ptx_arch(cc, "ampere_plus"), compiler)
    return ("PASS" if all(r["ok"] for r in rows) else "FAIL"), {"rows": rows}


def step_torch_cuda_vs_cpu(ns: argparse.Namespace) -> Result:
    from engines.loading import load_runner
    from engines.parity import Tolerances, compare_all

    frames = ns.frame_list
    cpu = load_runner(ns.model, device="cpu").infer(frames)
    cuda = load_runner(ns.model, device="cuda").infer(frames)
    stats = compare_all(cpu, cuda)
    failures = stats.failures(Tolerances())
    return ("PASS" if not failures else "WARN"), {"summary": stats.summary(), "stats": stats.as_dict(),
                                                  "failures": failures}


def step_build(ns: argparse.Namespace, precision: str) -> Result:
    engine = ns.out / f"engine_{precision}.plan"
    cmd = [sys.executable, "-m", "build_engine.cli", "--source-size", ns.source_size, "--batch", "1:2:4",
           "--precision", precision, "--parity-frames", str(ns.frames), "--out", str(engine)]
    if ns.model is not None:
        cmd += ["--model", str(ns.model)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=ns.build_timeout, check=False)
    details: dict[str, Any] = {"command": " ".join(cmd), "exit": proc.returncode,
                               "seconds": round(time.monotonic() - started, 1),
                               "output_tail": (proc.stdout + proc.stderr)[-4000:]}
    manifest = engine.with_name(engine.name + ".manifest.json")
    if manifest.is_file():
        details["parity"] = json.loads(manifest.read_text()).get("parity")
    ns.engines[precision] = engine if engine.is_file() else None
    return ("PASS" if proc.returncode == 0 else "FAIL"), details


def step_load(ns: argparse.Namespace, precision: str) -> Result:
    engine = ns.engines.get(precision)
    if engine is None:
        return "SKIP", {"reason": f"no {precision} engine was built"}
    out = ns.out / f"load_{precision}.json"
    args = ["--child-load", str(engine), "--frames-file", str(ns.frames_file), "--json", str(out)]
    if ns.model is not None:
        args += ["--model", str(ns.model)]
    code, tail, data = _child(args, timeout=600)
    ok = code == 0 and data.get("ok") is True
    return ("PASS" if ok else "FAIL"), {**data, "exit": code, **({} if ok else {"output_tail": tail})}


def step_plugin_network(ns: argparse.Namespace, level: str) -> Result:
    out = ns.out / f"plugin_{level}.json"
    code, tail, data = _child(["--child-plugin", level, "--json", str(out)], timeout=900)
    ok = code == 0 and bool(data.get("rows")) and all(r["ok"] for r in data["rows"])
    return ("PASS" if ok else "FAIL"), {**data, "exit": code, **({} if ok else {"output_tail": tail})}


def step_timing(ns: argparse.Namespace) -> Result:
    import torch
    from roi_align_gpu import kernel_timing

    from build_engine.ptx import find_compiler
    from engines.machine import collect_runtime_environment

    compiler = find_compiler(max_cuda=collect_runtime_environment().cuda_version)
    return "PASS", {"rows": kernel_timing(torch.cuda.get_device_capability(), compiler)}


# --------------------------------------------------------------------------- children (fresh processes)
def child_load(engine: Path, model: Path | None, frames_file: Path, out: Path) -> int:
    """Load ``engine`` here (no build_engine, no tensorrt.plugin), run it on other threads, inspect it."""
    import numpy as np

    from engines.loading import load_runner
    from engines.parity import compare_all
    from engines.trt_runner import TrtRunner

    frames = list(np.load(frames_file))
    runner = TrtRunner(engine)  # main thread
    results: dict[str, Any] = {}

    def infer(key: str) -> None:
        results[key] = runner.infer(frames)

    for key in ("first", "second"):
        worker = threading.Thread(target=infer, args=(key,), name=f"inference-{key}")
        worker.start()
        worker.join(600)
    same = all((a.boxes == b.boxes).all() and (a.scores == b.scores).all() and (a.mask_probs == b.mask_probs).all()
               for a, b in zip(results["first"], results["second"], strict=True))
    layers = _inspect(runner)
    closer = threading.Thread(target=runner.close, name="loop")
    closer.start()
    closer.join(60)
    runner.close()
    reference = load_runner(model, device="cuda").infer(frames)
    stats = compare_all(reference, results["first"])
    modules = sorted(m for m in sys.modules if m == "build_engine" or m.startswith(("build_engine.", "tensorrt.plugin")))
    complete = len(results.get("first", [])) == len(frames)
    report = {"ok": complete and same and not modules and runner.closed, "threads": "load main, infer 2 workers, close 3rd",
              "repeat_equal": same, "forbidden_modules": modules, "layers": layers,
              "vs_pytorch_cuda": stats.summary(), "stats": stats.as_dict()}
    out.write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


def _inspect(runner: Any) -> dict[str, Any]:
    """Layer count, plugin layers and fp16 layers from TensorRT's engine inspector (JSON)."""
    import tensorrt as trt
    import torch

    session = runner._session
    with torch.cuda.device(session.device):
        inspector = session.engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = [layer if isinstance(layer, dict) else {"Name": layer} for layer in info.get("Layers", [])]
    text = [json.dumps(layer) for layer in layers]
    return {"count": len(layers), "plugin_layers": [layer.get("Name") for layer, t in zip(layers, text, strict=True)
                                                    if "MultilevelRoIAlign" in t],
            "fp16_layers": sum('"Half"' in t or "FP16" in t for t in text)}


def child_plugin(level: str, out: Path) -> int:
    from roi_align_gpu import plugin_network_parity

    from build_engine.ptx import cuda_limit, tensorrt_cuda_major
    from engines.machine import collect_runtime_environment

    limit = cuda_limit(collect_runtime_environment().cuda_version, tensorrt_cuda_major())
    rows = plugin_network_parity(level, limit)
    out.write_text(json.dumps({"rows": rows}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


# --------------------------------------------------------------------------- driver
def _run(name: str, needs: list[str | None], fn: Callable[[], Result]) -> dict[str, Any]:
    missing = [n for n in needs if n]
    if missing:
        status, details = "SKIP", {"reason": "; ".join(missing)}
    else:
        try:
            status, details = fn()
        except Exception as exc:  # a step's crash is its failure; the others still run
            status, details = "FAIL", {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    line = details.get("reason") or details.get("summary") or details.get("error") or ""
    print(f"[{status}] {name} {line}", flush=True)
    return {"step": name, "status": status, "details": details}


def markdown(steps: list[dict[str, Any]]) -> str:
    lines = ["| step | status | notes |", "|---|---|---|"]
    for s in steps:
        d = s["details"]
        note = d.get("reason") or d.get("summary") or d.get("vs_pytorch_cuda") or d.get("error") or ""
        if "rows" in d:
            note = f"{sum(r.get('ok', True) for r in d['rows'])}/{len(d['rows'])} rows ok"
        lines.append(f"| {s['step']} | {s['status']} | {str(note).replace('|', '/')[:200]} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("trt-verify"), help="report and engine folder")
    p.add_argument("--model", type=Path, help="model file (default: the embedded demo model)")
    p.add_argument("--source-size", default="320x240", metavar="WxH", help="engine frame size (default 320x240)")
    p.add_argument("--frames", type=int, default=4, help="parity frames (default 4)")
    p.add_argument("--timing", action="store_true", help="also time the kernel against torchvision")
    p.add_argument("--build-timeout", type=int, default=1800, help="seconds per engine build")
    p.add_argument("--child-load", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-plugin", help=argparse.SUPPRESS)
    p.add_argument("--frames-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.child_load is not None:
        return child_load(ns.child_load, ns.model, ns.frames_file, ns.json)
    if ns.child_plugin is not None:
        return child_plugin(ns.child_plugin, ns.json)
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        print("trt_verify: torch sees no CUDA device; run this on the GPU box", file=sys.stderr)
        return 2
    from build_engine.parity_report import parity_frames

    ns.out.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in ns.source_size.lower().split("x"))
    ns.frame_list = [f for _, f in parity_frames(ns.frames, h, w)]
    ns.frames_file = ns.out / "frames.npy"
    np.save(ns.frames_file, np.stack(ns.frame_list))
    ns.engines = {}
    cupy, trt = _has("cupy"), _has("tensorrt")
    cc = torch.cuda.get_device_capability()
    steps = [_run("environment", [], lambda: step_environment(ns)),
             _run("kernel_parity", [cupy], lambda: step_kernel_parity(ns)),
             _run("torch_cuda_vs_cpu", [], lambda: step_torch_cuda_vs_cpu(ns))]
    for precision in ("fp32", "fp16"):
        steps.append(_run(f"build_{precision}", [trt], functools.partial(step_build, ns, precision)))
        steps.append(_run(f"load_{precision}", [trt], functools.partial(step_load, ns, precision)))
    for level in ("none", "ampere_plus"):
        below = "ampere_plus needs a GPU >= 8.0" if level == "ampere_plus" and cc < (8, 0) else None
        steps.append(_run(f"plugin_network_{level}", [trt, below], functools.partial(step_plugin_network, ns, level)))
    if ns.timing:
        steps.append(_run("kernel_timing", [cupy, _has("torchvision")], lambda: step_timing(ns)))
    (ns.out / "report.json").write_text(json.dumps(steps, indent=2, default=str))
    table = markdown(steps)
    (ns.out / "report.md").write_text(table + "\n")
    print("\n" + table)
    return 1 if any(s["status"] == "FAIL" for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
