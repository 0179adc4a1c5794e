"""Load a ``build-engine`` engine the way a deployment does, in a process of its own::

    python3 -m tests.gpu.engine_load_check ENGINE FRAMES.npy OUT.json [--model MODEL]

This process imports ``engines`` only (no ``build_engine``, no ``tensorrt.plugin``: an
engine built ahead of time must run without our build step or the plugin's Python). It loads
:class:`engines.trt_runner.TrtRunner` on the main thread, runs the frames ``uint8[N, H, W, 3]``
on two worker threads one after the other (their outputs must be equal), inspects the engine's
layers (plugin layers, fp16 layers), closes the runner on a third thread (then again: close is
idempotent) and compares the first run with the PyTorch CUDA runner of ``MODEL`` (default: the
embedded demo model). Writes the report as JSON; exit 0 when ``ok`` is true.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.loading import load_runner
from engines.parity import compare_all
from engines.runner import Detections
from engines.trt_runner import TrtRunner


def _equal(a: Sequence[Detections], b: Sequence[Detections]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.boxes, y.boxes) and np.array_equal(x.scores, y.scores)
        and np.array_equal(x.mask_probs, y.mask_probs) for x, y in zip(a, b, strict=True))


def inspect_layers(runner: TrtRunner) -> dict[str, Any]:
    """Layer count, names of the plugin layers and the number of fp16 layers, from TensorRT's engine inspector."""
    import tensorrt as trt
    import torch

    session = runner._session
    assert session is not None, "the runner is closed"
    with torch.cuda.device(session.device):
        inspector = session.engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = [layer if isinstance(layer, dict) else {"Name": layer} for layer in info.get("Layers", [])]
    text = [json.dumps(layer) for layer in layers]
    return {"count": len(layers),
            "plugin_layers": [layer.get("Name") for layer, t in zip(layers, text, strict=True) if "MultilevelRoIAlign" in t],
            "fp16_layers": sum('"Half"' in t or "FP16" in t for t in text)}


def check_engine(engine: Path, frames: list[np.ndarray], model: Path | None) -> dict[str, Any]:
    """Load on this thread, run twice on other threads, inspect, close on a third; compare with PyTorch CUDA."""
    runner = TrtRunner(engine)
    results: dict[str, list[Detections]] = {}

    def infer(key: str) -> None:
        results[key] = runner.infer(frames)

    for key in ("first", "second"):
        worker = threading.Thread(target=infer, args=(key,), name=f"inference-{key}")
        worker.start()
        worker.join(600)
    complete = all(len(results.get(key, [])) == len(frames) for key in ("first", "second"))
    same = complete and _equal(results["first"], results["second"])
    layers = inspect_layers(runner)
    closer = threading.Thread(target=runner.close, name="loop")
    closer.start()
    closer.join(60)
    closed_by_other_thread = runner.closed
    runner.close()
    report: dict[str, Any] = {"complete": complete, "repeat_equal": same, "closed": closed_by_other_thread,
                              "layers": layers}
    if complete:
        stats = compare_all(load_runner(model, device="cuda").infer(frames), results["first"])
        report |= {"vs_pytorch_cuda": stats.summary(), "stats": stats.as_dict()}
    # loading and running an engine built ahead of time needs neither our build step nor the plugin's Python
    report["forbidden_modules"] = sorted(m for m in sys.modules
                                         if m == "build_engine" or m.startswith(("build_engine.", "tensorrt.plugin")))
    report["ok"] = complete and same and closed_by_other_thread and not report["forbidden_modules"]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", type=Path)
    p.add_argument("frames", type=Path, help=".npy file of uint8[N, H, W, 3] frames at the engine's size")
    p.add_argument("out", type=Path, help="the JSON report")
    p.add_argument("--model", type=Path, default=None, help="model file of the PyTorch reference (default: the demo model)")
    args = p.parse_args(argv)
    report = check_engine(args.engine, list(np.load(args.frames)), args.model)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
