#!/usr/bin/env python3
"""Writes a Qwen2 checkpoint of Qwen2.5-Coder-0.5B's (or -1.5B's) shape with random bf16 weights,
for timing and memory comparisons without a download (pure Python, no packages).

    python3 benches/random_checkpoint.py OUT_DIR [--shape 0.5b|1.5b] [--tokenizer tokenizer.json]

The tokenizer defaults to the test fixture's (a small vocabulary inside the 151,936 rows; the
weights, not the words, are what is measured). The values are one random block of bf16 numbers in
[-0.05, 0.05] repeated: the bytes a real checkpoint would have, not its knowledge.
"""

import argparse
import json
import pathlib
import random
import shutil
import struct

# hidden, intermediate, layers, vocabulary, heads, KV heads, head dimension.
SHAPES = {
    "0.5b": (896, 4864, 24, 151936, 14, 2, 64),
    "1.5b": (1536, 8960, 28, 151936, 12, 2, 128),
}
HIDDEN, INTER, LAYERS, VOCAB, HEADS, KV_HEADS, HEAD_DIM = SHAPES["0.5b"]


def tensors():
    yield "model.embed_tokens.weight", (VOCAB, HIDDEN)
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        yield p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)
        yield p + "self_attn.q_proj.bias", (HEADS * HEAD_DIM,)
        yield p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)
        yield p + "self_attn.k_proj.bias", (KV_HEADS * HEAD_DIM,)
        yield p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)
        yield p + "self_attn.v_proj.bias", (KV_HEADS * HEAD_DIM,)
        yield p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)
        yield p + "mlp.gate_proj.weight", (INTER, HIDDEN)
        yield p + "mlp.up_proj.weight", (INTER, HIDDEN)
        yield p + "mlp.down_proj.weight", (HIDDEN, INTER)
        yield p + "input_layernorm.weight", (HIDDEN,)
        yield p + "post_attention_layernorm.weight", (HIDDEN,)
    yield "model.norm.weight", (HIDDEN,)


def bf16(x):
    return struct.pack("<f", x)[2:4]


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument(
        "--tokenizer",
        type=pathlib.Path,
        default=root / "tests/fixtures/models/tiny-python/tokenizer.json",
    )
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.5b",
                    help="Qwen2.5-Coder-0.5B's shape (the default) or -1.5B's")
    args = ap.parse_args()
    global HIDDEN, INTER, LAYERS, VOCAB, HEADS, KV_HEADS, HEAD_DIM
    HIDDEN, INTER, LAYERS, VOCAB, HEADS, KV_HEADS, HEAD_DIM = SHAPES[args.shape]
    args.out.mkdir(parents=True, exist_ok=True)
    random.seed(0)
    block = b"".join(bf16(random.uniform(-0.05, 0.05)) for _ in range(32768))
    header, offset, sizes = {}, 0, []
    for name, shape in tensors():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
        sizes.append((name, 2 * n))
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(args.out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, nbytes in sizes:
            if name.endswith("norm.weight"):
                f.write(bf16(1.0) * (nbytes // 2))
                continue
            whole, rest = divmod(nbytes, len(block))
            for _ in range(whole):
                f.write(block)
            f.write(block[:rest])
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "eos_token_id": 0,
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=1))
    shutil.copy(args.tokenizer, args.out / "tokenizer.json")
    print(f"{args.out}: {offset / 1e9:.2f} GB of bf16 weights")


if __name__ == "__main__":
    main()
