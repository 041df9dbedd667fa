#!/usr/bin/env bash
# infill against llama.cpp on the same GGUF files, side by side and interleaved (run by hand, not
# in CI; needs python3, cmake and a C++ compiler, and reaches PyPI once for llama.cpp's source).
#
#   benches/llamacpp.sh ROUNDS [WORKDIR]
#
# llama.cpp is built from source at a pinned version: the copy vendored in the llama-cpp-python
# 0.3.36 source distribution on PyPI (its sha256 is checked), built with GGML_NATIVE for this
# processor (AMX off). The model is Qwen2.5-Coder-0.5B's exact shape with random bf16 weights
# (benches/random_checkpoint.py), exported by infill to GGUF as F16, Q8_0 and Q4_K_M; each file is
# then run by `llama-bench -p 512 -n 64 -t 2 -r 2` and by infill (`complete --json` with a 512-token
# window and 64 generated tokens), in turn, ROUNDS times. Prints prompt and decoding tokens/s and
# peak RSS for each; also checks that llama.cpp tokenizes a text as infill does with each file.
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
bin=llama.cpp/build/bin

[ -f q05/model.safetensors ] || python3 "$here/benches/random_checkpoint.py" q05
for t in f16 q8_0 q4_k; do
    [ -f "q05-$t.gguf" ] || "$infill" models export --model q05 --out "q05-$t.gguf" --dtype "$t"
done

# The same text tokenized by llama.cpp and by infill (`infill score --json` lists its tokens).
printf 'fn main() {\n    let values = vec![1, 2, 3];\n    println!("{}", values.len());\n}\n' > sample.rs
for t in f16 q8_0 q4_k; do
    theirs=$("$bin/llama-tokenize" -m "q05-$t.gguf" -f sample.rs --ids --no-bos --log-disable 2>/dev/null | tail -1)
    ours=$("$infill" score sample.rs --model "q05-$t.gguf" --json | python3 -c \
        "import json, sys; print([t['id'] for t in json.load(sys.stdin)['tokens']])")
    if [ "$theirs" = "$ours" ]; then same=same; else same="DIFFERENT: $theirs vs $ours"; fi
    echo "q05-$t.gguf: llama.cpp and infill tokenize a sample alike: $same"
done

for r in $(seq "$rounds"); do
    for t in f16 q8_0 q4_k; do
        err=$(mktemp)
        if ! out=$(/usr/bin/time -f "%M" "$bin/llama-bench" -m "q05-$t.gguf" -p 512 -n 64 -t 2 -r 2 -o json 2>"$err"); then
            echo "round $r  llama.cpp q05-$t.gguf: failed: $(tail -2 "$err" | tr '\n' ' ')"
        else
            rss=$(tail -1 "$err")
            echo "$out" | python3 -c "
import json, sys
runs = json.load(sys.stdin)
pp = next(r for r in runs if r['n_prompt'] > 0)
tg = next(r for r in runs if r['n_gen'] > 0)
print(f\"round $r  llama.cpp q05-$t.gguf: prompt 512 at {pp['avg_ts']:.0f} tok/s, decoding {tg['avg_ts']:.1f} tok/s, peak RSS {$rss / 1024:.0f} MiB\")"
        fi
        out=$(/usr/bin/time -f "%M" "$infill" complete --model "q05-$t.gguf" --file "$here/src/text.rs" \
            --line 40 --column 5 --max-tokens 64 --context 576 --no-trim --json 2>"$err")
        rss=$(tail -1 "$err")
        rm -f "$err"
        echo "$out" | python3 -c "
import json, sys
t = json.load(sys.stdin)['timings']
print(f\"round $r  infill    q05-$t.gguf: prompt {t['prompt_tokens']} at {t['prompt_tokens'] / t['prefill_ms'] * 1000:.0f} tok/s, \"
      f\"decoding {t['tokens_per_s']:.1f} tok/s, peak RSS {$rss / 1024:.0f} MiB\")"
    done
done
