"""Contextual token vectors of the transcripts: BERT (Devlin et al., "BERT: pre-training of deep
bidirectional Transformers for language understanding", NAACL 2019) or RoBERTa (Liu et al. 2019)
through ``transformers``' ``AutoModel`` + ``AutoTokenizer`` (issue 22 item 5): the contextual
counterpart of the GloVe (100, 300) input of Priyasad et al. §3.1 (``features.text``).

Layout (as ``features.text.glove_transcripts``): per transcript a (max_len, hidden_size) float32
array, zero-padded to ``max_len`` (100) rows, its ``length`` and a ``truncated`` flag.

* Rows are the model's input positions, **special tokens kept**: row 0 is [CLS] (``<s>`` for
  RoBERTa; the sequence summary of Devlin §3), rows 1 … length − 2 the word pieces, row
  length − 1 [SEP]. ``max_len`` bounds the model input itself (the tokenizer's own truncation to
  ``max_len`` positions, [SEP] kept), so the vectors are exactly what the model computed and no
  position is dropped after the fact. An empty transcript has length 2 ([CLS] [SEP]).
* The vectors are the last hidden state (the encoder's top layer, after its LayerNorm).
* ``truncated`` is True when the transcript has more than ``max_len`` positions (specials
  included) and its tail was cut off.

Tokenisation is the model's own (WordPiece for BERT, byte-level BPE for RoBERTa), from the folder's
tokenizer files; casing follows the tokenizer (``do_lower_case`` for the uncased BERTs). The
weights folder is a Hugging Face folder read with ``local_files_only``: nothing is downloaded.
"""
from __future__ import annotations

import numpy as np

from features.errors import ParameterError
from features.hf import from_pretrained, precision_context, require_model_folder

MAX_LEN = 100
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")
#: model types whose positions start after the padding index (RoBERTa's position ids = pad + 1 + i)
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


def load_text_model(folder, device: str = "cpu", *, feature: str = "bert", section: str = "BERT",
                    key: str = "folder"):
    """(model, tokenizer): ``AutoModel`` (eval mode, on ``device``) and ``AutoTokenizer`` of a
    local Hugging Face folder. A missing, empty or incomplete folder (no config.json, weights or
    tokenizer file) is a ``FileNotFoundError`` naming it, the workflows.cfg key and how to switch
    the feature off."""
    from transformers import AutoModel, AutoTokenizer

    folder = require_model_folder(folder, feature=feature, section=section, key=key, what="text model folder",
                                  extra=TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return from_pretrained(AutoModel, folder, device), tokenizer


def max_positions(model) -> int:
    """The longest input the model's position embeddings allow (512 for BERT and RoBERTa)."""
    config = model.config
    n = int(config.max_position_embeddings)
    if config.model_type in _OFFSET_POSITIONS:
        n -= int(config.pad_token_id) + 1
    return n


def token_vectors(model, tokenizer, texts: list, *, max_len: int = MAX_LEN, batch_size: int = 32,
                  device: str = "cpu", precision: str = "fp32") -> dict[str, np.ndarray]:
    """Last-hidden-state vectors of each transcript's tokens, special tokens kept (module docstring).

    Parameters
    ----------
    model, tokenizer : ``load_text_model``'s result
    texts : n transcripts (None counts as "")
    max_len : positions kept per transcript, [CLS] and [SEP] included (Priyasad §3.1: 100)
    batch_size : transcripts per forward pass (padded to the longest, attention-masked)
    device : ``"cpu"`` or ``"cuda[:k]"``
    precision : ``"fp32"``; ``"fp16"`` / ``"bf16"`` autocast on a GPU (bf16 also on the CPU)

    Returns
    -------
    ``{"bert": (n, max_len, hidden_size) float32, zero beyond each length,
    "length": (n,) int32 (positions used, 2 … max_len), "truncated": (n,) bool}``
    """
    import torch

    from features.embeddings import pick_device

    if not 2 <= max_len <= max_positions(model):
        raise ParameterError(f"max_len must lie in [2, {max_positions(model)}] (the model's positions, [CLS] and "
                             f"[SEP] included), got {max_len}")
    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
    device = pick_device(device)
    context = precision_context(precision, device)
    texts = [t or "" for t in texts]
    n, dim = len(texts), int(model.config.hidden_size)
    out = {"bert": np.zeros((n, max_len, dim), np.float32), "length": np.zeros(n, np.int32),
           "truncated": np.zeros(n, bool)}
    if not n:
        return out
    full = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    out["truncated"][:] = [len(ids) > max_len for ids in full]
    model.to(device)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            enc = tokenizer(texts[start:start + batch_size], add_special_tokens=True, truncation=True,
                            max_length=max_len, padding="longest", return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            with context:
                hidden = model(**enc).last_hidden_state
            hidden = hidden.float().cpu().numpy()
            mask = enc["attention_mask"].bool().cpu().numpy()   # right or left padding alike
            for j, keep in enumerate(mask):
                out["bert"][start + j, :keep.sum()] = hidden[j, keep]
            out["length"][start:start + len(mask)] = mask.sum(axis=1)
    return out


#: the shard features this extractor's stage (``pipeline.embeddings.BERT``) writes (``features.registry``)
SHARD_FEATURES = (
    dict(name="bert", dataset="text/bert", rows="clip", dtype="float32", shape="(100, D)", modality="text",
         stage="BERT", switch='[BERT] weights, "bert" in [Shard] embeddings and a transcript column', read="clip",
         embedding="bert", needs="weights+transcript", default=False, length="text/bert_length",
         enable="build the shards with the BERT stage and a transcript column (docs/embeddings.md)",
         paper="Devlin et al. 2019: last-layer token vectors, GloVe's (100, D) layout"),
)
