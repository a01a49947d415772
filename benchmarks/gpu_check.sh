#!/usr/bin/env bash
# GPU check of the TensorRT path (issue 8). Run unchanged on a machine with a GPU and TensorRT:
#   benchmarks/gpu_check.sh [OUT.json]        (default benchmarks/gpu_check.json; PYTHON=... to pick the interpreter)
# Exports the shipped model, makes its fp16 and int8 graphs, builds a TensorRT engine of every precision,
# runs parity of each against PyTorch fp32 (grid + held-out scenes), and benchmarks TensorRT (with and
# without CUDA graphs) against PyTorch eager fp32/fp16 on CUDA at B in {1, 8, 32}. Without TensorRT it says
# so and still runs the PyTorch CUDA part; without any CUDA device it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${1:-benchmarks/gpu_check.json}"
# Budget: 8 minutes on one H100; the helper stops starting new steps after GPU_CHECK_BUDGET_S seconds.
export GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"
exec "$PYTHON" benchmarks/gpu_check.py --out "$OUT"
