#!/usr/bin/env bash
# Set up a fresh machine (virtualenv + fusionrt with its CPU extras, and a torch-free serving venv for
# Triton), then run the main job on the shipped model: `fusionrt pipeline` exports, verifies, quantizes
# (fp16, int8), checks parity against PyTorch, benchmarks and writes runs/bundle/report.md. A rerun
# reuses every finished stage.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[all]"
# Serving venv for Triton (`fusionrt serve`, tests/test_triton_server.py): nvidia-pytriton pins numpy<2, so it
# lives apart from .venv, and it has no torch (the serving path is torch-free).
if [ ! -x .venv-serve/bin/python ]; then
  "$PYTHON" -m venv .venv-serve
fi
# Only the wheel's server binary is used (not the PyTriton API), so its Python dependencies are skipped:
# measured 1m49s instead of 3m02s for a fresh .venv-serve on a loaded 2-core machine. numpy<2 is the wheel's pin.
.venv-serve/bin/python -m pip install --quiet -c constraints.txt "numpy<2" "onnxruntime>=1.27" -e .
.venv-serve/bin/python -m pip install --quiet --no-deps "nvidia-pytriton>=0.7"
.venv/bin/fusionrt pipeline --out runs/bundle --junit runs/pipeline-junit.xml
# A small demo index of held-out scenes for `fusionrt search` (README "Search"): 500 images, bounded (seconds).
.venv/bin/fusionrt index demo runs/demo-scenes --scenes 500 -q
.venv/bin/fusionrt index add runs/demo-scenes --index runs/demo-index -q
# The caption model (README "Captioning"): the pipeline on the shipped caption checkpoint: export with its KV cache
# (verified against PyTorch on the B x P x S x M grid), calibrate from real decoding, fp16, int8 and int8-cpu within
# the caption budget on 500 held-out scenes, parity with caption gates, a light benchmark, runs/caption-bundle/report.md.
# 64 calibration scenes (P = 0 to 39) hold the budget (benchmarks/RESULTS.md); 36.6-91.2 s on a loaded 2-core machine.
.venv/bin/fusionrt pipeline -q --checkpoint fusionrt/assets/caption-small --out runs/caption-bundle --calib-samples 64 \
  --junit runs/caption-pipeline-junit.xml
