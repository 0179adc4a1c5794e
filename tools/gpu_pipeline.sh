#!/usr/bin/env bash
# The frame pipeline's GPU benchmark, one call on a CUDA machine (needs PyAV and orjson, and uvloop for the daemon's default loop: `pip install av orjson uvloop`):
#   1. the PyTorch CUDA runner, 8 streams of 1080p at batch 8: end-to-end frames/s against the
#      model alone at the same batch (goal >= 0.9);
#   2. the replay ceiling with masks pasted on the GPU (8 streams, 20 instances per frame).
# A measurement, not a check: the GPU's correctness checks (GPU paste publishes what host paste
# does, the CUDA runner against the CPU runner, engines, the RoIAlign kernel) are the gpu tests:
#   python3 -m pytest -m gpu
# Usage: bash tools/gpu_pipeline.sh OUTDIR [MODEL]   (MODEL: default the demo model)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/gpu_pipeline.sh OUTDIR [MODEL]}
mkdir -p "$out"
model=()
[[ -n "${2:-}" ]] && model=(--model "$2")
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m streamer.cli --log-level warning bench-pipeline --real --device cuda "${model[@]}" \
  --streams 8 --batch 8 --frames 200 --rounds 1 --json "$out/pipeline-real-cuda.json" | tee "$out/pipeline-real-cuda.txt"
python3 -m streamer.cli --log-level warning bench-pipeline --paste-device cuda --streams 8 --batch 8 \
  --instances 20 --frames 200 --json "$out/pipeline-replay-gpu-paste.json" | tee "$out/pipeline-replay-gpu-paste.txt"
