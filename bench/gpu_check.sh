#!/usr/bin/env bash
# On a lent GPU, all of the GPU fast path's measurements in one command (about 8 minutes): bench.gpu
# (tutorial settings, nerflow eager, compiled and a lean loop on a random mBERT-sized model) and the real
# flow (bench.gpu_flow: WikiANN-en 20k/10k/10k, MiniLM-L6 shape, compiled and eager). Needs .whl/ and
# .gpu/ from bench/gpu_prepare.sh. Results: $OUT (or bench/results/gpu-check)/*.json and gpu_check.log.
set -uo pipefail
out=${OUT:-bench/results/gpu-check}
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check.log") 2>&1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_HOME=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
# Each stage has its own time limit, so a slow one still leaves the others' results.
timeout 280 python3 -m bench.gpu --variants compiled lean tutorial eager --json "$out/gpu.json"
timeout 270 python3 -m bench.gpu_flow --data .gpu/wikiann_en --shape .gpu/minilm-shape --variants compiled eager --json "$out/gpu_flow.json"
ls -l "$out"
