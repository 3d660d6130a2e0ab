"""Loading a Hugging Face model folder for the embedding extractors (``features.wav2vec``,
``features.image_encoder``, ``features.bert``): the folder's check with the message every embedding
stage gives, local-only strict loading, and the autocast context of a precision."""
from __future__ import annotations

import contextlib
import os

from features.errors import ParameterError

PRECISIONS = ("fp32", "fp16", "bf16")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def require_model_folder(folder, *, feature: str, section: str, key: str, what: str,
                         extra: tuple[str, ...] = ()) -> str:
    """Stop before any work when a Hugging Face model folder is missing, empty or incomplete.

    Raises ``features.embeddings.missing_input``'s ``FileNotFoundError``, the message of the VGGish /
    VGGFace / GloVe files too: the folder, the workflows.cfg key and how to switch the feature off.
    ``extra``: file names of which at least one must be present too (a tokenizer's)."""
    folder = os.fspath(folder) if folder is not None else ""
    if not folder or not os.path.isdir(folder):
        problem = "does not exist" if not os.path.exists(folder) else "is not a folder"
    elif not os.listdir(folder):
        problem = "is empty"
    elif not os.path.isfile(os.path.join(folder, "config.json")):
        problem = "has no config.json"
    elif not any(os.path.isfile(os.path.join(folder, f)) for f in WEIGHT_FILES):
        problem = f"has no weights file ({', '.join(WEIGHT_FILES)})"
    elif extra and not any(os.path.isfile(os.path.join(folder, f)) for f in extra):
        problem = f"has none of {', '.join(extra)}"
    else:
        return folder
    from features.embeddings import missing_input

    raise missing_input(feature, what, folder, problem, section=section, key=key,
                        put="Put a Hugging Face model folder there (config.json and model.safetensors, from "
                            "save_pretrained or a hub snapshot copied by hand; nothing is downloaded)")


def precision_context(precision: str, device: str):
    """The autocast context of ``precision`` on ``device``: fp32 → none; fp16 / bf16 → autocast on
    a GPU; bf16 on the CPU → CPU autocast (for CPUs with bf16 units, and so tests can run it);
    fp16 on the CPU is refused."""
    import torch

    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=dtype)
    if precision == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    raise ParameterError(f"precision 'fp16' needs a GPU; on {device!r} use fp32 or bf16")


#: parameters a checkpoint may lack without changing our outputs (BERT's / RoBERTa's pooler, the
#: SpecAugment mask vector of the speech models: used in training only)
_UNUSED = ("pooler.", "masked_spec_embed")


def from_pretrained(cls, folder: str, device: str, **kwargs):
    """``cls.from_pretrained`` from the local folder only, fp32 weights, eval mode, on ``device``.

    Quiet (no progress bar, no load report: weights the model does not use, such as CLIP's text
    tower or wav2vec 2.0's quantizer, are expected), but strict about what it uses: a weight the
    folder lacks would be left random, so that is a ``ParameterError`` naming the keys."""
    import torch
    from transformers.utils import logging as hf_logging

    from features.embeddings import pick_device

    device = pick_device(device)
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                          output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    missing = sorted(k for k in info.get("missing_keys", ()) if not any(u in k for u in _UNUSED))
    if missing:
        raise ParameterError(f"{folder}: the weights lack {len(missing)} tensors the {cls.__name__} needs "
                             f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}); they would be random. "
                             f"Is the folder a checkpoint of this architecture?")
    return model.to(device).eval()
