#!/usr/bin/env python3
"""Trains an infill model (Qwen2 layout, Hugging Face names) on a GPU with PyTorch.

infill trains on CPUs with Candle (`infill train`); a GPU machine with PyTorch and no Rust
toolchain can train far more tokens in minutes. This script reads the token streams that
`examples/corpus_export.rs` packs (infill's own corpus, FIM examples and tokenizer), so the task is
the one `infill train` sets; it writes `model.safetensors` in the layout infill loads.

    train.py --data DIR --config config.json --out OUT.safetensors --minutes 7
             [--init model.safetensors] [--lr 1e-3] [--batch 256] [--seq-len 512]

DIR holds `e{K}.s{I}.u16` streams and an `e{K}.done` marker per epoch K; the script takes epoch
0, 1, ... in turn, waiting for one that is still being packed, and cuts each into windows of
`seq-len + 1` tokens in a seeded order. The learning rate warms up over `--warmup` steps and
then follows a cosine over the wall-clock budget to a hundredth of its peak, so the run ends
cooled down whenever the budget ends. Weights are kept in f32 and computed in bf16; the saved
file is bf16, as infill ships it. Held-out loss (nats per token) on `--held` windows is printed
as the run goes.

`--score FILE --tokenizer tokenizer.json` instead prints the bits per token of a short file (up
to 511 tokens) after `<|file_sep|>`, which is what `infill score FILE` prints for the same weights:
a check that this forward pass is infill's.
"""

import argparse
import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, d = c["hidden_size"], c["head_dim"]
        self.heads, self.kv, self.d = c["num_attention_heads"], c["num_key_value_heads"], d
        self.q_proj = nn.Linear(h, self.heads * d, bias=True)
        self.k_proj = nn.Linear(h, self.kv * d, bias=True)
        self.v_proj = nn.Linear(h, self.kv * d, bias=True)
        self.o_proj = nn.Linear(self.heads * d, h, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        # Query head i reads KV head i // (heads / kv), as infill's decoder and HF's repeat_kv do.
        rep = self.heads // self.kv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.heads * self.d))


def rope(x, cos, sin):
    """Rotary positions in the rotate-half convention (HF's Qwen2, candle-nn's `rope`)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Mlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, i = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = Mlp(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class Qwen2(nn.Module):
    """Tied input and output embeddings, as infill's models are (no lm_head.weight)."""

    def __init__(self, c):
        super().__init__()
        if not c.get("tie_word_embeddings", False):
            sys.exit("config.json: this script trains tied-embedding models only")
        self.model = Body(c)
        d = c["head_dim"]
        inv = 1.0 / c["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        pos = torch.arange(c["max_position_embeddings"], dtype=torch.float64)
        freqs = torch.outer(pos, inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)

    def forward(self, ids):
        t = ids.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight)


def init_weights(model, layers):
    """GPT-2's: normal(0.02), residual projections scaled by 1/sqrt(2 * layers), zero biases."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            nn.init.ones_(p)
        elif name.endswith(".bias"):
            nn.init.zeros_(p)
        else:
            std = 0.02
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                std /= math.sqrt(2 * layers)
            nn.init.normal_(p, std=std)


def save(model, path, part_mb):
    """bf16 safetensors at `path`; with `part_mb`, as `path.part00`, `path.part01`, ... of at
    most that many MiB instead (`cat` joins them), for a trip that limits file sizes."""
    tensors = {
        k: v.detach().to(torch.bfloat16).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    tmp = os.path.join(tempfile.gettempdir(), os.path.basename(path) + f".{os.getpid()}.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    if not part_mb:
        shutil.move(tmp, path)
        return
    data = open(tmp, "rb").read()
    size = int(part_mb * 2**20)
    for old in glob.glob(path + ".part*"):
        os.remove(old)
    for i in range(0, len(data), size):
        with open(f"{path}.part{i // size:02d}", "wb") as f:
            f.write(data[i : i + size])
    os.remove(tmp)


def loss_of(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))


def windows(stream, seq_len):
    """Inputs and targets of consecutive windows, as `infill train` cuts a packed epoch."""
    n = (len(stream) - 1) // seq_len
    x = stream[: n * seq_len].reshape(n, seq_len)
    y = stream[1 : n * seq_len + 1].reshape(n, seq_len)
    return x, y


def read_epoch(data, k, deadline):
    """Epoch k's stream, waiting while it is packed; once the packer has finished (`all.done`),
    epochs past its last one repeat the ones it packed. None if the deadline passes first."""
    waited = time.time()
    while True:
        done = sorted(int(f[1:-5]) for f in os.listdir(data) if re.fullmatch(r"e\d+\.done", f))
        if k in done:
            break
        if done and os.path.exists(os.path.join(data, "all.done")):
            k = done[k % len(done)]
            break
        if time.time() >= deadline:
            return None
        time.sleep(0.2)
    if time.time() - waited > 1:
        print(f"waited {time.time() - waited:.1f} s for epoch {k}", flush=True)
    parts = sorted(glob.glob(os.path.join(data, f"e{k}.s*.u16")))
    return np.concatenate([np.fromfile(p, dtype="<u2") for p in parts]).astype(np.int64)


@torch.no_grad()
def held_loss(model, hx, hy, batch):
    model.eval()
    total = 0.0
    for i in range(0, len(hx), batch):
        x, y = hx[i : i + batch], hy[i : i + batch]
        with torch.autocast("cuda" if hx.is_cuda else "cpu", dtype=torch.bfloat16):
            total += loss_of(model, x, y).item() * len(x)
    model.train()
    return total / max(len(hx), 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--init", help="start from these weights (else a new model)")
    p.add_argument("--data")
    p.add_argument("--held", help="a .u16 stream of held-out windows to report loss on")
    p.add_argument("--held-windows", type=int, default=512, help="evenly spaced over --held")
    p.add_argument("--out")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--save-every", type=float, default=120.0, help="seconds")
    p.add_argument("--log-every", type=float, default=20.0, help="seconds")
    p.add_argument("--part-mb", type=float, help="save --out in parts of this many MiB")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--f32", action="store_true", help="compute in f32 (else bf16 autocast)")
    p.add_argument("--score", help="print bits per token of this short file and stop")
    p.add_argument("--tokenizer", help="tokenizer.json, for --score")
    a = p.parse_args()

    torch.manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    c = json.load(open(a.config))
    model = Qwen2(c)
    if a.init:
        state = {k: v.float() for k, v in load_file(a.init).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            sys.exit(f"{a.init}: missing {missing}, unexpected {unexpected}")
    else:
        init_weights(model, c["num_hidden_layers"])
    model.to(dev)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.2f}M parameters on {dev}", flush=True)

    if a.score:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(a.tokenizer)
        ids = tok.encode(open(a.score).read(), add_special_tokens=False).ids
        if not 0 < len(ids) < c["max_position_embeddings"]:
            most = c["max_position_embeddings"] - 1
            sys.exit(f"{a.score}: {len(ids)} tokens; --score takes files of 1 to {most}")
        seq = torch.tensor([[tok.token_to_id("<|file_sep|>")] + ids], device=dev)
        model.eval()
        with torch.no_grad():
            logp = torch.log_softmax(model(seq)[0, :-1].float(), dim=-1)
        bits = -logp[torch.arange(len(ids)), torch.tensor(ids)].mean().item() / math.log(2)
        print(f"{len(ids)} tokens, {bits:.4f} bits/token")
        return

    hx = hy = None
    if a.held:
        s = torch.from_numpy(np.fromfile(a.held, dtype="<u2").astype(np.int64))
        hx, hy = windows(s, a.seq_len)
        keep = torch.linspace(0, len(hx) - 1, min(len(hx), a.held_windows)).long()
        hx, hy = hx[keep].to(dev), hy[keep].to(dev)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=a.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=dev == "cuda",
    )
    step_fn = torch.compile(model) if a.compile else model
    budget = a.minutes * 60.0
    gen = torch.Generator(device="cpu").manual_seed(a.seed)
    epoch, x, y, order, at = 0, None, None, None, 0
    tokens, step = 0, 0
    if hx is not None:
        h = held_loss(model, hx, hy, a.batch)
        print(f"held-out loss {h:.4f} at start", flush=True)
    started = last_save = last_log = time.time()
    while True:
        elapsed = time.time() - started
        if elapsed >= budget:
            break
        if order is None or at + a.batch > len(order):
            s = read_epoch(a.data, epoch, started + budget)
            if s is None:
                break
            x, y = windows(torch.from_numpy(s), a.seq_len)
            x, y = x.to(dev), y.to(dev)
            order = torch.randperm(len(x), generator=gen).to(dev)
            print(f"epoch {epoch}: {x.numel() / 1e6:.1f}M tokens", flush=True)
            epoch, at = epoch + 1, 0
        idx = order[at : at + a.batch]
        at += a.batch
        frac = min(elapsed / budget, 1.0)
        lr = a.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))
        lr *= min(1.0, (step + 1) / a.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        def forward_backward(fn):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=not a.f32):
                loss = loss_of(fn, x[idx], y[idx])
            loss.backward()
            return loss

        try:
            loss = forward_backward(step_fn)
        except Exception as e:  # a failed compile falls back to the plain model
            if step_fn is model:
                raise
            why = f"{type(e).__name__}: {e}"
            print(f"torch.compile failed ({why}); continuing without it", flush=True)
            step_fn = model
            loss = forward_backward(step_fn)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += idx.numel() * a.seq_len
        now = time.time()
        if now - last_log >= a.log_every or step == 1:
            entry = {
                "step": step,
                "tokens": tokens,
                "seconds": round(now - started, 1),
                "loss": loss.item(),
                "grad_norm": norm.item(),
                "lr": lr,
                "tokens_per_s": tokens / (now - started),
            }
            if hx is not None:
                entry["held_out"] = held_loss(model, hx, hy, a.batch)
            print(json.dumps(entry), flush=True)
            last_log = now
        if a.out and now - last_save >= a.save_every:
            save(model, a.out, a.part_mb)
            last_save = now
    summary = {"steps": step, "tokens": tokens, "seconds": time.time() - started, "epochs": epoch}
    if hx is not None:
        summary["held_out"] = held_loss(model, hx, hy, a.batch)
    print(json.dumps(summary), flush=True)
    if a.out:
        save(model, a.out, a.part_mb)


if __name__ == "__main__":
    main()
