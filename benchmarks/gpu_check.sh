#!/usr/bin/env bash
# The GPU checks (issues 4 and 6) in one go, for a lent GPU machine with PyTorch and ONNX Runtime: tower
# throughput and parity in fp32/fp16/bf16, ONNX Runtime CUDA where present, bf16 training samples/s and MFU.
# Runs from the source tree without installing it: the package `kubeclip` is laid out in a temp folder as
# the install maps it (links to kubeclip/__init__.py, model/, components/, pipelines/). Rows go to
# $OUT/gpu_check.json when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
tree="$(mktemp -d)" && trap 'rm -rf "$tree"' EXIT
mkdir "$tree/kubeclip" && ln -s "$PWD/kubeclip/__init__.py" "$tree/kubeclip/__init__.py"
for folder in model components pipelines; do ln -s "$PWD/$folder" "$tree/kubeclip/$folder"; done
PYTHONPATH="$tree:.${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/gpu_check.py --out "$out/gpu_check.json" "$@" \
    2>&1 | tee "$out/gpu_check.log"
