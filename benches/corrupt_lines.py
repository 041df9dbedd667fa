#!/usr/bin/env python3
"""Which line score finds a corrupted line: the probe behind the overlay's "most surprising line".

Takes windows of source files, corrupts one line of each the way bugs look (an operator turned
into another: `+=` -> `-=`, `==` -> `!=`, `<` -> `>`, `and` -> `or`; or an identifier turned into
a near one used elsewhere in the window: `value` -> `values`), scores every line of the window
with `infill score --fim --json`, and reports, for each line score infill computes, how often the
corrupted line ranks first and its mean reciprocal rank.

    python3 benches/corrupt_lines.py --infill target/release/infill --samples 150 DIR...

Use files the model was not trained on (for the built-in model: packages that were not on the
machine that trained it). Deterministic for a given --seed.
"""

import argparse
import json
import math
import pathlib
import random
import re
import subprocess
import tempfile

OPERATORS = [("+=", "-="), ("-=", "+="), ("==", "!="), ("!=", "=="), ("<=", ">="),
             (">=", "<="), (" < ", " > "), (" > ", " < "), (" and ", " or "),
             (" or ", " and "), ("&&", "||"), ("||", "&&"), (" + ", " - "), (" - ", " + ")]
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = set("""def class return if else elif for while in not and or is None True False
import from as with try except finally raise pass break continue lambda yield self fn let mut
pub struct enum impl use match where mod const static ref type trait crate super Self async
await move loop dyn unsafe extern""".split())
MEASURES = ["bits_per_token", "bits", "max_token_bits", "excess_bits"]


def near(a, b):
    """One edit apart (an added, dropped or changed character)."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def corrupt(line, names, rng):
    """A corrupted version of `line`, or None."""
    kinds = []
    for old, new in OPERATORS:
        if old in line:
            kinds.append(("op", old, new))
    for m in IDENT.finditer(line):
        word = m.group()
        if word in KEYWORDS:
            continue
        others = sorted(n for n in names if near(n, word))
        if others:
            kinds.append(("ident", m, rng.choice(others)))
    if not kinds:
        return None
    kind = rng.choice(kinds)
    if kind[0] == "op":
        _, old, new = kind
        starts = [m.start() for m in re.finditer(re.escape(old), line)]
        at = rng.choice(starts)
        return line[:at] + new + line[at + len(old):]
    _, m, new = kind
    return line[:m.start()] + new + line[m.end():]


def own_line_bits(infill, text, line, tmp, suffix):
    """Bits per token of the line the model writes itself in place of `line` (1-based), at its
    indentation, up to the end of that line."""
    lines = text.split("\n")
    own = lines[line - 1]
    indent = own[:len(own) - len(own.lstrip())]
    lines[line - 1] = indent
    sample = tmp / ("own" + suffix)
    sample.write_text("\n".join(lines))
    out = subprocess.run([infill, "complete", "--json", "--no-trim", "--no-heal", "--max-tokens", "24",
                          "--file", str(sample), "--line", str(line),
                          "--column", str(len(indent) + 1)],
                         capture_output=True, text=True, check=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    bits, n = 0.0, 0
    for t in json.loads(out.stdout)["tokens"]:
        bits -= math.log2(max(t["prob"], 1e-30))
        n += 1
        if "\n" in t["text"]:
            break
    return bits / max(n, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--infill", default="target/release/infill")
    ap.add_argument("--samples", type=int, default=150)
    ap.add_argument("--window", type=int, default=30, help="lines around the corrupted one")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rerank", type=int, default=0,
                    help="also re-rank the N lines with the most bits per token by regret: their "
                         "bits per token less those of the line the model writes there itself")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    files = sorted(p for d in args.dirs for p in pathlib.Path(d).rglob("*")
                   if p.suffix in (".py", ".rs") and "test" not in p.name)
    rng.shuffle(files)
    found = {m: [] for m in MEASURES}
    done = 0
    # Several windows of a file when there are fewer files than samples.
    rounds = [p for _ in range(20) for p in files]
    with tempfile.TemporaryDirectory() as tmp:
        for path in rounds:
            if done >= args.samples:
                break
            lines = path.read_text(errors="replace").split("\n")
            if len(lines) < args.window:
                continue
            start = rng.randrange(0, len(lines) - args.window + 1)
            window = lines[start:start + args.window]
            names = set(IDENT.findall("\n".join(window))) - KEYWORDS
            candidates = [i for i, l in enumerate(window)
                          if l.strip() and not l.strip().startswith(("#", "//", '"', "'"))]
            rng.shuffle(candidates)
            for i in candidates:
                bad = corrupt(window[i], names, rng)
                if bad is not None and bad != window[i]:
                    break
            else:
                continue
            text = "\n".join(window[:i] + [bad] + window[i + 1:]) + "\n"
            sample = pathlib.Path(tmp) / ("sample" + path.suffix)
            sample.write_text(text)
            out = subprocess.run([args.infill, "score", "--fim", "--json", "--fim-context", "256",
                                  str(sample)],
                                 capture_output=True, text=True, check=True,
                                 env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
            scored = json.loads(out.stdout)["lines"]
            for m in MEASURES:
                ranked = sorted(scored, key=lambda l: -l[m])
                rank = next((k + 1 for k, l in enumerate(ranked) if l["line"] == i + 1), None)
                found[m].append(rank)
            if args.rerank:
                ranked = sorted(scored, key=lambda l: -l["bits_per_token"])
                top = ranked[:args.rerank]
                for l in top:
                    l["regret"] = l["bits_per_token"] - own_line_bits(
                        args.infill, text, l["line"], pathlib.Path(tmp), path.suffix)
                top.sort(key=lambda l: -l["regret"])
                ranked = top + ranked[args.rerank:]
                rank = next((k + 1 for k, l in enumerate(ranked) if l["line"] == i + 1), None)
                found.setdefault("regret_rerank", []).append(rank)
            done += 1
    print(f"{done} corrupted windows of {args.window} lines (seed {args.seed})")
    print(f"{'line score':<16} {'ranked first':>12} {'in top 3':>9} {'MRR':>6}")
    for m in found:
        ranks = [r for r in found[m] if r is not None]
        first = sum(r == 1 for r in ranks) / max(done, 1)
        top3 = sum(r <= 3 for r in ranks) / max(done, 1)
        mrr = sum(1 / r for r in ranks) / max(done, 1)
        print(f"{m:<16} {first:>12.1%} {top3:>9.1%} {mrr:>6.3f}")


if __name__ == "__main__":
    main()
