"""Token shards: documents tokenized into flat binary arrays plus an index.

Torch-free (numpy + tokenizers) so the CPU prep workers can use it. A shard is a raw
array of uint16 or uint32 token ids with no header, so the trainer can np.memmap it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
from tokenizers import Tokenizer

from trainer import tokenizer as tokmod

INDEX_NAME = "index.json"


class _ShardWriter:
    """Appends token arrays, starting a new shard file every `shard_tokens` tokens."""

    def __init__(self, out_dir: str, dtype: str, shard_tokens: int) -> None:
        self.out_dir = out_dir
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while tokens.size:
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            assert self._file is not None
            room = self.shard_tokens - self.shards[-1]["tokens"]
            chunk, tokens = tokens[:room], tokens[room:]
            self._file.write(chunk.tobytes())
            self.shards[-1]["tokens"] += int(chunk.size)

    def _open_next(self) -> None:
        self.close()
        name = f"shard-{len(self.shards):05d}.bin"
        self._file = open(os.path.join(self.out_dir, name), "wb")  # noqa: SIM115
        self.shards.append({"path": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _is_byte_tokenizer(tok: Tokenizer) -> bool:
    return bool(tok.to_str() == tokmod.byte_tokenizer().to_str())


def _encode_bytes(docs: list[str], tok: Tokenizer) -> list[np.ndarray]:
    """Byte-tokenizer fast path: ids are the utf-8 bytes, identical to tok.encode."""
    out = []
    for doc in docs:
        if tokmod.EOT in doc:
            # The tokenizer maps a literal EOT string to its special id; stay identical.
            out.append(np.asarray(tok.encode(doc).ids, dtype=np.uint32))
        else:
            out.append(np.frombuffer(doc.encode("utf-8"), dtype=np.uint8))
    return out


def write_shards(
    docs: Iterable[str],
    tokenizer_path: str,
    out_dir: str,
    *,
    append_eot: bool,
    shard_tokens: int = 2**27,
    batch_docs: int = 1024,
) -> dict[str, Any]:
    """Tokenize documents into shard-NNNNN.bin files plus index.json; return the index.

    The result is built in a temporary sibling folder and renamed into place, so readers
    never see a half-written out_dir. An existing out_dir is replaced.
    """
    if shard_tokens < 1 or batch_docs < 1:
        raise ValueError("shard_tokens and batch_docs must be >= 1")
    tok = tokmod.load(tokenizer_path)
    eot = tokmod.eot_id(tok)
    vocab = tokmod.vocab_size(tok)
    dtype = tokmod.token_dtype(vocab)
    fast = _is_byte_tokenizer(tok)
    eot_arr = np.asarray([eot], dtype=dtype)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # _fast: tokenizers >= 0.21

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        writer = _ShardWriter(tmp, dtype, shard_tokens)
        n_docs = 0
        for batch in _batches(docs, batch_docs):
            if fast:
                arrays = _encode_bytes(batch, tok)
            else:
                # The batch runs on the tokenizers thread pool (Rust, no GIL); the _fast
                # variant skips character offsets, which shards never store.
                encs = encode(batch, add_special_tokens=False)
                arrays = [np.asarray(e.ids, dtype=dtype) for e in encs]
            if append_eot:
                arrays = [part for arr in arrays for part in (arr, eot_arr)]
            if arrays:
                # One concatenate and write per batch keeps per-document Python work small.
                writer.write(np.concatenate([a.astype(dtype, copy=False) for a in arrays]))
            n_docs += len(batch)
        writer.close()
        index = {
            "dtype": dtype,
            "vocab_size": vocab,
            "eot_id": eot,
            "tokens": sum(s["tokens"] for s in writer.shards),
            "documents": n_docs,
            "shards": writer.shards,
        }
        with open(os.path.join(tmp, INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def _replace_dir(src: str, dst: str) -> None:
    """Move src to dst; an existing dst is moved aside first and then deleted."""
    old = None
    if os.path.exists(dst):
        old = f"{dst}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dst, old)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_index(out_dir: str) -> dict[str, Any]:
    """Read the index.json that write_shards wrote."""
    with open(os.path.join(out_dir, INDEX_NAME), encoding="utf-8") as f:
        return dict(json.load(f))


def all_ranges(index: dict[str, Any], out_dir: str) -> list[dict[str, Any]]:
    """Every token of the shards as ranges, as run.json expects (a split of its own)."""
    return [
        {"path": os.path.abspath(os.path.join(out_dir, s["path"])), "start": 0, "end": s["tokens"]}
        for s in index["shards"]
        if int(s["tokens"]) > 0
    ]


def split_ranges(
    index: dict[str, Any], out_dir: str, val_fraction: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split all tokens into train and validation ranges; validation is the last fraction.

    Each range is {"path": absolute shard path, "start", "end"} as run.json expects.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    total = int(index["tokens"])
    n_val = math.ceil(total * val_fraction)
    boundary = total - n_val
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    offset = 0  # global position of the current shard's first token
    for shard in index["shards"]:
        path = os.path.abspath(os.path.join(out_dir, shard["path"]))
        n = int(shard["tokens"])
        cut = min(max(boundary - offset, 0), n)  # local index where validation starts
        if cut > 0:
            train.append({"path": path, "start": 0, "end": cut})
        if cut < n:
            val.append({"path": path, "start": cut, "end": n})
        offset += n
    if not train or not val:
        side = "training" if not train else "validation"
        raise ValueError(
            f"the {side} split is empty: {total} tokens with val_fraction={val_fraction}; "
            "use a larger dataset or a different validation fraction"
        )
    return train, val
