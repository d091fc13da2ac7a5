"""Tokenizers built on Hugging Face `tokenizers`: a byte-level one and trained BPE.

Torch-free: the prep workers tokenize datasets with it. Both kinds serialize to a single
tokenizer.json that `transformers.PreTrainedTokenizerFast` can load.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character.

    Printable Latin-1 bytes map to themselves; the rest (control characters, space, ...)
    are shifted to code points from 256 up, so every byte becomes a visible character that
    BPE can treat as a symbol. This is the alphabet the ByteLevel pre-tokenizer emits.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping: dict[int, str] = {}
    shifted = 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def byte_tokenizer() -> Tokenizer:
    """A byte-level tokenizer where byte b has id b and EOT is id 256."""
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer with EOT and the chat tokens reserved."""
    specials = [EOT, IM_START, IM_END]
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size must be at least {256 + len(specials)}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        # Seeding the whole byte alphabet means any input can be encoded, even bytes the
        # training texts never contained.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load(path: str) -> Tokenizer:
    """Load a tokenizer.json file."""
    return Tokenizer.from_file(path)


def eot_id(tok: Tokenizer) -> int:
    """Id of the end-of-text token."""
    tid = tok.token_to_id(EOT)
    if tid is None:
        raise ValueError(f"tokenizer has no {EOT} token")
    return int(tid)


def vocab_size(tok: Tokenizer) -> int:
    """Number of ids the model must embed, special tokens included."""
    return int(tok.get_vocab_size(with_added_tokens=True))


def token_dtype(vocab_size: int) -> str:
    """Smallest numpy dtype name that holds every token id."""
    return "uint16" if vocab_size <= 65536 else "uint32"
