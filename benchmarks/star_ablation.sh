#!/usr/bin/env bash
# STAR ablation with LoRA in the loop as the server runs it (bench --model served-lora):
# full STAR, then each part off (dynamic uncertainty, MC dropout, L2 on lora_B), beside the
# head-only served model. One dataset per call; results under OUT/<variant>/.
# Usage: benchmarks/star_ablation.sh DATASET MAX_LENGTH OUT CACHE
set -euo pipefail
dataset=$1 max_length=$2 out=$3 cache=$4
data=${DATA:-../shared/data}
python=${PYTHON:-python}
split() { if [ -e "$data/$dataset/$1.jsonl.gz" ]; then echo "$data/$dataset/$1.jsonl.gz"; else echo "$data/$dataset/$1.jsonl"; fi; }
common=(--train "$(split train)" --test "$(split test)"
  --cache "$cache" --pool-size "${POOL:-500}" --test-size "${TEST:-200}" --init 10 --batch 10
  --budget 300 --seeds "${SEEDS:-3}")
lora=(--model served-lora --lora-every "${EVERY:-140}" --max-length "$max_length"
  --lora-epochs "${EPOCHS:-3}" --lora-min-steps "${MIN_STEPS:-30}")
bench() { # variant, then flags
  local variant=$1
  shift
  echo "$(date -u +%T) start $dataset $variant"
  "$python" -m ls_backend.cli bench "${common[@]}" --out "$out/$variant" "$@" \
    >"$out/$variant.log" 2>&1
  echo "$(date -u +%T) done $dataset $variant"
}
mkdir -p "$out"
# The cheapest first, then in order of what the reading needs most. Dynamic uncertainty only
# changes the ranking, so its random runs would repeat full STAR's exactly: not run.
bench served --model served --strategies random,default
bench star "${lora[@]}" --strategies random,default
bench no-dynamic "${lora[@]}" --strategies default --no-star-mix
bench no-l2 "${lora[@]}" --strategies random,default --b-decay 0
bench no-mc "${lora[@]}" --strategies default --mc-samples 1
bench no-mc-random "${lora[@]}" --strategies random --mc-samples 1
