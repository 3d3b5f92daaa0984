#!/usr/bin/env bash
# The GPU numbers, in one go on a CUDA machine (about ten minutes on one H200-class GPU):
#   bash benchmarks/gpu.sh            # writes benchmarks/results/gpu_*.json, then the README's speed-gpu block
# 1. CAM inference, ResNet-50 at 320 px, scales 1.0/0.5/1.5/2.0 + flips: the kit's AMP + channels-last path
#    against IRNet's protocol run literally (goal >= 10x), and its share of the GPU's measured bf16 matmul rate
#    (goal >= 40 %)                                                     -> gpu_cam_resnet50.json
# 2. training throughput, ResNet-50 classifier and DeepLabV3-ResNet-50 at 320 px: AMP + channels-last against
#    fp32 (goal >= 2x)                                                  -> gpu_train_resnet50.json
# 3. the `gpu` preset's round 0 end to end (classifier, CAMs, pseudo-masks, segmenter; amp=auto = bf16),
#    with each stage's seconds and its scores                           -> gpu_round0.json
# Every JSON names the device. Nothing here runs without CUDA: on a machine without it, it says so and exits 2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "benchmarks/gpu.sh: no CUDA device here (torch.cuda.is_available() is False); nothing was run" >&2
  exit 2
fi
"$PY" - <<'PY'
import torch; print(f"[gpu.sh] {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
"$PY" benchmarks/run_all.py --prefix gpu --only cam_resnet50 train_resnet50
"$PY" benchmarks/bench_round.py --preset gpu --device cuda --out benchmarks/results/gpu_round0.json > /dev/null
"$PY" benchmarks/run_all.py --summary --prefix gpu --update README.md
