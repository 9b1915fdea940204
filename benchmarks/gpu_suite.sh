#!/usr/bin/env bash
# One-shot GPU benchmark (benchmarks/gpu_suite.py): ours and torchvision's Faster R-CNN, train and
# inference, VGG16 600x1000 and ResNet-50-FPN 800x1333, bfloat16, batches 8, 16 and 1.
#
#   benchmarks/gpu_suite.sh [OUTPUT.md] [more gpu_suite.py flags]     (default: gpu_suite.md)
#
# $PYTHON (default: python) is the environment with jax[cuda], flax, optax, torch, torchvision.
# The suite keeps to its own 450 s budget; this wrapper is the hard stop at 8 minutes. The table
# is rewritten after every item, so a stop keeps what finished.
set -uo pipefail
cd "$(dirname "$0")/.."
output="${1:-gpu_suite.md}"
shift || true
timeout --signal=TERM --kill-after=10 470 "${PYTHON:-python}" benchmarks/gpu_suite.py --output="$output" "$@"
status=$?
if command -v nvidia-smi >/dev/null; then
  {
    echo
    echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  } >>"$output"
fi
exit $status
