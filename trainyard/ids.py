"""Prefixed, time-ordered identifiers (`ds_...`, `job_...`) and API key helpers."""

from __future__ import annotations

import hashlib
import os
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A new id whose text sorts by creation time, so ids double as paging cursors."""
    millis = int(time.time() * 1000)
    return f"{prefix}_{_encode(millis, 10)}{_encode(int.from_bytes(os.urandom(10), 'big'), 16)}"


def new_api_key() -> str:
    """A fresh secret API key; only its hash is ever stored."""
    return "ty_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The stored form of a key or token (keys are high-entropy, so a plain hash suffices)."""
    return hashlib.sha256(secret.encode()).hexdigest()
