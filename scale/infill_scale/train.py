"""Fine-tunes a Hugging Face model (or trains one from a config) on an infill dataset.

    python -m infill_scale.train --data DATASET --model BASE --out RUN_DIR [--lora | --full]
    accelerate launch [--num_processes N] -m infill_scale.train ...      (1..N GPUs, DDP)
    accelerate launch --use_fsdp ... -m infill_scale.train --full ...   (models over one GPU)
    torchrun --nproc_per_node N -m infill_scale.train ...

DATASET is what `infill train --export DATASET --init BASE --repo ...` wrote; the model's
tokenizer is checked against it before anything starts. The model is transformers' own class
for BASE's config (AutoModelForCausalLM); LoRA through peft, or every weight with --full.

RUN_DIR gets, as it goes:
- train.log: infill's JSON lines (start, step, end), so `infill train --watch RUN_DIR` draws the
  run on the infill side, from another terminal or machine;
- checkpoints/step-N/: the model, optimizer and data position; `--resume` continues from the
  newest, and SIGTERM or Ctrl-C (a preemption) writes one before the run stops;
- at the end, adapter/ (LoRA: adapter_config.json, adapter_model.safetensors) or model/ (--full:
  an HF model directory), and run.json, which `infill models import RUN_DIR --out MODEL` reads.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import Dataset, DatasetError

RUN_FORMAT = "infill-run"
KEEP_CHECKPOINTS = 2
REPLAN_EVERY = 25


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m infill_scale.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the dataset directory infill train --export wrote")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="the base model: an HF model directory or hub id")
    src.add_argument("--config", help="train a new model of this config.json (with --full)")
    p.add_argument("--out", required=True, help="the run directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lora", action="store_true", help="train a LoRA adapter (the default)")
    mode.add_argument("--full", action="store_true", help="train every weight")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                   help="comma-separated module names, or all-linear")
    p.add_argument("--steps", type=int, help="optimizer steps (default: one pass over the dataset's epochs)")
    p.add_argument("--minutes", type=float, help="stop after about this many minutes; the schedule ends then")
    p.add_argument("--batch", type=int, default=32, help="sequences per optimizer step, over all processes")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per forward pass in one process")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the dataset's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-4 LoRA, 3e-5 full, 1e-3 new)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast on a GPU that has it, fp32 otherwise")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory, about a third slower")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--seed", type=int, default=0, help="initialisation and dropout (the data order is the dataset's)")
    p.add_argument("--save-dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="--full: the weights' type in model/ (auto: the base's)")
    p.add_argument("--verify", action="store_true", help="check every dataset file against its hash first")
    p.add_argument("--follow", action="store_true",
                   help="train on an export still being written: each epoch once its shards are written")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (faster steps after a warm-up)")
    args = p.parse_args(argv)
    if args.config and not args.full:
        args.full = True
    if args.batch < 1 or args.micro_batch < 1:
        p.error("--batch and --micro-batch must be at least 1")
    return args


class Stop:
    """Set by SIGTERM or SIGINT: the loop checkpoints and ends at the step's end."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, *_):
        self.requested = True


def lr_at(step, total, peak, warmup):
    """Linear warm-up, then a cosine to a tenth of the peak at `total` (infill's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak / 10
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))


def load_model(args, ds, accelerator):
    from transformers import AutoConfig, AutoModelForCausalLM

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if args.config:
        config = AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(args.config)))
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        torch.manual_seed(args.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tokenizer_dir = args.data
        base = os.path.abspath(args.config)
    else:
        stored = stored_dtype(args.model, offline)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=offline)
        tokenizer_dir = args.model if os.path.isdir(args.model) else snapshot_dir(args.model, offline)
        base = os.path.abspath(args.model) if os.path.isdir(args.model) else args.model
    # The type the base stores its weights in, for --save-dtype auto (training runs in f32).
    args.stored_bf16 = "bfloat16" in str(stored)
    vocab = model.get_input_embeddings().weight.shape[0]
    how = ds.check_tokenizer(tokenizer_dir, vocab)
    accelerator.print(f"tokenizer: {how} as the dataset's ({ds.manifest['settings']['model']})")
    if args.full:
        origin = f"full fine-tune of {base}" if args.model else f"new model of {base}"
    else:
        from peft import LoraConfig, get_peft_model

        targets = args.lora_targets if args.lora_targets == "all-linear" else args.lora_targets.split(",")
        torch.manual_seed(args.seed)
        model = get_peft_model(model, LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
            target_modules=targets, task_type="CAUSAL_LM"))
        origin = f"LoRA r={args.lora_r} of {base}"
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not args.full:
            model.enable_input_require_grads()
    return model, base, origin


def stored_dtype(model, offline):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, local_files_only=offline)
    return getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)


def snapshot_dir(repo_id, offline):
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, allow_patterns=["tokenizer.json", "config.json"], local_files_only=offline)


def batch_tensors(windows, device):
    """Inputs and targets of windows (the last ones of an epoch may be shorter: padded, and the
    padding's targets ignored)."""
    length = max(len(w) for w in windows) - 1
    inputs = torch.zeros((len(windows), length), dtype=torch.long)
    targets = torch.full((len(windows), length), -100, dtype=torch.long)
    for row, w in enumerate(windows):
        t = torch.from_numpy(np.asarray(w, dtype=np.int64))
        inputs[row, :len(t) - 1] = t[:-1]
        targets[row, :len(t) - 1] = t[1:]
    return inputs.to(device), targets.to(device)


def token_nats(model, inputs, targets):
    """Sum of the cross-entropy (nats) over the targets, and their count."""
    logits = model(input_ids=inputs).logits.float()
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return nats, int((targets != -100).sum())


def evaluate(model, ds, args, accelerator):
    """Held-out loss and bits per byte, overall and by language, on infill's sample of windows;
    the windows are split over the processes and the sums added up."""
    sample, extra = ds.held_sample(args.eval_windows, seq_len=args.seq_len)
    windows = sample + extra
    if not windows:
        return {"loss": 0.0, "bits_per_byte": 0.0, "tokens": 0}
    stats = torch.zeros((len(windows), 3), dtype=torch.float64, device=accelerator.device)
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        for i in range(accelerator.process_index, len(windows), accelerator.num_processes):
            inputs, targets = batch_tensors([windows[i].ids], accelerator.device)
            nats, n = token_nats(model, inputs, targets)
            stats[i] = torch.tensor([float(nats), n, windows[i].bytes], dtype=torch.float64)
    model.train()
    stats = accelerator.reduce(stats, reduction="sum").cpu().numpy()

    def figure(rows):
        nats, tokens, nbytes = rows[:, 0].sum(), rows[:, 1].sum(), rows[:, 2].sum()
        return nats / max(tokens, 1), nats / math.log(2) / max(nbytes, 1), int(tokens)

    loss, bpb, tokens = figure(stats[:len(sample)])
    out = {"loss": loss, "bits_per_byte": bpb, "tokens": tokens, "by_language": []}
    for language in dict.fromkeys(w.language for w in windows):
        rows = stats[[i for i, w in enumerate(windows) if w.language == language]]
        _, bpb, tokens = figure(rows)
        out["by_language"].append({"language": language, "bits_per_byte": bpb, "tokens": tokens})
    return out


class Log:
    """train.log in infill's format (src/train/log.rs), written by the main process."""

    def __init__(self, path, main):
        self.file = open(path, "a", encoding="utf-8") if main else None

    def write(self, **line):
        if self.file:
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()
            print(json.dumps(line), file=sys.stderr, flush=True)


def newest_checkpoint(out):
    root = os.path.join(out, "checkpoints")
    steps = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if name.startswith("step-") and os.path.exists(os.path.join(root, name, "position.json")):
            steps.append(int(name[5:]))
    return os.path.join(root, f"step-{max(steps)}") if steps else None


def save_checkpoint(accelerator, out, state):
    """checkpoints/step-N, written beside and renamed into place, so a kill halfway leaves the
    previous one whole; the oldest beyond KEEP_CHECKPOINTS go."""
    root = os.path.join(out, "checkpoints")
    final = os.path.join(root, f"step-{state['step']}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "position.json"), "w") as f:
            json.dump(state, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted((int(n[5:]) for n in os.listdir(root) if n.startswith("step-") and n[5:].isdigit()))
        for step in old[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(os.path.join(root, f"step-{step}"), ignore_errors=True)
    accelerator.wait_for_everyone()


def save_result(accelerator, model, args, ds, base, out, state, before, after):
    unwrapped = accelerator.unwrap_model(model)
    kind = "model" if args.full else "adapter"
    target = os.path.join(out, kind)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        shutil.rmtree(target, ignore_errors=True)
    if args.full and (args.save_dtype == "bf16" or args.save_dtype == "auto" and args.stored_bf16):
        state_dict = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state_dict.items()}
    if args.full:
        unwrapped.config.dtype = unwrapped.config.torch_dtype = (
            "bfloat16" if next(iter(state_dict.values())).dtype == torch.bfloat16 else "float32")
        unwrapped.save_pretrained(target, is_main_process=accelerator.is_main_process, state_dict=state_dict,
                                  save_function=accelerator.save, safe_serialization=True)
    else:
        unwrapped.save_pretrained(target, is_main_process=accelerator.is_main_process, state_dict=state_dict,
                                  safe_serialization=True)
    if accelerator.is_main_process:
        shutil.copyfile(os.path.join(args.data, "tokenizer.json"), os.path.join(target, "tokenizer.json"))
        run = {
            "format": RUN_FORMAT,
            "version": 1,
            "mode": "full" if args.full else "lora",
            "base": None if args.config else base,
            "output": kind,
            "dataset": os.path.abspath(args.data),
            "dataset_model": ds.manifest["settings"]["model"],
            "steps": state["step"],
            "tokens_seen": state["tokens_seen"],
            "held_out_before": before,
            "held_out_after": after,
        }
        with open(os.path.join(out, "run.json"), "w") as f:
            json.dump(run, f, indent=2)
    accelerator.wait_for_everyone()


def main(argv=None):
    args = parse_args(argv)
    from accelerate import Accelerator

    if args.precision == "auto":
        args.precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    # Without a GPU, processes launched side by side (torchrun, accelerate launch) are one CPU run
    # over gloo.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision="bf16" if args.precision == "bf16" else "no")
    try:
        ds = Dataset(args.data, verify=args.verify, follow=args.follow)
    except DatasetError as e:
        accelerator.print(f"infill_scale: {e}")
        return 2
    args.seq_len = args.seq_len or ds.seq_len
    world, rank = accelerator.num_processes, accelerator.process_index
    if args.batch % world:
        accelerator.print(f"infill_scale: --batch {args.batch} does not split over {world} processes")
        return 2
    per_rank = args.batch // world
    accelerator.print(f"{world} process(es), {accelerator.distributed_type.value.lower()}, "
                      f"{args.precision}, on {accelerator.device.type}")
    os.makedirs(args.out, exist_ok=True)
    checkpoint = newest_checkpoint(args.out) if args.resume else None
    if args.resume and checkpoint is None:
        accelerator.print(f"infill_scale: {args.out} has no checkpoint to resume from")
        return 2
    if not args.resume:
        taken = [f for f in ("train.log", "checkpoints", "adapter", "model", "run.json")
                 if os.path.exists(os.path.join(args.out, f))]
        if taken and not args.overwrite:
            accelerator.print(f"infill_scale: {args.out} already holds a run ({', '.join(taken)}); "
                              f"pass --resume to continue it or --overwrite to replace it")
            return 2
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for f in taken:
                path = os.path.join(args.out, f)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        accelerator.wait_for_everyone()
    try:
        model, base, origin = load_model(args, ds, accelerator)
    except DatasetError as e:
        accelerator.print(f"infill_scale: {e}")
        return 2
    except (OSError, ValueError) as e:
        # transformers' own messages (a missing folder, a hub id not cached offline, a bad config).
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        accelerator.print(f"infill_scale: cannot load {args.model or args.config}: {first}")
        return 2
    if args.compile:
        model = torch.compile(model)
    peak = args.lr or (3e-5 if args.full and args.model else 1e-3 if args.full else 2e-4)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=peak, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    windows = ds.windows_per_epoch(args.seq_len)
    state = {"step": 0, "steps": args.steps or max(1, windows * ds.epochs // args.batch),
             "epoch": 0, "next": 0, "tokens_seen": 0, "elapsed_s": 0.0}
    if checkpoint:
        accelerator.load_state(checkpoint)
        with open(os.path.join(checkpoint, "position.json")) as f:
            saved = json.load(f)
        state.update(saved)
        if args.steps:
            state["steps"] = args.steps
        accelerator.print(f"resuming at step {state['step']} from {checkpoint}")
    log = Log(os.path.join(args.out, "train.log"), accelerator.is_main_process)
    stop = Stop()
    trace = os.environ.get("INFILL_SCALE_TRACE")
    trace = open(f"{trace}.rank{rank}", "a") if trace else None

    started = time.time()
    run_elapsed = state["elapsed_s"]
    before = evaluate(model, ds, args, accelerator)
    # The run's first figure, kept across --resume for run.json.
    state.setdefault("held_out_before", before)
    log.write(event="start", step=state["step"], steps=state["steps"], tokens_seen=state["tokens_seen"],
              elapsed_s=run_elapsed, origin=origin, eval_every=args.eval_every,
              checkpoint_every=args.checkpoint_every, checkpoint_interval_s=args.checkpoint_minutes * 60,
              held_out=before)
    last_checkpoint = time.time()
    session_steps, timed_from = 0, None
    after = before
    interrupted = False
    model.train()
    while state["step"] < state["steps"]:
        step_start = time.time()
        lr = lr_at(state["step"], state["steps"], peak, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        drawn, (state["epoch"], state["next"]) = ds.draw((state["epoch"], state["next"]), args.batch, args.seq_len)
        targets_total = sum(len(w) - 1 for _, _, w in drawn)
        mine = drawn[rank * per_rank:(rank + 1) * per_rank]
        if trace:
            trace.write(json.dumps({"step": state["step"], "windows": [[e, i] for e, i, _ in mine]}) + "\n")
            trace.flush()
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        micro = [mine[i:i + args.micro_batch] for i in range(0, len(mine), args.micro_batch)]
        for k, part in enumerate(micro):
            inputs, targets = batch_tensors([w for _, _, w in part], accelerator.device)
            sync = k == len(micro) - 1
            ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
            with ctx, accelerator.autocast():
                nats, _ = token_nats(model, inputs, targets)
                # Each process's gradients are averaged over the processes: scaled so the sum is
                # the mean over the global batch's targets, as one process would compute it.
                accelerator.backward(nats * world / targets_total)
            loss_sum += nats.detach().double()
        grad_norm = accelerator.clip_grad_norm_(params, args.clip) if args.clip > 0 else torch.tensor(0.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(accelerator.reduce(loss_sum, reduction="sum")) / targets_total
        state["step"] += 1
        state["tokens_seen"] += targets_total
        session_steps += 1
        now = time.time()
        if session_steps == 1:
            timed_from = now
        state["elapsed_s"] = run_elapsed + now - started
        if args.minutes and session_steps >= 3 and (session_steps == 3 or session_steps % REPLAN_EVERY == 0):
            per_step = (now - timed_from) / max(1, session_steps - 1)
            left = (args.minutes * 60 - (now - started)) / per_step
            state["steps"] = min(args.steps or 10**9, state["step"] + max(1, int(left)))
        flags = torch.tensor([float(stop.requested),
                              float(now - last_checkpoint > args.checkpoint_minutes * 60)],
                             device=accelerator.device)
        flags = accelerator.reduce(flags, reduction="sum")
        interrupted = bool(flags[0] > 0) and state["step"] < state["steps"]
        held = None
        if state["step"] % args.eval_every == 0 or state["step"] >= state["steps"]:
            held = evaluate(model, ds, args, accelerator)
            after = held
        do_checkpoint = (state["step"] % args.checkpoint_every == 0 or bool(flags[1] > 0) or interrupted
                         or state["step"] >= state["steps"])
        if do_checkpoint:
            save_checkpoint(accelerator, args.out, state)
            last_checkpoint = time.time()
        line = dict(event="step", step=state["step"], loss=loss, lr=lr, grad_norm=float(grad_norm),
                    tokens_seen=state["tokens_seen"], tokens_per_s=targets_total / max(now - step_start, 1e-9),
                    steps=state["steps"], elapsed_s=state["elapsed_s"])
        if held is not None:
            line["held_out"] = held
        if do_checkpoint:
            line["checkpoint"] = True
        log.write(**line)
        if interrupted:
            break
    log.write(event="end", step=state["step"], steps=state["steps"], tokens_seen=state["tokens_seen"],
              elapsed_s=state["elapsed_s"], interrupted=interrupted, held_out=after)
    if interrupted:
        accelerator.print(f"stopped at step {state['step']}; continue with the same command and --resume")
        return 0
    save_result(accelerator, model, args, ds, base, args.out, state, state["held_out_before"], after)
    accelerator.print(
        f"trained {state['step']} steps ({state['tokens_seen']} tokens); held-out bits/byte "
        f"{state['held_out_before']['bits_per_byte']:.3f} -> {after['bits_per_byte']:.3f}; "
        f"bring it back with: infill models import {args.out} --out MODEL_DIR")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
