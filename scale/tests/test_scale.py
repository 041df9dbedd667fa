"""The scale-out trainer end to end on CPU, small: infill's export of a fixture repository for the
tiny Qwen2 fixture model, training in one and in two processes (torchrun over gloo), LoRA and
full, preemption and resume, and `infill models import` giving a model whose log-probabilities
equal transformers' on the merged weights.

INFILL_BIN names the infill binary (default: the repository's target/debug/infill).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SCALE = os.path.dirname(HERE)
ROOT = os.path.dirname(SCALE)
BASE = os.path.join(ROOT, "tests", "fixtures", "models", "qwen2")
OTHER = os.path.join(ROOT, "tests", "fixtures", "models", "llama")
INFILL = os.environ.get("INFILL_BIN", os.path.join(ROOT, "target", "debug", "infill"))

sys.path.insert(0, SCALE)
from infill_scale.dataset import Dataset, DatasetError  # noqa: E402


def run(args, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=SCALE, OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=SCALE, **kw)


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def write_repo(root):
    """A small repository of Rust and Python files in a few repeated styles."""
    for i in range(24):
        path = os.path.join(root, "src", f"m{i}.rs")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            for j in range(12):
                f.write(f"pub fn add_{i}_{j}(a: u32, b: u32) -> u32 {{\n    let total = a + b * {j};\n"
                        f"    total.wrapping_mul({i + 1})\n}}\n\n")
    for i in range(12):
        path = os.path.join(root, "py", f"m{i}.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            for j in range(10):
                f.write(f"def scale_{i}_{j}(values):\n    return [v * {j} for v in values if v > {i}]\n\n")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_repo(str(repo))
    out = str(tmp_path_factory.mktemp("data") / "ds")
    ok(run([INFILL, "train", "--export", out, "--repo", str(repo), "--init", BASE, "--seq-len", "64",
            "--epochs", "2", "--shards", "2", "--held-out", "0.2", "--seed", "3"]))
    return out


def train(out, data, *extra, procs=1, env=None):
    base = ["-m", "infill_scale.train", "--data", data, "--model", BASE, "--out", out, "--batch", "8",
            "--micro-batch", "2", "--eval-every", "5", "--checkpoint-every", "5", *extra]
    if procs == 1:
        cmd = [sys.executable, *base]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_port", str(29500 + os.getpid() % 1000), *base]
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=SCALE, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=SCALE)


def log_lines(out):
    with open(os.path.join(out, "train.log")) as f:
        return [json.loads(line) for line in f]


def traces(prefix, ranks):
    """step -> the (epoch, window) pairs all ranks trained on at that step."""
    seen = {}
    for r in range(ranks):
        with open(f"{prefix}.rank{r}") as f:
            for line in f:
                x = json.loads(line)
                seen.setdefault(x["step"], []).extend(tuple(w) for w in x["windows"])
    return seen


def test_the_dataset_reads_as_infill_cut_it(dataset):
    ds = Dataset(dataset, verify=True)
    m = ds.manifest
    assert m["complete"] and m["settings"]["dtype"] == "u16" and ds.seq_len == 64
    assert len(m["train"]) == 4  # two epochs of two shards
    # Every window of an epoch is drawn once before the next epoch starts; epochs differ.
    count = ds.windows_per_epoch()
    drawn, pos = ds.draw((0, 0), count)
    assert sorted(i for _, i, _ in drawn) == list(range(count)) and pos == (0, count)
    stream = ds.epoch_stream(0)
    assert sorted(len(w) for _, _, w in drawn)[1] == 65
    for _, i, w in drawn:
        assert np.array_equal(w, stream[i * 64:i * 64 + 65])
    assert sum(len(w) - 1 for _, _, w in drawn) == len(stream) - 1
    assert not np.array_equal(ds.epoch_stream(0)[:500], ds.epoch_stream(1)[:500])
    nxt, pos = ds.draw(pos, 3)
    assert [e for e, _, _ in nxt] == [1, 1, 1] and pos == (1, 3)
    # FIM examples hold the FIM markers and the file separator between documents.
    fim = m["tokenizer"]["fim"]
    for tok in (fim["prefix"], fim["suffix"], fim["middle"], fim["file_sep"]):
        assert (stream == tok).any()
    # Held-out windows cover each held file's bytes exactly once, but for its first token (a
    # target of none, as in infill's own held-out figures).
    held = ds.held_windows()
    sizes = np.fromfile(os.path.join(dataset, m["held"]["bytes_file"]), dtype="<u2").astype(int)
    starts = np.cumsum([0] + [d["tokens"] for d in m["held"]["docs"]])[:-1]
    assert sum(d["bytes"] for d in m["held"]["docs"]) == sizes.sum()
    assert sum(w.bytes for w in held) == sizes.sum() - sizes[starts].sum()
    assert {w.language for w in held} <= {"rust", "python"}


def test_the_model_tokenizer_is_checked_before_training(dataset, tmp_path):
    ds = Dataset(dataset)
    assert ds.check_tokenizer(BASE, 408) == "same file"
    with pytest.raises(DatasetError, match="encodes text differently"):
        ds.check_tokenizer(OTHER, 10_000)
    with pytest.raises(DatasetError, match="token embeddings"):
        ds.check_tokenizer(BASE, 100)
    # A run on a model of another tokenizer stops before its first step, with the reason.
    res = subprocess.run(
        [sys.executable, "-m", "infill_scale.train", "--data", dataset, "--model", OTHER, "--out",
         str(tmp_path / "run"), "--steps", "2"],
        capture_output=True, text=True, cwd=SCALE, env=dict(os.environ, PYTHONPATH=SCALE, HF_HUB_OFFLINE="1"))
    assert res.returncode == 2 and "encodes text differently" in res.stdout + res.stderr
    assert not os.path.exists(tmp_path / "run" / "train.log")
    # A model that is not there gets one line, not a traceback.
    res = subprocess.run(
        [sys.executable, "-m", "infill_scale.train", "--data", dataset, "--model", str(tmp_path / "nothing"),
         "--out", str(tmp_path / "run2"), "--steps", "2"],
        capture_output=True, text=True, cwd=SCALE, env=dict(os.environ, PYTHONPATH=SCALE, HF_HUB_OFFLINE="1"))
    assert res.returncode == 2 and "cannot load" in res.stdout and "Traceback" not in res.stderr
    # An export cut short is refused until it is finished.
    with open(os.path.join(dataset, "manifest.json")) as f:
        m = json.load(f)
    half = tmp_path / "half"
    half.mkdir()
    m["complete"] = False
    (half / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="not finished"):
        Dataset(str(half))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_two_processes_train_on_the_examples_one_does_and_the_loss_goes_down(dataset, tmp_path, mode):
    flags = ["--steps", "15", "--lr", "5e-3" if mode == "lora" else "2e-3", f"--{mode}"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    ok(train(one, dataset, *flags, env={"INFILL_SCALE_TRACE": str(tmp_path / "t1")}))
    ok(train(two, dataset, *flags, procs=2, env={"INFILL_SCALE_TRACE": str(tmp_path / "t2")}))
    single, pair = traces(tmp_path / "t1", 1), traces(tmp_path / "t2", 2)
    assert len(single) == 15 and single == pair
    # Each rank trained on its own half of every global batch.
    with open(f"{tmp_path / 't2'}.rank0") as f0, open(f"{tmp_path / 't2'}.rank1") as f1:
        for a, b in zip(f0, f1):
            assert not set(map(tuple, json.loads(a)["windows"])) & set(map(tuple, json.loads(b)["windows"]))
    a, b = log_lines(one), log_lines(two)
    assert [x["event"] for x in a] == ["start"] + ["step"] * 15 + ["end"]
    for x, y in zip(a, b):
        if x["event"] == "step":
            assert x["loss"] == pytest.approx(y["loss"], abs=1e-4)
    before, after = a[0]["held_out"], a[-1]["held_out"]
    assert after["loss"] == pytest.approx(b[-1]["held_out"]["loss"], abs=1e-4)
    assert after["bits_per_byte"] < before["bits_per_byte"] - 0.05, (before, after)
    losses = [x["loss"] for x in a if x["event"] == "step"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert os.path.exists(os.path.join(one, "adapter" if mode == "lora" else "model", "tokenizer.json"))
    # infill's dashboard reads the run's log: --watch follows it to its end line and returns.
    watched = ok(run([INFILL, "train", "--watch", one, "--plain"], timeout=60))
    assert [json.loads(x)["event"] for x in watched.stdout.splitlines()] == ["start"] + ["step"] * 15 + ["end"]


def logprobs_transformers(model_dir, text, adapter=None):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tok = Tokenizer.from_file(os.path.join(BASE, "tokenizer.json"))
    sep = tok.token_to_id("<|file_sep|>")
    ids = [sep] + tok.encode(text, add_special_tokens=False).ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]


def logprobs_infill(args, file):
    out = ok(run([INFILL, "score", file, "--json", *args]))
    return [t["logprob"] for t in json.loads(out.stdout)["tokens"]]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_an_imported_run_computes_what_transformers_computes_on_the_merged_weights(dataset, tmp_path, mode):
    run_dir = str(tmp_path / "run")
    ok(train(run_dir, dataset, "--steps", "6", "--lr", "1e-2", f"--{mode}"))
    model = str(tmp_path / "model")
    imported = ok(run([INFILL, "models", "import", run_dir, "--out", model]))
    assert "qwen2" in imported.stdout
    text = "pub fn add_3_4(a: u32, b: u32) -> u32 {\n    let total = a + b * 4;\n}\n"
    file = tmp_path / "probe.rs"
    file.write_text(text)
    if mode == "lora":
        want = logprobs_transformers(BASE, text, adapter=os.path.join(run_dir, "adapter"))
    else:
        want = logprobs_transformers(os.path.join(run_dir, "model"), text)
    base = logprobs_transformers(BASE, text)
    got = logprobs_infill(["--model", model], file)
    assert len(got) == len(want)
    assert max(abs(g - w) for g, w in zip(got, want)) < 1e-4
    # Training changed the model measurably: the check above is not the base against itself.
    assert max(abs(b - w) for b, w in zip(base, want)) > 1e-2
    if mode == "lora":
        # --adapter merges the same adapter at load time, with the same result.
        adapted = logprobs_infill(["--model", BASE, "--adapter", os.path.join(run_dir, "adapter")], file)
        assert max(abs(g - w) for g, w in zip(adapted, want)) < 1e-4
        # An adapter of another model is refused with the reason.
        other = run([INFILL, "models", "import", run_dir, "--out", str(tmp_path / "x"), "--base", OTHER])
        assert other.returncode != 0 and "another" in other.stderr


def test_a_preempted_run_checkpoints_and_resumes_where_it_stopped(dataset, tmp_path):
    flags = ["--steps", "300", "--lr", "5e-3", "--eval-every", "1000", "--checkpoint-every", "1000",
             "--micro-batch", "8"]
    straight = str(tmp_path / "straight")
    ok(train(straight, dataset, *flags))
    cut = str(tmp_path / "cut")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=SCALE, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "infill_scale.train", "--data", dataset, "--model", BASE, "--out", cut,
           "--batch", "8", *flags]
    proc = subprocess.Popen(cmd, cwd=SCALE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = os.path.join(cut, "train.log")
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.exists(log) and sum(1 for _ in open(log)) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    lines = log_lines(cut)
    end = lines[-1]
    assert end["event"] == "end" and end["interrupted"] and 0 < end["step"] < 300, out[-2000:]
    assert lines[-2]["checkpoint"] and not os.path.exists(os.path.join(cut, "adapter"))
    ok(train(cut, dataset, *flags, "--resume"))
    resumed = log_lines(cut)
    assert [x["event"] for x in resumed].count("start") == 2
    steps = [x["step"] for x in resumed if x["event"] == "step"]
    assert steps == list(range(1, 301))
    a = {x["step"]: x["loss"] for x in log_lines(straight) if x["event"] == "step"}
    b = {x["step"]: x["loss"] for x in resumed if x["event"] == "step"}
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    assert resumed[-1]["held_out"]["loss"] == pytest.approx(log_lines(straight)[-1]["held_out"]["loss"], abs=1e-4)


def test_a_run_follows_an_export_still_being_written(dataset, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(dataset, partial)
    with open(partial / "manifest.json") as f:
        whole = json.load(f)
    cut = dict(whole, complete=False, train=[s for s in whole["train"] if s["epoch"] == 0])
    (partial / "manifest.json").write_text(json.dumps(cut))
    # One epoch is written: a run that needs the second waits for it, then goes on.
    per_epoch = Dataset(dataset).windows_per_epoch()
    steps = per_epoch // 8 + 3
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=SCALE, OMP_NUM_THREADS="1")
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "infill_scale.train", "--data", str(partial), "--follow", "--model", BASE,
           "--out", out, "--batch", "8", "--steps", str(steps), "--eval-every", "1000"]
    proc = subprocess.Popen(cmd, cwd=SCALE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = os.path.join(out, "train.log")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(log) and
                                          sum(1 for _ in open(log)) >= per_epoch // 8 + 1):
        time.sleep(0.1)
    time.sleep(1.0)
    assert proc.poll() is None, "the run waits for the second epoch"
    written = sum(1 for _ in open(log))
    assert written == per_epoch // 8 + 1, written
    (partial / "manifest.json").write_text(json.dumps(whole))
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert log_lines(out)[-1]["step"] == steps
    # Without --follow an unfinished export is refused at once.
    (partial / "manifest.json").write_text(json.dumps(cut))
    refused = subprocess.run([c for c in cmd if c != "--follow"] + ["--overwrite"], cwd=SCALE, env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--follow" in refused.stdout + refused.stderr
