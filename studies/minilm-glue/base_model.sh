#!/usr/bin/env bash
# Write studies/minilm-glue/base-model/ (git-ignored): the base model these runs were trained from,
# all-MiniLM-L6-v2 with its weights rounded to float16 and back to float32, exactly as
# pack_for_gpu.sh and run_on_gpu.sh carry it to the GPU machine. The committed runs reference W0 by
# hash instead of storing it; analyses that need W0 read it from here:
#   tlora-analysis report RUN RUN --base-model studies/minilm-glue/base-model
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=studies/minilm-glue/base-model
mkdir -p $OUT
$PY - "$OUT" <<'PYTHON'
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from tlora_analysis.experiments.bundled import bundled_model_dir

source, out = bundled_model_dir(), Path(sys.argv[1])
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(source / name, out / name)
weights = load_file(str(source / "model.safetensors"))
save_file({k: v.half().float() if v.is_floating_point() else v for k, v in weights.items()},
          str(out / "model.safetensors"))
PYTHON
echo "wrote $OUT"
