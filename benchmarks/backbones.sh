#!/usr/bin/env bash
# The served head (bench --model served) on two embedding models: the embedded MiniLM and a
# bigger one (all-mpnet-base-v2 from scripts/fetch-mpnet). Results under OUT/<model>/<dataset>/.
# Usage: benchmarks/backbones.sh MODEL_DIR OUT CACHE [DATASET...]
# (default datasets: trec movie_review_snippets sms_spam reuters_r8; SEEDS default 5;
# MODELS="embedded MODEL_DIR" by default, MODELS=MODEL_DIR runs the bigger one alone)
set -euo pipefail
big=$1 out=$2 cache=$3
shift 3
datasets=("$@")
[ ${#datasets[@]} -gt 0 ] || datasets=(trec movie_review_snippets sms_spam reuters_r8)
data=${DATA:-../shared/data}
python=${PYTHON:-python}
split() { # a split may be gzipped
  if [ -e "$data/$1/$2.jsonl.gz" ]; then echo "$data/$1/$2.jsonl.gz"; else echo "$data/$1/$2.jsonl"; fi
}
for dataset in "${datasets[@]}"; do
  for model in ${MODELS:-embedded $big}; do
    name=$( [ "$model" = embedded ] && echo minilm || basename "$model" )
    mkdir -p "$out/$name"
    echo "$(date -u +%T) start $dataset $name"
    EMBEDDING_MODEL=$model "$python" -m ls_backend.cli bench --model served \
      --train "$(split "$dataset" train)" --test "$(split "$dataset" test)" --cache "$cache" \
      --strategies random,default --seeds "${SEEDS:-5}" --budget 300 \
      --out "$out/$name/$dataset" > "$out/$name/$dataset.log" 2>&1
    echo "$(date -u +%T) done $dataset $name"
  done
done
