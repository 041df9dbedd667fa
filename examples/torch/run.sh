#!/usr/bin/env bash
# One training session on a machine with PyTorch but no Rust toolchain, such as a GPU machine lent
# for a session (assets/README.md, "Continuing it"), run from the repository's root there:
#
#   examples/torch/run.sh IN OUT MINUTES
#
# IN holds what travels: corpus_export.xz (the stripped `corpus_export` example binary, built for
# the same processor), train.bundle.xz and held.bundle.xz (its `bundle` output), and a folder
# model-NAME/ per model to train, each with a config.json and a `flags` file of more train.py
# arguments (`--init FILE` continues a model; `--lr`, `--batch`, `--warmup`, `--compile`). The
# cores pack FIM epochs from the bundle (a shard per core, one epoch after another, EPOCHS of them)
# while the models train side by side for MINUTES, each reading an epoch once it is packed. OUT
# gets each model's weights (bf16, in parts of at most 15 MiB for a trip that limits file sizes:
# `cat` joins them), saved every two minutes and at the end, and the logs.
set -euo pipefail
IN=$1 OUT=$2 MINUTES=$3
EPOCHS=${EPOCHS:-12}
SHARDS=${SHARDS:-$(($(nproc) - 2))}
W=${WORK:-/tmp/infill-gpu}
mkdir -p "$W/data" "$OUT"
unxz_to() { # xz where the machine has it, else Python's lzma
    if command -v xz >/dev/null; then xz -dc -T0 "$1" >"$2"; else
        python3 -c 'import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
    fi
}
unxz_to "$IN/corpus_export.xz" "$W/corpus_export" && chmod +x "$W/corpus_export"
unxz_to "$IN/train.bundle.xz" "$W/train.bundle"
unxz_to "$IN/held.bundle.xz" "$W/held.bundle"
TOKENIZER=assets/model
"$W/corpus_export" pack "$W/held.bundle" "$TOKENIZER" "$W/held.u16" --epoch 0

pack_epochs() {
    for k in $(seq 0 $((EPOCHS - 1))); do
        for i in $(seq 0 $((SHARDS - 1))); do
            (nice "$W/corpus_export" pack "$W/train.bundle" "$TOKENIZER" "$W/data/e$k.s$i.u16.tmp" \
                --epoch "$k" --shard "$i" --shards "$SHARDS" 2>/dev/null &&
                mv "$W/data/e$k.s$i.u16.tmp" "$W/data/e$k.s$i.u16") &
        done
        wait
        touch "$W/data/e$k.done"
        echo "packed epoch $k at $(date +%T)"
    done
    touch "$W/data/all.done"
}
pack_epochs >"$OUT/pack.log" 2>&1 &
packer=$!

trainers=()
for m in "$IN"/model-*/; do
    name=$(basename "$m")
    # shellcheck disable=SC2046 # extra flags are words by design
    PYTHONUNBUFFERED=1 python3 examples/torch/train.py --config "$m/config.json" \
        --data "$W/data" --held "$W/held.u16" --out "$OUT/$name.safetensors" --part-mb 15 \
        --minutes "$MINUTES" $(cat "$m/flags" 2>/dev/null) >"$OUT/$name.log" 2>&1 &
    trainers+=($!)
done
status=0
for t in "${trainers[@]}"; do wait "$t" || status=1; done
kill "$packer" 2>/dev/null || true
exit $status
