"""sha256 of a file: the one helper every part of the tree uses (stage inputs, shards, records,
weights files, remote copies)."""
from __future__ import annotations

import hashlib

BLOCK = 1 << 20


def sha256_file(path, block: int = BLOCK) -> str:
    """The hex sha256 of the file at ``path``, read in blocks of ``block`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
