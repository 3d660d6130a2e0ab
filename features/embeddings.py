"""Pretrained embeddings: shared inference helpers, the raw 16 kHz waveform, dlib's face descriptor.

The networks live in their own modules: ``features.vggish`` (Hershey et al. 2017, the audio
embedding of Lucas et al. §3, ``shared/papers/001``) and ``features.vggface`` (Parkhi et al. 2015
VGG-16, Lucas §3; the VGG-19 at 72×72 of Hsu & Wu §III-B, Table 2, ``shared/papers/000``). This
module holds what they share: picking the device, running a model over many inputs in batches
(optionally fp16/bf16 on a GPU), checking and hashing weight files, and two extractors that need no
weights of their own: the raw waveform (the SincNet input of Priyasad et al. §2.1, §3.1,
``shared/papers/003``) and dlib's 128-d ResNet face descriptor (weights shipped by the
``face-recognition-models`` package, so it works on a fresh machine).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from features.errors import ParameterError
from features.hashing import sha256_file, tree_sha256

PRECISIONS = ("fp32", "fp16", "bf16")
#: dlib's same-person threshold for its ResNet descriptor (dlib face_recognition.py example:
#: "if the distance is less than 0.6 they are the same person"; 99.38 % on LFW).
DLIB_SAME_PERSON = 0.6
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"


# -- devices and batched inference -------------------------------------------------------------
def pick_device(device: str = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other values are checked."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} asked for, but torch sees no GPU (use device=auto or cpu)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ParameterError(f"device must be 'auto', 'cpu' or 'cuda[:k]', got {device!r}")
    return device


def autocast_dtype(precision: str, device: str):
    """The torch dtype of ``torch.autocast`` for ``precision`` on ``device``; None for fp32.

    fp16 / bf16 are GPU options: on the CPU they are refused (slow there, and the point of the
    option is GPU throughput)."""
    import torch

    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if not device.startswith("cuda"):
        raise ParameterError(f"precision {precision!r} needs a GPU; on {device!r} use fp32")
    return torch.float16 if precision == "fp16" else torch.bfloat16


def batched_forward(fn, x: np.ndarray, *, batch_size: int = 64, device: str = "cpu",
                    precision: str = "fp32", prepare=None) -> np.ndarray:
    """Run ``fn`` (a module or function of a torch batch) over ``x`` in batches.

    Parameters
    ----------
    fn : callable, torch.Tensor (b, ...) on ``device`` -> torch.Tensor (b, ...)
    x : np.ndarray, shape (n, ...), the inputs
    batch_size : inputs per forward pass
    device : ``"cpu"`` or ``"cuda[:k]"`` (``pick_device``)
    precision : ``"fp32"``, or ``"fp16"`` / ``"bf16"`` autocast on a GPU
    prepare : optional callable applied to each torch batch on the device before ``fn``
        (e.g. resizing and mean subtraction, so only uint8 crosses the bus)

    Returns
    -------
    np.ndarray, float32, shape (n, ...) — the outputs, in input order (empty (0,) when n = 0)
    """
    import torch

    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
    dtype = autocast_dtype(precision, device)
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(device)
            if prepare is not None:
                xb = prepare(xb)
            if dtype is None:
                yb = fn(xb)
            else:
                with torch.autocast(device_type="cuda", dtype=dtype):
                    yb = fn(xb)
            outs.append(yb.float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


# -- weight files -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def folder_sha256(path: str | os.PathLike) -> str:
    """``features.hashing.tree_sha256`` of a model folder, hashed once per process while no file in
    it changes size or mtime: every batch task of a stage puts it in its digest, and a 1.2 GB
    wav2vec 2.0 folder takes seconds to hash."""
    path = os.path.abspath(path)
    signature = []
    for root, dirs, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(root, name))
            signature.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return _tree_sha256(path, tuple(sorted(signature)))


@functools.lru_cache(maxsize=8)
def _tree_sha256(path: str, signature: tuple) -> str:
    return tree_sha256(path)


def missing_input(feature: str, what: str, path, problem: str, *, section: str, key: str,
                  put: str = "Put the file there") -> FileNotFoundError:
    """The error every embedding stage gives when its configured weights file or model folder
    cannot be used: it names the file, the workflows.cfg key, how to fix it and how to switch the
    feature off (``pipeline.embeddings.require_file``, ``features.hf.require_model_folder``)."""
    return FileNotFoundError(
        f"{feature}: the {what} {path!r} {problem} (configured as `{key}` under [{section}] in workflows.cfg, "
        f"or --{section}-{key.replace('_', '-')} on the command line). {put} or point `{key}` at it "
        f"(docs/embeddings.md); to build without {feature}, set `{key} =` (empty) under [{section}] in "
        f"workflows.cfg or leave \"{feature}\" out of `[Shard] embeddings`.")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (hashed once per process for a given size and mtime)."""
    st = os.stat(path)
    return _sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def load_state_dict(path: str | os.PathLike) -> dict:
    """A torch ``state_dict`` (.pt/.pth) read with ``torch.load(weights_only=True)``: tensors,
    dicts and plain numbers only, never arbitrary pickled objects. A checkpoint that wraps its
    weights (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped."""
    import torch

    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal or corrupt file
        raise ParameterError(f"{os.fspath(path)}: not a torch state_dict readable with "
                             f"weights_only=True ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ParameterError(f"{os.fspath(path)}: expected a dict of tensors, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_state_dict(model, state: dict, *, path: str, keys_doc: str) -> None:
    """Load ``state`` into ``model`` strictly; a missing / unexpected key or a shape mismatch is a
    ``ParameterError`` that names the file, the key and the expected layout (``keys_doc``)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state
           and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or bad:
        parts = ([f"missing keys {missing[:6]}"] if missing else []) + \
                ([f"unexpected keys {extra[:6]}"] if extra else []) + \
                [f"{k}: file has shape {a}, the model needs {b}" for k, a, b in bad[:6]]
        raise ParameterError(f"{path}: weights do not fit the model: {'; '.join(parts)}. Expected: {keys_doc}")
    model.load_state_dict(state, strict=True)


# -- the raw waveform (SincNet input) -----------------------------------------------------------
def deemphasis(y: np.ndarray, *, coef: float = 0.97, block: int = 64) -> np.ndarray:
    """Undo pre-emphasis: x(n) = y(n) + coef·x(n−1), x(−1) = 0, the exact inverse of
    ``features.audio.preemphasis`` (AVEF §2.1.1). A one-pole IIR filter (pole at ``coef`` < 1, so
    float rounding does not grow), computed in float64; equal to ``scipy.signal.lfilter([1],
    [1, -coef], y)`` (a test compares them) without importing scipy.signal (seconds of start-up
    in every build process). ``coef = 0`` returns a copy.

    Block form: cut y into rows of ``block`` samples; inside a row x = T·y_row + c^(k+1)·x_prev with
    T[i, j] = c^(i−j) (i ≥ j), so one matrix product gives every row's zero-state response and a
    short loop over rows carries the state."""
    if not 0.0 <= coef < 1.0:
        raise ParameterError(f"coef must lie in [0, 1), got {coef}")
    y = np.asarray(y, dtype=np.float64)
    if coef == 0.0 or y.size == 0:
        return y.astype(np.float32)
    n, k = y.size, np.arange(block)
    rows = np.zeros(-(-n // block) * block)
    rows[:n] = y
    rows = rows.reshape(-1, block)
    lag = k[:, None] - k[None, :]
    T = np.where(lag >= 0, coef ** np.maximum(lag, 0), 0.0)
    Z = rows @ T.T
    cb, last, carry = coef ** block, Z[:, -1].tolist(), [0.0]
    for z in last[:-1]:  # x at the end of row r = its zero-state end + c^block · x at the end of row r−1
        carry.append(z + cb * carry[-1])
    Z += np.asarray(carry)[:, None] * (coef ** (k + 1))[None, :]
    return Z.reshape(-1)[:n].astype(np.float32)


def sincnet_waveform(*, y: np.ndarray, normalize: str = "peak") -> np.ndarray:
    """The waveform that SincNet reads (Priyasad §2.1, §3.1): 16 kHz samples, no pre-emphasis,
    "after amplitude normalization" (Fig. 1). ``normalize="peak"`` divides by max |y| (as
    SincNet's TIMIT preparation does), ``"none"`` keeps the amplitude. An all-zero clip stays zero.

    The 250 ms chunks with a 10 ms shift (§3.1) are cut by the trainer from this array; they are
    not stored (they would repeat every sample 25 times)."""
    if normalize not in ("peak", "none"):
        raise ParameterError(f"normalize must be 'peak' or 'none', got {normalize!r}")
    y = np.asarray(y, dtype=np.float32)
    peak = float(np.abs(y).max()) if y.size else 0.0
    return y / peak if normalize == "peak" and peak > 0 else y.copy()


# -- dlib's ResNet face descriptor ----------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def load_face_descriptor():
    """(``dlib.face_recognition_model_v1``, 5-point ``dlib.shape_predictor``) with the weights of
    the ``face-recognition-models`` package (located, not imported: ``features.face.model_path``);
    loaded once per process (both are read-only)."""
    import dlib

    from features.face import model_path
    from features.landmarks import load_predictor

    return dlib.face_recognition_model_v1(model_path(DESCRIPTOR_FILE)), load_predictor(5)


def face_chips(frames: np.ndarray, boxes: np.ndarray, found: np.ndarray, *, predictor,
               size: int = 150, padding: float = 0.25) -> np.ndarray:
    """dlib's aligned face chips: 5 landmarks inside each box, then ``dlib.get_face_chip``.

    Parameters
    ----------
    frames : (n, H, W, 3) uint8 RGB
    boxes : (n, 4) [x0, y0, x1, y1] pixels (``features.face.track_faces``)
    found : (n,) bool; chips are made for these frames only
    predictor : the 5-point ``dlib.shape_predictor`` (``load_face_descriptor()[1]``)
    size, padding : dlib's defaults for its descriptor network (150 px, 25 % padding)

    Returns
    -------
    (k, size, size, 3) uint8, one chip per found frame, in frame order
    """
    import dlib

    idx = np.flatnonzero(np.asarray(found, bool))
    chips = np.zeros((len(idx), size, size, 3), np.uint8)
    for j, i in enumerate(idx):
        frame = np.ascontiguousarray(frames[i], dtype=np.uint8)
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
        shape = predictor(frame, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        chips[j] = dlib.get_face_chip(frame, shape, size=size, padding=padding)
    return chips


def face_descriptors(chips: np.ndarray, *, model, batch_size: int = 64, flip: bool = False) -> np.ndarray:
    """128-d dlib ResNet descriptors of aligned 150×150 chips (``face_chips``): (k, 128) float32.
    Two faces of one person lie within ``DLIB_SAME_PERSON`` (0.6) Euclidean distance.

    ``flip``: the mean of the descriptors of the chip and of its mirror image (left-right), at
    twice the cost. dlib's own ``num_jitters`` averages over random crops and mirror flips, but
    with its random draws a frame's descriptor is not reproducible; the mirror alone is
    deterministic. On the carphone clip (a 53 px face, 96 frames) it takes the share of frame
    pairs within 0.6 from 95.5 % to 98.2 % and the median pair distance from 0.44 to 0.41."""
    chips = np.asarray(chips, np.uint8)
    if flip:
        return (face_descriptors(chips, model=model, batch_size=batch_size)
                + face_descriptors(np.ascontiguousarray(chips[:, :, ::-1]), model=model, batch_size=batch_size)) / 2
    out = [np.asarray(model.compute_face_descriptor(list(chips[s:s + batch_size])), np.float32)
           for s in range(0, len(chips), batch_size)]
    return np.concatenate(out).reshape(-1, 128) if out else np.zeros((0, 128), np.float32)
