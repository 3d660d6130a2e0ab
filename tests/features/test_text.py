"""GloVe reader, cache, tokeniser, padding and the out-of-vocabulary mask (Priyasad §3.1)."""
import os

import numpy as np
import pytest

from features import text
from features.errors import ParameterError

WORDS = ["the", ",", ".", "library", "opens", "on", "monday", "do", "n't", "'s", "she", "new york"]


def write_glove(path, words=WORDS, dim=300, seed=0):
    """A small file in the published GloVe text format: word, then dim numbers, space separated."""
    vecs = np.random.default_rng(seed).normal(size=(len(words), dim)).astype(np.float32)
    with open(path, "w", encoding="utf-8") as f:
        for w, v in zip(words, vecs):
            f.write(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n")
    return {w: np.array([float(f"{x:.6f}") for x in v], np.float32) for w, v in zip(words, vecs)}


@pytest.mark.parametrize("sentence, tokens", [
    ("The library opens on Monday, after the holiday.",
     ["the", "library", "opens", "on", "monday", ",", "after", "the", "holiday", "."]),
    ("I don't know; she's here!", ["i", "do", "n't", "know", ";", "she", "'s", "here", "!"]),
    ("She\u2019s", ["she", "'s"]),
    ("", []),
])
def test_tokenize_ptb_style(sentence, tokens):
    assert text.tokenize(sentence) == tokens


def test_tokenize_keeps_case_when_asked():
    assert text.tokenize("New York", lowercase=False) == ["New", "York"]


def test_load_glove_reads_the_text_format_through_a_memmapped_cache(tmp_path):
    ref = write_glove(tmp_path / "glove.test.300d.txt")
    vocab, vectors = text.load_glove(tmp_path / "glove.test.300d.txt", cache_dir=str(tmp_path / "cache"))
    assert isinstance(vectors, np.memmap) and vectors.shape == (len(WORDS), 300) and vectors.dtype == np.float32
    assert set(vocab) == set(WORDS)  # "new york": a word with a space (glove.840B has some)
    for w, v in ref.items():
        np.testing.assert_array_equal(vectors[vocab[w]], v)
    cached = os.listdir(tmp_path / "cache")
    assert sorted(cached) == sorted(f"glove.test.300d.txt.{s}" for s in ("vectors.npy", "vocab.txt", "cache.json"))
    # a second load reads the cache, not the text: vandalise the cache and see it used
    npy = tmp_path / "cache" / "glove.test.300d.txt.vectors.npy"
    arr = np.load(npy)
    arr[0] = 7.0
    np.save(npy, arr)
    assert np.all(text.load_glove(tmp_path / "glove.test.300d.txt", cache_dir=str(tmp_path / "cache"))[1][0] == 7.0)
    # a changed source (size / mtime) is parsed again
    write_glove(tmp_path / "glove.test.300d.txt", words=WORDS[:3], seed=1)
    vocab2, vectors2 = text.load_glove(tmp_path / "glove.test.300d.txt", cache_dir=str(tmp_path / "cache"))
    assert len(vectors2) == 3 and set(vocab2) == set(WORDS[:3])


def test_bad_glove_files(tmp_path):
    with pytest.raises(ParameterError, match="does not exist"):
        text.load_glove(tmp_path / "nope.txt")
    (tmp_path / "short.txt").write_text("a 1 2 3\nb 1 2\n")
    with pytest.raises(ParameterError, match="short.txt:2: expected a word and 3 numbers"):
        text.load_glove(tmp_path / "short.txt")


def test_transcripts_to_100_by_300_with_length_and_oov(tmp_path):
    ref = write_glove(tmp_path / "g.txt")
    vocab, vectors = text.load_glove(tmp_path / "g.txt", cache_dir=str(tmp_path))
    long = " ".join(["the library"] * 70)  # 140 tokens: truncated to 100
    out = text.glove_transcripts(["The library opens on Monday, after the holiday.", long, ""],
                                 vocab=vocab, vectors=vectors)
    assert out["glove"].shape == (3, 100, 300) and out["glove"].dtype == np.float32
    assert out["length"].tolist() == [10, 100, 0]
    tokens = text.tokenize("The library opens on Monday, after the holiday.")
    for k, tok in enumerate(tokens):
        if tok in ref:
            np.testing.assert_array_equal(out["glove"][0, k], ref[tok])
            assert not out["oov"][0, k]
        else:  # "after", "holiday": not in the small vocabulary
            assert out["oov"][0, k] and not out["glove"][0, k].any()
    assert out["oov"][0].sum() == 2
    assert not out["glove"][0, 10:].any() and not out["oov"][0, 10:].any()  # zero padding, not OOV
    np.testing.assert_array_equal(out["glove"][1, 99], ref["library"])
    assert not out["glove"][2].any() and not out["oov"][2].any()
