#!/usr/bin/env bash
# Set up a fresh machine (virtualenv + fusionrt with its CPU extras), then run the main job on the
# shipped model: `fusionrt pipeline` exports, verifies, quantizes (fp16, int8), checks parity against
# PyTorch, benchmarks and writes runs/bundle/report.md. A rerun reuses every finished stage.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[all]"
.venv/bin/fusionrt pipeline --out runs/bundle --junit runs/pipeline-junit.xml
