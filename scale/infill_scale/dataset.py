"""Reads a dataset directory written by `infill train --export DIR` (see src/train/dataset.rs).

The training windows of an epoch are its shards' token streams one after another, cut into
windows of `seq_len + 1` tokens that overlap by one (inputs and shifted targets), exactly as
`infill train` cuts them, and drawn in an order seeded by the seed and the epoch. Every process
computes the same order; a global batch is the next `batch` windows of it, and process `rank` of
`world` takes its own contiguous part, so one process and several see the same examples.
"""

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

FORMAT = "infill-dataset"
VERSION = 1


class DatasetError(Exception):
    """A dataset that cannot be used as it is, with what to do about it."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class HeldWindow:
    ids: np.ndarray
    bytes: int
    language: str


class Dataset:
    """An export; with `follow`, one still being written: each epoch is read once its shards
    are all written (the exporter rewrites the manifest after every shard)."""

    def __init__(self, path, verify=False, follow=False):
        self.path = path
        self.follow = follow
        m = self._read_manifest()
        if not m.get("complete") and not follow:
            raise DatasetError(
                f"{path}: the export is not finished; run the same infill train --export again to complete it "
                f"(or train with --follow while it is written)"
            )
        self.manifest = m
        s = m["settings"]
        self.seq_len = s["seq_len"]
        self.seed = s["seed"]
        self.epochs = s["epochs"]
        self.dtype = np.uint16 if s["dtype"] == "u16" else np.uint32
        self.vocab_size = m["tokenizer"]["vocab_size"]
        self.fim = m["tokenizer"]["fim"]
        files = [(x["file"], x["sha256"]) for x in m["train"]]
        h = m["held"]
        files += [(h["tokens_file"], h["tokens_sha256"]), (h["bytes_file"], h["bytes_sha256"])]
        for name, sha in files:
            full = os.path.join(path, name)
            if not os.path.exists(full):
                raise DatasetError(f"{full}: missing; run the same infill train --export again to write it")
            if verify and _sha256(full) != sha:
                raise DatasetError(f"{full}: its bytes differ from the manifest's hash; export it again")
        self._epoch_cache = {}

    def _read_manifest(self):
        path = self.path
        manifest = os.path.join(path, "manifest.json")
        while self.follow and not os.path.exists(manifest):
            time.sleep(2)
        try:
            with open(manifest, encoding="utf-8") as f:
                m = json.load(f)
        except FileNotFoundError:
            raise DatasetError(
                f"{path}: no manifest.json; write the dataset with infill train --export {path} --repo ..."
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{manifest}: not a manifest ({e}); export it again") from None
        if m.get("format") != FORMAT or m.get("version", 0) > VERSION:
            raise DatasetError(
                f"{manifest}: a {m.get('format')} manifest of version {m.get('version')}; "
                f"this package reads {FORMAT} up to version {VERSION}"
            )
        return m

    def _epoch_shards(self, k):
        """Epoch k's shards, waiting for them with `follow`."""
        while True:
            shards = sorted((x for x in self.manifest["train"] if x["epoch"] == k), key=lambda x: x["shard"])
            if len(shards) == self.manifest["settings"]["shards"]:
                return shards
            if not self.follow or self.manifest["complete"]:
                raise DatasetError(f"{self.path}: epoch {k} is not all written; run the export again to finish it")
            time.sleep(2)
            self.manifest = self._read_manifest()

    # --- the tokenizer check -------------------------------------------------------------------

    def check_tokenizer(self, tokenizer_dir, vocab_size):
        """Stops unless the model at `tokenizer_dir` (its tokenizer.json) makes the same ids: the
        same file, or a file that encodes the probe text the same and names the FIM tokens the
        same. `vocab_size` is the model's embedding rows."""
        t = self.manifest["tokenizer"]
        if vocab_size < t["vocab_size"]:
            raise DatasetError(
                f"the model has {vocab_size} token embeddings, the dataset's ids go up to {t['vocab_size']}: "
                f"export the dataset with --init naming this model"
            )
        path = os.path.join(tokenizer_dir, "tokenizer.json")
        if not os.path.exists(path):
            raise DatasetError(f"{tokenizer_dir}: no tokenizer.json to check the dataset's ids against")
        if _sha256(path) == t["sha256"]:
            return "same file"
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(path)
        ids = tok.encode(t["probe"], add_special_tokens=False).ids
        if ids != t["probe_ids"]:
            raise DatasetError(
                f"{path} encodes text differently from the tokenizer the dataset was made with "
                f"({self.manifest['settings']['model']}); export the dataset with --init naming this model"
            )
        for id_, text in t["fim"]["names"]:
            if tok.token_to_id(text) != id_:
                raise DatasetError(
                    f"{path}: {text!r} is not token {id_} as in the dataset; export it for this model"
                )
        return "same ids"

    # --- training windows ----------------------------------------------------------------------

    def epoch_stream(self, epoch):
        """The token stream of `epoch` (an epoch past the written ones reuses them in turn)."""
        k = epoch % self.epochs
        if k not in self._epoch_cache:
            shards = self._epoch_shards(k)
            parts = [np.fromfile(os.path.join(self.path, x["file"]), dtype=np.dtype(self.dtype).newbyteorder("<"))
                     for x in shards]
            self._epoch_cache = {k: np.concatenate(parts).astype(np.int64)}
        return self._epoch_cache[k]

    def windows(self, epoch, seq_len=None):
        """Start offsets of the windows of `epoch` and the stream: window i is
        stream[i*seq_len : i*seq_len + seq_len + 1] (shorter at the end; at least two tokens)."""
        seq_len = seq_len or self.seq_len
        stream = self.epoch_stream(epoch)
        n = len(stream)
        count = max(0, math.ceil((n - 1) / seq_len)) if n >= 2 else 0
        return count, stream

    def order(self, epoch, count):
        """The seeded order in which `epoch`'s windows are drawn."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        return rng.permutation(count)

    def draw(self, position, batch, seq_len=None):
        """The next `batch` windows from `position` = (epoch, next), moving into the next epoch
        when one ends. Returns ([(epoch, window index, ids)], new position)."""
        seq_len = seq_len or self.seq_len
        epoch, nxt = position
        out = []
        while len(out) < batch:
            count, stream = self.windows(epoch, seq_len)
            if count == 0:
                raise DatasetError(f"{self.path}: epoch {epoch} has no windows")
            if nxt >= count:
                epoch, nxt = epoch + 1, 0
                continue
            order = self.order(epoch, count)
            take = min(batch - len(out), count - nxt)
            for i in order[nxt:nxt + take]:
                start = int(i) * seq_len
                out.append((epoch, int(i), stream[start:start + seq_len + 1]))
            nxt += take
        return out, (epoch, nxt)

    def windows_per_epoch(self, seq_len=None):
        return self.windows(0, seq_len)[0]

    # --- held-out files ------------------------------------------------------------------------

    def held_windows(self, seq_len=None):
        """The held-out files read left to right, cut into windows as the training windows are,
        each with the bytes its targets stand for (for bits per byte) and its language."""
        seq_len = seq_len or self.seq_len
        h = self.manifest["held"]
        le = np.dtype(self.dtype).newbyteorder("<")
        tokens = np.fromfile(os.path.join(self.path, h["tokens_file"]), dtype=le).astype(np.int64)
        sizes = np.fromfile(os.path.join(self.path, h["bytes_file"]), dtype=np.dtype("<u2")).astype(np.int64)
        out, at = [], 0
        for doc in h["docs"]:
            ids, nbytes = tokens[at:at + doc["tokens"]], sizes[at:at + doc["tokens"]]
            at += doc["tokens"]
            for i in range(0, max(len(ids) - 1, 0), seq_len):
                w = ids[i:i + seq_len + 1]
                if len(w) >= 2:
                    out.append(HeldWindow(w, int(nbytes[i + 1:i + len(w)].sum()), doc["language"]))
        return out

    def held_sample(self, max_windows, min_per_language=4, seq_len=None):
        """At most `max_windows` evenly spaced held-out windows, topped up so each language has
        `min_per_language` of its own where it has them (those count only for it): the same
        sample `infill train` measures, the same at every call."""
        held = self.held_windows(seq_len)
        if not held:
            return [], []
        n = min(len(held), max(max_windows, 1))
        sample = [i * len(held) // n for i in range(n)]
        extra = []
        languages = list(dict.fromkeys(w.language for w in held))
        for language in languages:
            own = [i for i, w in enumerate(held) if w.language == language]
            sampled = sum(1 for i in sample if held[i].language == language)
            want = min(min_per_language, len(own))
            missing = max(0, want - sampled)
            picks = [own[k * len(own) // want] for k in range(want)] if want else []
            extra += [i for i in picks if i not in sample][:missing]
        return [held[i] for i in sample], [held[i] for i in extra]
