"""Prep pipeline speed: shards.write_shards against tokenizers' own encode_batch.

A byte-level BPE (vocab 4096) is trained on tiny Shakespeare; the text, split into
paragraphs and repeated --repeat times, is then tokenized by write_shards (ids to disk,
index included) and by `Tokenizer.encode_batch` over the same paragraphs with the same
thread pool (RAYON_NUM_THREADS, default all cores). Reports MB/s of utf-8 input, best of
--rounds, and the ratio.

    python bench/tokenize_speed.py [--repeat 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import load, machine  # noqa: E402
from trainer import shards  # noqa: E402
from trainer import tokenizer as tokmod  # noqa: E402

TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"  # beside the project, never in it


def main() -> None:
    """Time both tokenizations and print MB/s and the ratio."""
    p = argparse.ArgumentParser()
    p.add_argument("--text", default=str(TEXT))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    text = Path(a.text).read_text(encoding="utf-8")
    docs = [d for d in text.split("\n\n") if d] * a.repeat
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    threads = os.environ.get("RAYON_NUM_THREADS", str(os.cpu_count()))

    with tempfile.TemporaryDirectory(prefix="trainyard-tok-") as d:
        tmp = Path(d)
        tok = tokmod.train_bpe([text], 4096)
        tok_path = tmp / "tokenizer.json"
        tok.save(str(tok_path))
        print(f"load before: {load()}; {len(docs)} documents, {mb:.1f} MB", flush=True)
        ours, ref = [], []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            index = shards.write_shards(docs, str(tok_path), str(tmp / "out"), append_eot=True)
            ours.append(mb / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            encs = tok.encode_batch(docs, add_special_tokens=False)
            ref.append(mb / (time.perf_counter() - t0))
            n_ref = sum(len(e.ids) for e in encs)
            assert index["tokens"] == n_ref + len(docs), "write_shards and encode_batch disagree"
    o, r = max(ours), max(ref)
    print(f"machine: {machine()}; threads {threads}; load after: {load()}")
    print(f"write_shards {o:.2f} MB/s, encode_batch {r:.2f} MB/s, ratio {o / r:.2f}")


if __name__ == "__main__":
    main()
