#!/usr/bin/env bash
# infill against llama.cpp on the same GGUF files, side by side and interleaved (run by hand, not
# in CI; needs python3, cmake and a C++ compiler, and reaches PyPI once for llama.cpp's source).
#
#   benches/llamacpp.sh ROUNDS [WORKDIR]
#   LLAMACPP_SHAPE=1.5b LLAMACPP_TYPES="q8_0 q4_k" benches/llamacpp.sh ROUNDS [WORKDIR]
#
# llama.cpp is built from source at a pinned version: the copy vendored in the llama-cpp-python
# 0.3.36 source distribution on PyPI (its sha256 is checked), built with GGML_NATIVE for this
# processor (AMX off). The model is Qwen2.5-Coder-0.5B's exact shape with random bf16 weights
# (benches/random_checkpoint.py), exported by infill to GGUF as F16, Q8_0 and Q4_K_M; each file is
# then run by llama-bench and by infill (`complete --json`), in turn, ROUNDS times: prompts of 512
# and 2,048 tokens, 64 tokens decoded at depth 0 and 1,024, and peak RSS. Also checks that
# llama.cpp tokenizes a text as infill does with each file.
set -euo pipefail
rounds=${1:-3}
work=${2:-$(mktemp -d)}
here=$(cd "$(dirname "$0")/.." && pwd)
infill=${INFILL_BIN:-$here/target/release/infill}
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
mkdir -p "$work"
cd "$work"

if [ ! -x llama.cpp/build/bin/llama-bench ]; then
    python3 - "$version" "$sha256" <<'EOF'
import hashlib, re, sys, urllib.parse, urllib.request
version, pinned = sys.argv[1], sys.argv[2]
# The simple index (PEP 503), which mirrors and proxies serve as well as PyPI itself.
index = "https://pypi.org/simple/llama-cpp-python/"
html = urllib.request.urlopen(index, timeout=60).read().decode()
name = re.escape(f"llama_cpp_python-{version}.tar.gz")
url = re.search(f'href="([^"]*{name}[^"]*)"', html).group(1)
data = urllib.request.urlopen(urllib.parse.urljoin(index, url), timeout=600).read()
if hashlib.sha256(data).hexdigest() != pinned:
    sys.exit(f"llama-cpp-python {version}: the download's sha256 is not the pinned {pinned}")
open("llama-cpp-python.tar.gz", "wb").write(data)
EOF
    tar xzf llama-cpp-python.tar.gz
    rm -rf llama.cpp && mv "llama_cpp_python-$version/vendor/llama.cpp" llama.cpp
    # Native code for this processor, without AMX: a processor can report AMX that its kernel or
    # hypervisor does not enable (ggml then dies of an illegal instruction).
    noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake -S llama.cpp -B llama.cpp/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DGGML_NATIVE=ON -DCMAKE_C_FLAGS="$noamx" -DCMAKE_CXX_FLAGS="$noamx" \
        -DLLAMA_BUILD_TESTS=OFF >/dev/null
    cmake --build llama.cpp/build -j"$(nproc)" --target llama-bench llama-tokenize >/dev/null
fi
# LLAMACPP_BIN: another build of the same source (an AVX2-only one, say), relative to WORKDIR.
bin=${LLAMACPP_BIN:-llama.cpp/build/bin}

shape=${LLAMACPP_SHAPE:-0.5b}
types=${LLAMACPP_TYPES:-f16 q8_0 q4_k}
name=q${shape//[.b]/}
[ -f "$name/model.safetensors" ] || python3 "$here/benches/random_checkpoint.py" "$name" --shape "$shape"
for t in $types; do
    [ -f "$name-$t.gguf" ] || "$infill" models export --model "$name" --out "$name-$t.gguf" --dtype "$t"
done

# The same text tokenized by llama.cpp and by infill (`infill score --json` lists its tokens).
printf 'fn main() {\n    let values = vec![1, 2, 3];\n    println!("{}", values.len());\n}\n' > sample.rs
for t in $types; do
    theirs=$(llama.cpp/build/bin/llama-tokenize -m "$name-$t.gguf" -f sample.rs --ids --no-bos --log-disable 2>/dev/null | tail -1)
    ours=$("$infill" score sample.rs --model "$name-$t.gguf" --json | python3 -c \
        "import json, sys; print([t['id'] for t in json.load(sys.stdin)['tokens']])")
    if [ "$theirs" = "$ours" ]; then same=same; else same="DIFFERENT: $theirs vs $ours"; fi
    echo "$name-$t.gguf: llama.cpp and infill tokenize a sample alike: $same"
done

# One line per measure: prompts of 512 and 2,048 tokens, decoding 64 tokens at depth 0 and 1,024,
# peak RSS (the 512-token run's). llama.cpp: llama-bench. infill: `complete --json` on windows
# that give those prompts (its decoding depth is the prompt's length).
infill_run() { # CONTEXT MAX_TOKENS -> "prompt_tokens prompt_tok/s decode_tok/s rss_mib"
    local err out rss
    err=$(mktemp)
    out=$(/usr/bin/time -f "%M" "$infill" complete --model "$model" --file "$here/src/model/llama.rs" \
        --line 600 --column 1 --max-tokens "$2" --context "$1" --no-trim --json 2>"$err")
    rss=$(tail -1 "$err")
    rm -f "$err"
    echo "$out" | python3 -c "
import json, sys
t = json.load(sys.stdin)['timings']
print(t['prompt_tokens'], round(t['prompt_tokens'] / t['prefill_ms'] * 1000), round(t['tokens_per_s'], 1), round($rss / 1024))"
}
for r in $(seq "$rounds"); do
    for t in $types; do
        model=$name-$t.gguf
        err=$(mktemp)
        if ! pp=$(/usr/bin/time -f "%M" "$bin/llama-bench" -m "$model" -p 512,2048 -n 0 -t 2 -r 1 -o json 2>"$err"); then
            echo "round $r  llama.cpp $model: failed: $(tail -2 "$err" | tr '\n' ' ')"
            continue
        fi
        rss=$(tail -1 "$err")
        tg=$("$bin/llama-bench" -m "$model" -p 0 -n 64 -d 0,1024 -t 2 -r 1 -o json 2>/dev/null)
        rm -f "$err"
        python3 -c "
import json, sys
pp, tg = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rate = lambda runs, key, n: next(r['avg_ts'] for r in runs if r[key] == n and (key != 'n_gen' or r['n_prompt'] == 0))
print(f\"round $r  llama.cpp $model: prompt 512 {rate(pp, 'n_prompt', 512):.0f} tok/s, 2048 {rate(pp, 'n_prompt', 2048):.0f}; \"
      f\"decoding at depth 0 {next(x['avg_ts'] for x in tg if x.get('n_depth', 0) == 0):.1f} tok/s, \"
      f\"1024 {next(x['avg_ts'] for x in tg if x.get('n_depth', 0) == 1024):.1f}; peak RSS {$rss / 1024:.0f} MiB\")" "$pp" "$tg"
        read -r _ _ tg0 _ <<< "$(infill_run 80 64)"
        read -r n512 pp512 _ rss512 <<< "$(infill_run 576 64)"
        read -r _ _ tg1024 _ <<< "$(infill_run 1088 64)"
        read -r n2048 pp2048 _ _ <<< "$(infill_run 2112 1)"
        echo "round $r  infill    $model: prompt $n512 $pp512 tok/s, $n2048 $pp2048; decoding at depth 0 $tg0 tok/s, 1024 $tg1024; peak RSS $rss512 MiB"
    done
done
