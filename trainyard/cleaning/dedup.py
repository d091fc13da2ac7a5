"""Duplicate removal: exact (a 64-bit hash of the normalised text) and near (MinHash over
word shingles, LSH at a Jaccard threshold; datasketch). Memory grows with the number of
documents kept, never with their size."""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
from datasketch import MinHash, MinHashLSH

from trainyard.cleaning.spec import DedupSpec

# LSH's weights for (false positives, false negatives): false positives cost a signature
# comparison, false negatives a duplicate kept.
RECALL_WEIGHTS = (0.1, 0.9)


def _crc32(shingle: bytes) -> int:
    return zlib.crc32(shingle)


def _band_key(band: bytes) -> bytes:
    # LSH keeps one key per band per document: 8 bytes instead of the band's raw values.
    return hashlib.blake2b(band, digest_size=8).digest()


class ExactDedup:
    """Remembers the documents seen, by a hash of their case- and space-folded text."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def is_duplicate(self, text: str) -> bool:
        """True when an equal document (after folding) was seen before; remembers this one."""
        folded = " ".join(text.lower().split()).encode()
        key = int.from_bytes(hashlib.blake2b(folded, digest_size=8).digest(), "little")
        if key in self.seen:
            return True
        self.seen.add(key)
        return False


class NearDedup:
    """Finds documents whose word-shingle Jaccard similarity to a kept one reaches the
    threshold: LSH finds candidates, their MinHash signatures confirm them.

    The LSH bands lean towards recall (few pairs at the threshold missed); the signature
    check then drops the candidates that are less similar than the threshold."""

    def __init__(self, spec: DedupSpec) -> None:
        self.spec = spec
        self.lsh = MinHashLSH(
            threshold=spec.threshold,
            num_perm=spec.num_perm,
            weights=RECALL_WEIGHTS,
            hashfunc=_band_key,
        )
        self.signatures: list[np.ndarray] = []
        # One set of permutations for every document: building them per MinHash is costly.
        self.permutations = MinHash(num_perm=spec.num_perm, seed=1).permutations

    def _minhash(self, text: str) -> MinHash:
        words = text.lower().split()
        n = self.spec.shingle_words
        shingles = {" ".join(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}
        minhash = MinHash(
            num_perm=self.spec.num_perm,
            hashfunc=_crc32,
            permutations=self.permutations,
            scheme="affine32",
        )
        minhash.update_batch(s.encode() for s in shingles)
        return minhash

    def is_duplicate(self, text: str) -> bool:
        """True when a kept document is this similar; otherwise keeps this one."""
        minhash = self._minhash(text)
        signature = minhash.hashvalues
        for key in self.lsh.query(minhash):
            if np.mean(self.signatures[key] == signature) >= self.spec.threshold:
                return True
        self.lsh.insert(len(self.signatures), minhash, check_duplication=False)
        self.signatures.append(signature)
        return False
