#!/usr/bin/env bash
# STAR ablation with LoRA in the loop as the server runs it (bench --model served-lora):
# full STAR, then each part off (dynamic uncertainty, MC dropout, L2 on lora_B), beside the
# head-only served model. One dataset per call, the variants in the order given (default:
# all); results under OUT/<variant>/, a log beside each.
# Usage: benchmarks/star_ablation.sh DATASET MAX_LENGTH OUT CACHE [VARIANT...]
# Variants: served star no-dynamic no-mc no-l2 no-mc-random no-l2-random. Dynamic
# uncertainty only changes the ranking, so its random runs would repeat full STAR's: none.
set -euo pipefail
dataset=$1 max_length=$2 out=$3 cache=$4
shift 4
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(served star no-dynamic no-mc no-l2 no-l2-random no-mc-random)
data=${DATA:-../shared/data}
python=${PYTHON:-python}
split() { # a split may be gzipped
  if [ -e "$data/$dataset/$1.jsonl.gz" ]; then echo "$data/$dataset/$1.jsonl.gz"; else echo "$data/$dataset/$1.jsonl"; fi
}
common=(--train "$(split train)" --test "$(split test)" --cache "$cache"
  --pool-size "${POOL:-500}" --test-size "${TEST:-200}" --init 10 --batch 10 --budget 300
  --seeds "${SEEDS:-3}")
# The server's LoRA training defaults (10 epochs, 100 steps at least): with 3 epochs and 30
# steps no adapter beat the head by the promotion rule's 2 standard errors (0 of 24 rounds).
# Full STAR as measured: MC dropout on (5 passes; MC_SAMPLES is 1 by default since).
lora=(--model served-lora --lora-every "${EVERY:-160}" --max-length "$max_length"
  --lora-epochs "${EPOCHS:-10}" --lora-min-steps "${MIN_STEPS:-100}" --mc-samples 5)
mkdir -p "$out"
for variant in "${variants[@]}"; do
  case $variant in
    served) flags=(--model served --strategies random,default) ;;
    star) flags=("${lora[@]}" --strategies random,default) ;;
    no-dynamic) flags=("${lora[@]}" --strategies default --no-star-mix) ;;
    no-mc) flags=("${lora[@]}" --strategies default --mc-samples 1) ;;
    no-mc-random) flags=("${lora[@]}" --strategies random --mc-samples 1) ;;
    no-l2) flags=("${lora[@]}" --strategies default --b-decay 0) ;;
    no-l2-random) flags=("${lora[@]}" --strategies random --b-decay 0) ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  echo "$(date -u +%T) start $dataset $variant"
  "$python" -m ls_backend.cli bench "${common[@]}" --out "$out/$variant" "${flags[@]}" \
    >"$out/$variant.log" 2>&1
  echo "$(date -u +%T) done $dataset $variant"
done
