#!/usr/bin/env bash
# The GPU run in one script: correctness on the device (extraction parity against raw hooks in
# float32 and bfloat16; steering and injection sweeps greedy-identical to one row at a time; a
# device_map split of the model over the device and the CPU, steered at a block on each side),
# then extraction, steering and introspection timed against bare transformers (and nnsight,
# TransformerLens, steering-vectors, repeng where installed), each with its ceiling, in float32
# and bfloat16. Writes DIR/gpu_checks.json and one JSON per benchmark and dtype, prints the table.
#
#   benchmarks/gpu.sh [--device cuda|cpu] [--smoke] [--checks-only] [--out DIR]
#
# --device cpu runs the same script on the CPU (hides any GPU); --smoke uses the tiny random model
# (seconds); --checks-only skips the timed benchmarks. Needs a venv whose torch sees the GPU (PYTHON=/path/to/python to pick it) and the
# embedded model (`make setup`); nothing is downloaded. Under 8 minutes on one H100.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
OUT=bench-gpu
SMOKE=()  # extra flags for gpu.py
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --smoke) SMOKE+=(--smoke); shift ;;
    --checks-only) SMOKE+=(--skip-benchmarks); shift ;;
    *) echo "gpu.sh: unknown argument $1 (use --device cuda|cpu, --smoke, --checks-only, --out DIR)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$DEVICE" = cpu ]; then export CUDA_VISIBLE_DEVICES=""; else "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"; fi
mkdir -p "$OUT"
# one process: the checks, then the benchmarks (shared imports and model cache)
exec timeout 900 "$PY" benchmarks/gpu.py --device "$DEVICE" --out "$OUT" "${SMOKE[@]}"
