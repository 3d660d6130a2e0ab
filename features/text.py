"""Transcripts to GloVe word vectors (Priyasad et al. §2.2, §3.1, ``shared/papers/003``): "all the
transcripts of the utterances are set to a maximum length of 100 and padded with 0s. Glove-300d
embeddings are used to convert the word sequence to a vector of (100, 300)".

GloVe (Pennington et al. 2014) is published as text, one word per line followed by its
``dim`` values separated by spaces (``glove.6B.300d.txt``: 400,000 lowercased words;
``glove.840B.300d.txt``: 2.2 M cased words, some containing spaces). ``load_glove`` parses the
file once into a cache beside it (or in ``cache_dir``): ``<name>.vectors.npy`` (float32
(n_words, dim), opened memory-mapped, so a 1-2 GB table costs no RAM until rows are read) and
``<name>.vocab.txt`` (the words, one per line, in row order). The cache is keyed by the source
file's size and mtime (``<name>.cache.json``); a changed source is parsed again.

Tokenisation (``tokenize``): the GloVe 6B/42B vocabularies come from Stanford-tokenised,
lowercased text, so words and punctuation marks are separate tokens and English clitics are
split off as in the Penn Treebank ("don't" → "do", "n't"; "she's" → "she", "'s"). Lowercasing is
an option (on for the uncased 6B/42B files, off for 840B). Tokens beyond ``max_len`` (100) are
dropped; shorter transcripts are zero-padded. A token missing from the vocabulary gets a zero
vector and ``oov`` = True; padding positions have ``oov`` = False and lie at index >= ``length``.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from features.errors import ParameterError

MAX_LEN, DIM = 100, 300
_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'\w+|\w+|[^\w\s]", re.UNICODE)


def tokenize(text: str, *, lowercase: bool = True) -> list[str]:
    """Words, clitics ("n't", "'s") and punctuation marks as separate tokens (PTB style)."""
    text = (text or "").replace("\u2019", "'")
    return _TOKEN.findall(text.lower() if lowercase else text)


def _cache_paths(path: str, cache_dir: str | None) -> tuple[str, str, str]:
    base = os.path.join(cache_dir or os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    return f"{base}.vectors.npy", f"{base}.vocab.txt", f"{base}.cache.json"


def _parse(path: str, vectors_path: str, vocab_path: str) -> None:
    """One pass over the text file: rows go straight into a .npy memmap that grows by doubling."""
    with open(path, encoding="utf-8") as f:
        first = f.readline().rstrip("\n").split(" ")
    dim = len(first) - 1
    if dim < 1:
        raise ParameterError(f"{path}: not a GloVe text file (line 1 has no vector)")
    words, rows, cap = [], 0, 1 << 16
    buf = np.empty((cap, dim), np.float32)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if len(parts) < dim + 1:
                if not line.strip():
                    continue
                raise ParameterError(f"{path}:{lineno}: expected a word and {dim} numbers, got {len(parts)} fields")
            if rows == cap:
                cap *= 2
                buf = np.resize(buf, (cap, dim))
            buf[rows] = np.asarray(parts[-dim:], dtype=np.float32)
            words.append(" ".join(parts[:-dim]))  # 840B has a few words containing spaces
            rows += 1
    tmp = f"{vectors_path}.tmp-{os.getpid()}.npy"
    np.save(tmp, buf[:rows])
    with open(f"{vocab_path}.tmp-{os.getpid()}", "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    os.replace(tmp, vectors_path)
    os.replace(f"{vocab_path}.tmp-{os.getpid()}", vocab_path)


def load_glove(path: str | os.PathLike, *, cache_dir: str | None = None) -> tuple[dict[str, int], np.ndarray]:
    """The GloVe table of a published text file, through the memory-mapped cache.

    Returns
    -------
    vocab : dict word -> row (the first occurrence of a word wins)
    vectors : np.memmap, shape (n_words, dim), float32, read-only
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ParameterError(f"GloVe file {path} does not exist")
    vectors_path, vocab_path, meta_path = _cache_paths(path, cache_dir)
    st = os.stat(path)
    key = {"source": os.path.basename(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        with open(meta_path) as f:
            fresh = json.load(f) == key and os.path.isfile(vectors_path) and os.path.isfile(vocab_path)
    except (OSError, ValueError):
        fresh = False
    if not fresh:
        os.makedirs(os.path.dirname(vectors_path), exist_ok=True)
        _parse(path, vectors_path, vocab_path)
        with open(meta_path, "w") as f:
            json.dump(key, f)
    vectors = np.load(vectors_path, mmap_mode="r")
    with open(vocab_path, encoding="utf-8") as f:
        words = f.read().split("\n")[: len(vectors)]
    vocab = {}
    for i, w in enumerate(words):
        vocab.setdefault(w, i)
    return vocab, vectors


def embed_tokens(tokens: list[str], *, vocab: dict[str, int], vectors: np.ndarray,
                 max_len: int = MAX_LEN) -> tuple[np.ndarray, int, np.ndarray]:
    """Tokens → (max_len, dim) float32 vectors, zero-padded / truncated to ``max_len``.

    Returns (vectors, length, oov): ``length`` = min(len(tokens), max_len); ``oov`` (max_len,)
    bool is True where a real token has no GloVe vector (its row is zero)."""
    if max_len < 1:
        raise ParameterError(f"max_len must be >= 1, got {max_len}")
    tokens = tokens[:max_len]
    out = np.zeros((max_len, vectors.shape[1]), np.float32)
    oov = np.zeros(max_len, bool)
    rows = [vocab.get(t, -1) for t in tokens]
    known = [i for i, r in enumerate(rows) if r >= 0]
    if known:
        idx = np.array([rows[i] for i in known])
        order = np.argsort(idx)  # sorted reads from the memmap
        out[np.array(known)[order]] = vectors[idx[order]]
    oov[[i for i, r in enumerate(rows) if r < 0]] = True
    return out, len(tokens), oov


def glove_transcripts(transcripts: list[str], *, vocab: dict[str, int], vectors: np.ndarray,
                      max_len: int = MAX_LEN, lowercase: bool = True) -> dict[str, np.ndarray]:
    """``{"glove": (n, max_len, dim) float32, "length": (n,) int32, "oov": (n, max_len) bool}``."""
    parts = [embed_tokens(tokenize(t, lowercase=lowercase), vocab=vocab, vectors=vectors, max_len=max_len)
             for t in transcripts]
    dim = vectors.shape[1]
    return {"glove": np.stack([p[0] for p in parts]) if parts else np.zeros((0, max_len, dim), np.float32),
            "length": np.array([p[1] for p in parts], np.int32),
            "oov": np.stack([p[2] for p in parts]) if parts else np.zeros((0, max_len), bool)}
