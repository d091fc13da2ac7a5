"""SFT shards: chat examples tokenized into flat token and loss-mask arrays plus an index.

Torch-free (numpy + tokenizers) so the CPU prep workers can use it. Layout of out_dir:

    tokens.bin      all examples' token ids back to back (uint16 or uint32, no header)
    mask.bin        one uint8 per token: 1 where the token is a training target
    offsets.npy     int64, examples + 1 entries: example i is tokens[offsets[i]:offsets[i+1]]
    tokenizer.json  the tokenizer the ids belong to, chat tokens included
    index.json      counts and what happened to over-long examples
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from tokenizers import Tokenizer

from trainer import chat
from trainer import tokenizer as tokmod
from trainer.shards import INDEX_NAME, _replace_dir

TOKENS_NAME = "tokens.bin"
MASK_NAME = "mask.bin"
OFFSETS_NAME = "offsets.npy"
TOKENIZER_NAME = "tokenizer.json"

Overlong = Literal["truncate", "drop"]
Kind = Literal["sft", "dpo"]
Example = tuple[list[int], list[int]]  # token ids and their 0/1 loss mask


def _sft_example(tok: Tokenizer, record: Mapping[str, Any]) -> list[Example]:
    """One chat record as one example."""
    return [chat.tokenize_example(tok, chat.to_messages(record))]


def _preference_pair(tok: Tokenizer, record: Mapping[str, Any]) -> list[Example]:
    """A preference pair as its chosen and rejected examples; only each answer is learned."""
    prompt_ids, _ = chat.tokenize_example(tok, chat.to_messages(record["input"]))
    pair: list[Example] = []
    for side in ("preferred_output", "non_preferred_output"):
        ids, mask = chat.tokenize_example(tok, chat.to_messages({"messages": record[side]}))
        pair.append((prompt_ids + ids, [0] * len(prompt_ids) + mask))
    return pair


def _truncate(group: list[Example], seq_len: int) -> list[Example]:
    """Cut a group's examples so that together they fit seq_len: one example to seq_len; a
    pair so that each keeps at least half of it, the shorter one whole if it fits there."""
    if len(group) == 1:
        ids, mask = group[0]
        return [(ids[:seq_len], mask[:seq_len])]
    (a, ma), (b, mb) = group
    cap_a = max(seq_len // 2, seq_len - len(b))
    cap_b = seq_len - min(len(a), cap_a)
    return [(a[:cap_a], ma[:cap_a]), (b[:cap_b], mb[:cap_b])]


def write_sft_shards(
    records: Iterable[Mapping[str, Any]],
    tokenizer_path: str,
    out_dir: str,
    *,
    seq_len: int,
    overlong: Overlong = "truncate",
    kind: Kind = "sft",
) -> dict[str, Any]:
    """Tokenize validated SFT records into out_dir (see the module docstring); return the index.

    Records are `{"messages": [...]}` or `{"prompt": ..., "completion": ...}`. Chat tokens
    the tokenizer lacks are added, and the extended tokenizer is saved beside the shards:
    train with that one. An example longer than seq_len is cut to its first seq_len tokens
    ("truncate") or left out ("drop"); one with no loss token left is always left out.

    With kind "dpo" the records are preference pairs (OpenAI's format: `input.messages`,
    `preferred_output`, `non_preferred_output`) and each becomes two examples, the chosen
    (even number) then the rejected one, whose loss tokens are the final answer alone. A pair
    shares one row in training, so it is what must fit in seq_len: "truncate" cuts the
    longer answers, "drop" leaves the pair out, and a pair with an answer cut to nothing is
    left out whole.
    """
    if seq_len < 2:
        raise ValueError("seq_len must be >= 2")
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    tokenize = {"sft": _sft_example, "dpo": _preference_pair}[kind]
    tok = tokmod.load(tokenizer_path)
    added = chat.ensure_chat_tokens(tok)
    vocab = tokmod.vocab_size(tok)
    dtype = np.dtype(tokmod.token_dtype(vocab))

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    counts = {
        "records": 0,
        "examples": 0,
        "tokens": 0,
        "loss_tokens": 0,
        "overlong": 0,
        "truncated": 0,
        "dropped_overlong": 0,
        "dropped_no_loss": 0,
        "max_length": 0,
    }
    offsets = [0]
    try:
        with (
            open(os.path.join(tmp, TOKENS_NAME), "wb") as tf,
            open(os.path.join(tmp, MASK_NAME), "wb") as mf,
        ):
            for record in records:
                counts["records"] += 1
                group = tokenize(tok, record)
                length = sum(len(ids) for ids, _ in group)
                counts["max_length"] = max(counts["max_length"], length)
                if length > seq_len:
                    counts["overlong"] += 1
                    if overlong == "drop":
                        counts["dropped_overlong"] += 1
                        continue
                    counts["truncated"] += 1
                    group = _truncate(group, seq_len)
                # The first token is never a target (nothing precedes it to predict it from).
                if not all(any(mask[1:]) for _, mask in group):
                    counts["dropped_no_loss"] += 1
                    continue
                for ids, mask in group:
                    tf.write(np.asarray(ids, dtype=dtype).tobytes())
                    mf.write(np.asarray(mask, dtype=np.uint8).tobytes())
                    counts["examples"] += 1
                    counts["tokens"] += len(ids)
                    counts["loss_tokens"] += sum(mask[1:])
                    offsets.append(offsets[-1] + len(ids))
            for f in (tf, mf):
                f.flush()
                os.fsync(f.fileno())
        np.save(os.path.join(tmp, OFFSETS_NAME), np.asarray(offsets, dtype=np.int64))
        tok.save(os.path.join(tmp, TOKENIZER_NAME))
        eot = tok.token_to_id(tokmod.EOT)
        index: dict[str, Any] = {
            "format": "sft",
            "kind": kind,  # "dpo": examples 2i and 2i+1 are pair i's chosen and rejected
            "dtype": dtype.name,
            "vocab_size": vocab,
            "eot_id": None if eot is None else int(eot),
            "im_start_id": chat.special_id(tok, tokmod.IM_START),
            "im_end_id": chat.special_id(tok, tokmod.IM_END),
            "added_tokens": added,
            "seq_len": seq_len,
            "overlong_policy": overlong,
            **counts,
            "files": {
                "tokens": TOKENS_NAME,
                "mask": MASK_NAME,
                "offsets": OFFSETS_NAME,
                "tokenizer": TOKENIZER_NAME,
            },
        }
        if index["examples"] == 0:
            raise ValueError(
                f"no usable {kind.upper()} examples among {counts['records']} records "
                f"({counts['dropped_overlong']} longer than seq_len {seq_len} dropped, "
                f"{counts['dropped_no_loss']} without assistant tokens)"
            )
        with open(os.path.join(tmp, INDEX_NAME), "w", encoding="utf-8") as index_file:
            json.dump(index, index_file, indent=2)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def load_sft_index(out_dir: str) -> dict[str, Any]:
    """Read the index.json that write_sft_shards wrote, checking it is an SFT one."""
    with open(os.path.join(out_dir, INDEX_NAME), encoding="utf-8") as f:
        index = dict(json.load(f))
    if index.get("format") != "sft":
        raise ValueError(f"{out_dir} holds no SFT shards (index format {index.get('format')!r})")
    return index
