#!/usr/bin/env bash
# The scale-out loop on a GPU machine, in well under ten minutes, run from the repository's root:
#
#   scale/gpu_check.sh OUT
#
# What travels besides the repository: target/gpu-check/ as `scale/gpu_bundle.sh` makes it (the
# infill binary built here, and wheels of transformers, accelerate and peft with their
# dependencies, for a machine that has PyTorch but no network). The machine needs no Rust.
#
# 1. `infill train --export` of this repository for the built-in model's tokenizer;
# 2. a Qwen2.5-Coder-0.5B-shaped model (transformers' own initialisation, bf16, the built-in
#    tokenizer's ids inside its 151,936 rows) fine-tuned with LoRA in bf16 for STEPS_05B steps:
#    tokens/s and memory on this GPU; then imported (the adapter merged by infill), and infill's
#    log-probabilities of a file against transformers' on the merged model;
# 3. the same model fully trained for a few steps under FSDP (accelerate's, one process);
# 4. the built-in model fine-tuned on the GPU (LoRA), imported, and `infill eval` against the
#    built-in model on this repository's held-out files: the gain a person would see;
# 5. where the bundle has infill built with `--features cuda`: its log-probabilities of the same
#    file with `--device cuda` against the CPU build's, on the merged 0.5B model (f32 and bf16) and
#    a GGUF export of it (Q8_0), a completion, and `infill train --device cuda` for a few steps.
#
# Every stage logs to OUT; a stage that fails is reported and the next one still runs. SMALL=1
# runs the same stages on a tiny shape on CPUs (to check the script where there is no GPU).
set -uo pipefail
OUT=${1:?usage: scale/gpu_check.sh OUT}
B=target/gpu-check
INFILL=${INFILL:-$B/infill}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/check.log") 2>&1
status=0
stage() { # name, then the command; its time and exit status go to the log
    local name=$1 started=$SECONDS rc=0
    shift
    echo "== $name"
    "$@" || rc=$?
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    ((rc == 0)) || status=1
    return 0
}

if ! python3 -c 'import transformers, peft, accelerate' 2>/dev/null; then
    python3 -m pip install -q --no-index --find-links "$B/wheels" transformers peft accelerate ||
        { echo "transformers, peft and accelerate are missing and the wheels did not install"; exit 2; }
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c 'import torch, transformers, peft, accelerate as a
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__,
      "peft", peft.__version__, "accelerate", a.__version__)'
chmod +x "$INFILL"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/scale${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ ${SMALL:-0} == 1 ]]; then
    SHAPE="hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2"
    STEPS_05B=${STEPS_05B:-4} STEPS_FSDP=2 STEPS_BUILTIN=${STEPS_BUILTIN:-4} BATCH=4 MICRO=2 TASKS=20
else
    SHAPE="hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2"
    STEPS_05B=${STEPS_05B:-150} STEPS_FSDP=20 STEPS_BUILTIN=${STEPS_BUILTIN:-300} BATCH=32 MICRO=16 TASKS=300
fi

stage export "$INFILL" train --export "$OUT/data" --repo . --init assets/model --seq-len 512 --epochs 4

stage base-0.5b python3 - "$OUT/base05" <<EOF
import shutil, sys, torch
from transformers import AutoModelForCausalLM, Qwen2Config
out = sys.argv[1]
config = Qwen2Config($SHAPE, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                     tie_word_embeddings=True, eos_token_id=0, rms_norm_eps=1e-6)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained(out, safe_serialization=True)
shutil.copyfile("assets/model/tokenizer.json", out + "/tokenizer.json")
print(sum(p.numel() for p in model.parameters()) / 1e6, "M parameters")
EOF

train() { (cd scale && python3 -m infill_scale.train "$@"); }
stage lora-0.5b train --data "$OUT/data" --model "$OUT/base05" --out "$OUT/lora05" --lora \
    --steps "$STEPS_05B" --batch "$BATCH" --micro-batch "$MICRO" --lr 1e-3 --eval-every 50
python3 - "$OUT/lora05/train.log" <<'EOF' || true
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
steps = [l for l in lines if l["event"] == "step"][5:]
if steps:
    print("LoRA 0.5B: median tokens/s", sorted(s["tokens_per_s"] for s in steps)[len(steps) // 2])
EOF
python3 -c 'import torch; print("peak GPU memory", torch.cuda.max_memory_allocated() / 2**30, "GiB (this process)")' 2>/dev/null || true

stage import-0.5b "$INFILL" models import "$OUT/lora05" --out "$OUT/merged05"
stage logits-0.5b python3 - "$OUT" "$INFILL" <<'EOF'
import json, os, subprocess, sys, torch
from peft import PeftModel
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM
out, infill = sys.argv[1], sys.argv[2]
text = open("src/text.rs").read()[:1500]
path = os.path.join(out, "probe.rs")
open(path, "w").write(text)
tok = Tokenizer.from_file("assets/model/tokenizer.json")
ids = [tok.token_to_id("<|file_sep|>")] + tok.encode(text, add_special_tokens=False).ids
model = AutoModelForCausalLM.from_pretrained(out + "/base05", dtype=torch.float32)
model = PeftModel.from_pretrained(model, out + "/lora05/adapter").merge_and_unload()
with torch.no_grad():
    lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
want = [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
got = json.loads(subprocess.run([infill, "score", path, "--json", "--model", out + "/merged05", "--dtype", "f32"],
                                capture_output=True, text=True, check=True).stdout)["tokens"]
diff = max(abs(g["logprob"] - w) for g, w in zip(got, want))
# The merged weights are stored in bf16 as the base is: the tolerance is bf16's rounding.
print(f"infill vs transformers on the merged 0.5B model: {len(want)} tokens, max |logprob diff| {diff:.2e}")
sys.exit(0 if len(got) == len(want) and diff < 5e-2 else 1)
EOF

fsdp() { # accelerate's FSDP on the GPU (on CPUs accelerate runs it as one plain process)
    env ACCELERATE_USE_FSDP=true FSDP_VERSION=2 FSDP_AUTO_WRAP_POLICY=TRANSFORMER_BASED_WRAP \
        FSDP_STATE_DICT_TYPE=FULL_STATE_DICT bash -c "cd scale && accelerate launch --num_processes 1 \
        -m infill_scale.train --data '$OUT/data' --model '$OUT/base05' --out '$OUT/fsdp05' --full \
        --steps $STEPS_FSDP --batch $BATCH --micro-batch $MICRO --eval-every 1000 --gradient-checkpointing" |
        tee "$OUT/fsdp.out"
    [[ ${SMALL:-0} == 1 ]] || grep -q ', fsdp,' "$OUT/fsdp.out"
}
stage fsdp-0.5b fsdp

stage lora-builtin train --data "$OUT/data" --model ../assets/model --out "$OUT/lora-builtin" --lora \
    --steps "$STEPS_BUILTIN" --batch "$BATCH" --micro-batch "$BATCH" --lr 1e-3 --eval-every 100
stage import-builtin "$INFILL" models import "$OUT/lora-builtin" --out "$OUT/builtin-tuned"
stage eval-builtin "$INFILL" eval --repo . --model "$OUT/builtin-tuned" --baseline assets/model \
    --tasks "$TASKS" --json "$OUT/eval.json"
cuda() { # infill's own kernels on the GPU against its CPU kernels
    local gpu=$OUT/infill-cuda probe=$OUT/probe.rs model dtype
    xz -dc "$B/infill-cuda.xz" >"$gpu" && chmod +x "$gpu" || return 1
    # The CUDA 13 libraries it links: the toolkit's, or those PyTorch's wheels bring.
    local torch_libs
    torch_libs=$(python3 -c 'import glob, os, nvidia
print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(d + "/**/lib*.so*", recursive=True)})))' 2>/dev/null)
    export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${torch_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    ldd "$gpu" | grep 'not found' && return 1
    "$INFILL" models export --model "$OUT/merged05" --format gguf --dtype q8_0 \
        --out "$OUT/merged05.gguf" ||
        return 1
    for model in "$OUT/merged05:f32" "$OUT/merged05:bf16" "$OUT/merged05.gguf:auto"; do
        dtype=${model##*:} model=${model%:*}
        python3 - "$INFILL" "$gpu" "$probe" "$model" "$dtype" <<'EOF' || return 1
import json, subprocess, sys, time
cpu, gpu, probe, model, dtype = sys.argv[1:]
def score(binary, device):
    started = time.time()
    out = subprocess.run([binary, "score", probe, "--json", "--model", model, "--dtype", dtype,
                          "--device", device], capture_output=True, text=True, check=True).stdout
    return [t["logprob"] for t in json.loads(out)["tokens"]], time.time() - started
want, cpu_s = score(cpu, "cpu")
got, gpu_s = score(gpu, "cuda")
diff = max(abs(a - b) for a, b in zip(got, want))
# f32 on both sides differs by summation order only; bf16 and Q8_0 round differently on each.
bound = 1e-3 if dtype == "f32" else 0.1
print(f"{model} --dtype {dtype}: {len(want)} tokens, cuda against cpu max |logprob diff| {diff:.2e} "
      f"(bound {bound}); {gpu_s:.1f} s on the GPU, {cpu_s:.1f} s on the CPU")
sys.exit(0 if len(got) == len(want) and diff < bound else 1)
EOF
    done
    "$gpu" complete --file "$probe" --line 20 --column 1 --model "$OUT/merged05" --device cuda \
        --json --max-tokens 32 || return 1
    "$gpu" train --repo . --init assets/model --out "$OUT/cuda-train" --device cuda --steps 20 \
        --eval-every 10 --plain
}
if [[ -f $B/infill-cuda.xz ]]; then
    stage cuda cuda
else
    echo "== cuda: skipped (the bundle has no infill-cuda; gpu_bundle.sh builds it where nvcc is)"
fi
echo "== done: $([[ $status == 0 ]] && echo all stages passed || echo some stage failed)"
exit $status
