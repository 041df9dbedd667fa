"""PyTorch's training throughput on the configuration of benches/train.rs, for the side-by-side
comparison in README (PyTorch is not a dependency of infill).

    pip install torch==2.15.0 transformers==5.24.0 && python3 benches/train_torch.py

`INFILL_BENCH_TORCH=1 cargo bench --bench train` runs it after each of infill's runs and prints the
ratio; INFILL_BENCH_BATCH sets the sequences per step for both (default 4).
"""

import os
import time

import torch
import transformers

torch.manual_seed(0)
threads = torch.get_num_threads()
cfg = transformers.Qwen2Config(
    vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=8,
    num_key_value_heads=8, max_position_embeddings=512, tie_word_embeddings=True,
)
model = transformers.Qwen2ForCausalLM(cfg)
model.train()
params = [p for p in model.parameters()]
opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)


batch = int(os.environ.get("INFILL_BENCH_BATCH", "4"))


def step():
    x = torch.randint(0, 8192, (batch, 257))
    logits = model(x[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 8192), x[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(loss)


for _ in range(2):
    step()
steps = 40 // batch + 2
t = time.time()
for _ in range(steps):
    loss = step()
secs = time.time() - t
n = sum(p.numel() for p in params)
print(f"pytorch {n / 1e6:.2f}M params, {batch}x256 tokens/step: {steps * batch * 256 / secs:.0f} tokens/s "
      f"({secs * 1e3 / steps:.0f} ms/step, {threads} threads, attention {cfg._attn_implementation}, final loss {loss:.3f})")
