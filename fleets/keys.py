"""Secrets (provisioning keys, device API keys, service keys) are stored only as SHA-256 hashes.

The keys we generate carry 256 bits of randomness, so an unsalted fast hash is enough and lets us
find a key by an indexed lookup of its hash; comparisons of hashes use constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def generate_key() -> str:
    return secrets.token_hex(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return bool(stored_hash) and hmac.compare_digest(hash_key(key), stored_hash)
