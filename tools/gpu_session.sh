#!/usr/bin/env bash
# Every GPU check and micro-benchmark in one go, for a lent GPU machine (see docs/performance.md).
# Usage (from the repo root): bash tools/gpu_session.sh OUTDIR [TRAIN_MINUTES]
# Needs: torch + torchvision with CUDA, cupy, nvcc; av and pycocotools wheels in .whl/ if absent.
set -u
out=${1:?OUTDIR}; train_min=${2:-5}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/pycocotools*.whl .whl/av*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; nvcc --version | tail -1; python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"; } 2>&1 | tee "$out/machine.txt"
echo "== RoIAlign kernel: parity and timing vs torchvision (tools/gpu_checks.py)"
timeout 150 python3 tools/gpu_checks.py 2>&1 | tee "$out/gpu_checks.txt"
echo "== demo model training on the GPU (${train_min} min budget)"
timeout $(( train_min * 60 + 150 )) python3 tools/train_demo.py --device cuda --batch 8 --threads 8 \
  --budget-min "$train_min" --warmup 300 --iters 100000 --ckpt-minutes 100 --out /tmp/train 2>&1 | tail -25 | tee "$out/train_tail.txt"
cp /tmp/train/train.log "$out/train.log" 2>/dev/null; cp /tmp/train/demo_config.json "$out/" 2>/dev/null
python3 - "$out" <<'PY'
import sys, torch
sd = torch.load("/tmp/train/demo_tv.pth", map_location="cpu")
keys = sorted(sd)
half = len(keys) // 2
for i, ks in enumerate((keys[:half], keys[half:])):
    torch.save({k: sd[k].half() if sd[k].is_floating_point() else sd[k] for k in ks}, f"{sys.argv[1]}/demo_tv_part{i}.pth")
print("split", len(keys), "tensors")
PY
echo "== held-out COCOeval of the GPU-trained model"
timeout 150 python3 tools/eval_demo.py --weights /tmp/train/demo_tv.pth --threads 8 --json "$out/eval.json" 2>&1 | tail -20
