"""Stable ids: content hashes that are the same on every machine, run and library version.

(polars' and Python's own hashes are seeded or version-dependent, so they cannot serve as lineage keys.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def content_id(text: str) -> str:
    """32 hex characters of BLAKE2b over the UTF-8 text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def content_ids(texts: Iterable[str]) -> list[str]:
    blake2b = hashlib.blake2b
    return [blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in texts]


def stable_rank(*parts: object) -> str:
    """A deterministic pseudo-random sort key (sampling that is the same on every machine and run)."""
    return content_id("\x1f".join(str(p) for p in parts))
