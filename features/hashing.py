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


def tree_sha256(folder) -> str:
    """The sha256 of a folder's files: their relative paths and contents, in sorted order (a model
    folder in the Hugging Face format: config, weights, tokenizer)."""
    import os

    h = hashlib.sha256()
    for root, dirs, names in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode() + b"\0" + sha256_file(path).encode())
    return h.hexdigest()
