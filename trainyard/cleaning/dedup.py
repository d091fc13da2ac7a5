"""Duplicate removal: exact (a 64-bit hash of the normalised text) and near (MinHash over
word shingles, LSH at a Jaccard threshold; datasketch computes the signatures and chooses
the bands).

Memory grows with the number of documents kept, never with their size, and by little:
the indexes are sorted arrays of 64-bit keys (12 bytes per key and document), and the
MinHash signatures that confirm a candidate live in an unnamed temporary file, read back
only for candidates. datasketch's own in-memory LSH index costs about 3 KB per document
(a Python set and bytes object per band), which a 2 GB corpus cannot afford."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib

import numpy as np
from datasketch import MinHash, MinHashLSH

from trainyard.cleaning.spec import DedupSpec

# LSH's weights for (false positives, false negatives): false positives cost a signature
# comparison, false negatives a duplicate kept.
RECALL_WEIGHTS = (0.1, 0.9)
# Keys wait in a dict until this many, then merge into the sorted arrays.
BUFFERED_KEYS = 4096


def _crc32(shingle: bytes) -> int:
    return zlib.crc32(shingle)


def _key64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class KeyIndex:
    """A multimap from 64-bit keys to document numbers, in about 12 bytes per entry: two
    sorted numpy arrays, plus a small dict of the newest entries merged in by batches."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)
        self.docs = np.empty(0, dtype=np.uint32)
        self.recent: dict[int, list[int]] = {}
        self.recent_count = 0

    def __len__(self) -> int:
        return len(self.keys) + self.recent_count

    def get(self, key: int) -> list[int]:
        """The documents stored under `key`, oldest first."""
        k = np.uint64(key)
        lo, hi = np.searchsorted(self.keys, k, "left"), np.searchsorted(self.keys, k, "right")
        return [int(d) for d in self.docs[lo:hi]] + self.recent.get(key, [])

    def add(self, key: int, doc: int) -> None:
        self.recent.setdefault(key, []).append(doc)
        self.recent_count += 1
        if self.recent_count >= BUFFERED_KEYS:
            self._merge()

    def _merge(self) -> None:
        pairs = sorted((k, d) for k, ds in self.recent.items() for d in ds)
        keys = np.fromiter((k for k, _ in pairs), dtype=np.uint64, count=len(pairs))
        docs = np.fromiter((d for _, d in pairs), dtype=np.uint32, count=len(pairs))
        # After the older entries of an equal key: a key's documents stay oldest first.
        at = np.searchsorted(self.keys, keys, side="right")
        self.keys, self.docs = np.insert(self.keys, at, keys), np.insert(self.docs, at, docs)
        self.recent, self.recent_count = {}, 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the sorted arrays (the dict of recent keys is bounded)."""
        return self.keys.nbytes + self.docs.nbytes


class ExactDedup:
    """Remembers the documents seen, by a hash of their case- and space-folded text."""

    def __init__(self) -> None:
        self.seen = KeyIndex()

    def is_duplicate(self, text: str) -> bool:
        """True when an equal document (after folding) was seen before; remembers this one."""
        key = _key64(" ".join(text.lower().split()).encode())
        if self.seen.get(key):
            return True
        self.seen.add(key, 0)
        return False


class NearDedup:
    """Finds documents whose word-shingle Jaccard similarity to a kept one reaches the
    threshold: LSH bands find candidates, their MinHash signatures confirm them.

    The bands lean towards recall (few pairs at the threshold missed); the signature check
    then drops the candidates that are less similar than the threshold."""

    def __init__(self, spec: DedupSpec) -> None:
        self.spec = spec
        bands = MinHashLSH(threshold=spec.threshold, num_perm=spec.num_perm, weights=RECALL_WEIGHTS)
        self.bands = [(start, end) for start, end in bands.hashranges]
        self.index = [KeyIndex() for _ in self.bands]
        # One set of permutations for every document: building them per MinHash is costly.
        self.permutations = MinHash(num_perm=spec.num_perm, seed=1).permutations
        self.row_bytes = spec.num_perm * 4  # affine32 signatures fit 32 bits
        # Lives as long as this index; close() (or garbage collection) deletes it.
        self.signatures = tempfile.TemporaryFile(prefix="trainyard-minhash-")  # noqa: SIM115
        self.kept = 0

    def _signature(self, text: str) -> np.ndarray:
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
        return minhash.hashvalues.astype(np.uint32)

    def _stored(self, doc: int) -> np.ndarray:
        raw = os.pread(self.signatures.fileno(), self.row_bytes, doc * self.row_bytes)
        return np.frombuffer(raw, dtype=np.uint32)

    def is_duplicate(self, text: str) -> bool:
        """True when a kept document is this similar; otherwise keeps this one."""
        signature = self._signature(text)
        keys = [_key64(signature[start:end].tobytes()) for start, end in self.bands]
        checked: set[int] = set()
        for index, key in zip(self.index, keys, strict=True):
            for doc in index.get(key):
                if doc in checked:
                    continue
                checked.add(doc)
                if np.mean(self._stored(doc) == signature) >= self.spec.threshold:
                    return True
        doc = self.kept
        os.pwrite(self.signatures.fileno(), signature.tobytes(), doc * self.row_bytes)
        for index, key in zip(self.index, keys, strict=True):
            index.add(key, doc)
        self.kept += 1
        return False

    @property
    def nbytes(self) -> int:
        """Bytes of memory the band indexes hold (the signatures are on disk)."""
        return sum(index.nbytes for index in self.index)

    def close(self) -> None:
        self.signatures.close()
