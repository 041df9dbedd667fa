#!/usr/bin/env bash
# Side-by-side timing of infill builds and model files: for each round, each binary on each model
# in turn completes the same hole (`infill complete --json`); prints prompt tokens/s, decoding
# tokens/s and peak RSS.
#
#   benches/ab.sh MODEL[,MODEL...] ROUNDS BINARY...
#
# e.g. a build of main against a build with a change, on a random checkpoint of a real model's
# shape (benches/random_checkpoint.py), or one build on that checkpoint and its GGUF exports
# (`infill models export --out q8.gguf --dtype q8_0`). The prompt is this repository's own src/text.rs around
# line 40, cut to a window of INFILL_AB_CONTEXT tokens (1024 unless set), so every binary sees
# the same one.
set -euo pipefail
model=$1 rounds=$2
shift 2
file="$(dirname "$0")/../src/text.rs"
IFS=, read -r -a models <<< "$model"
for r in $(seq "$rounds"); do
    for bin in "$@"; do
      for model in "${models[@]}"; do
        err=$(mktemp)
        out=$(/usr/bin/time -f "%M" "$bin" complete --model "$model" --file "$file" --line 40 \
            --column 5 --max-tokens 32 --context "${INFILL_AB_CONTEXT:-1024}" --json 2>"$err")
        rss=$(tail -1 "$err")
        rm -f "$err"
        echo "$out" | python3 -c "
import json, sys
d = json.load(sys.stdin)
t = d['timings']
print(f\"round $r  $bin $(basename "$model"): prompt {t['prompt_tokens']} tokens at {t['prompt_tokens'] / t['prefill_ms'] * 1000:.0f} tok/s, \"
      f\"decoding {t['tokens_per_s']:.1f} tok/s, peak RSS {$rss / 1024:.0f} MiB\")"
      done
    done
done
