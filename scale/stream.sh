#!/usr/bin/env bash
# Trains on a machine that has PyTorch but neither Rust nor the repositories (a GPU machine), run
# from the repository's root there:
#
#   scale/stream.sh IN OUT MINUTES
#
# IN holds what travels: corpus_export.xz (the stripped `corpus_export` example binary, built for
# the same processor family: cargo build --release --example corpus_export), train.bundle.xz and
# held.bundle.xz (its `bundle` output), base/ (the model: config.json, tokenizer.json and, to
# continue it, model.safetensors) and a `flags` file of more infill_scale.train arguments, such as
# `--full --lr 8e-4 --batch 128 --warmup 200 --compile` (`--config IN/base/config.json` in it
# trains a new model of that shape instead of continuing base/). The cores write the dataset an
# epoch at a time (EPOCHS of them, fresh FIM holes each) while the model trains on each epoch as
# soon as it is written (--follow). OUT gets the run directory (OUT/run: train.log, checkpoints,
# the model or adapter, run.json) and the packer's log; `infill train --watch OUT/run` draws it.
set -euo pipefail
IN=$1 OUT=$2 MINUTES=$3
EPOCHS=${EPOCHS:-12}
SHARDS=${SHARDS:-$(($(nproc) > 2 ? $(nproc) - 2 : 1))}
SEQ_LEN=${SEQ_LEN:-512}
W=${WORK:-/tmp/infill-stream}
mkdir -p "$W/bundles" "$OUT"
unxz_to() { # xz where the machine has it, else Python's lzma
    if command -v xz >/dev/null; then xz -dc -T0 "$1" >"$2"; else
        python3 -c 'import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
    fi
}
unxz_to "$IN/corpus_export.xz" "$W/corpus_export" && chmod +x "$W/corpus_export"
unxz_to "$IN/train.bundle.xz" "$W/bundles/train.bundle"
unxz_to "$IN/held.bundle.xz" "$W/bundles/held.bundle"
# The shards of an epoch pack side by side on the cores (rayon), an epoch after another.
RAYON_NUM_THREADS=$SHARDS nice "$W/corpus_export" dataset "$W/bundles" "$IN/base" "$W/data" \
    --epochs "$EPOCHS" --shards "$SHARDS" --seq-len "$SEQ_LEN" >"$OUT/pack.log" 2>&1 &
packer=$!
model_args=(--model "$IN/base")
grep -q -- '--config' "$IN/flags" 2>/dev/null && model_args=()
# shellcheck disable=SC2046 # extra flags are words by design
PYTHONUNBUFFERED=1 PYTHONPATH="scale${PYTHONPATH:+:$PYTHONPATH}" python3 -m infill_scale.train \
    --data "$W/data" --follow "${model_args[@]}" --out "$OUT/run" --minutes "$MINUTES" \
    $(cat "$IN/flags" 2>/dev/null) >"$OUT/train.out" 2>&1 || status=$?
kill "$packer" 2>/dev/null || true
exit "${status:-0}"
