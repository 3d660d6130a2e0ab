"""Voice activity weights with webrtcvad.

AVEF §2.1.1 ("VAD & Weight assigning") gives silent frames weight 0 and voiced frames weight 1
and discards the weight-0 intervals. AVEF used an MRCG + DNN detector; this project uses
webrtcvad (the GMM detector of WebRTC), whose decisions are made on 10, 20 or 30 ms frames of
16-bit PCM at 8, 16, 32 or 48 kHz. The result is always one 0/1 weight per 10 ms.
"""
from __future__ import annotations

import numpy as np

from features.errors import ParameterError

VAD_RATES = (8000, 16000, 32000, 48000)
VAD_FRAME_MS = (10, 20, 30)
STEP_MS = 10
#: 10 ms steps converted to 16-bit PCM at a time (30 s; a multiple of every decision length, so
#: the decisions are those of the whole clip at once): a 2-hour clip no longer takes a float32
#: copy, a clipped copy and its PCM bytes of the whole signal (~1 GB per hour at 16 kHz).
BLOCK_STEPS = 3000


def vad_weights(*, y: np.ndarray, sr: int, aggressiveness: int = 2, frame_ms: int = 30) -> np.ndarray:
    """One 0/1 voice weight per 10 ms of ``y``.

    Parameters
    ----------
    y : np.ndarray, shape (n,), float in [-1, 1] (or a 1-D sequence that slices to arrays, e.g. an
        HDF5 dataset: it is read ``BLOCK_STEPS`` steps at a time)
    sr : int, one of 8000, 16000, 32000, 48000 Hz (webrtcvad's rates)
    aggressiveness : int, 0 (keeps most) to 3 (drops most non-speech)
    frame_ms : int, 10, 20 or 30 — the length of each webrtcvad decision; its decision is the
        weight of each 10 ms step it covers.

    Returns
    -------
    w : np.ndarray, shape (n // (sr / 100),), uint8. A trailing part shorter than ``frame_ms``
        is decided on its own whole 10 ms steps; a remainder under 10 ms has no weight.
    """
    import webrtcvad

    if sr not in VAD_RATES:
        raise ParameterError(f"webrtcvad works at {VAD_RATES} Hz, got sr={sr}")
    if frame_ms not in VAD_FRAME_MS:
        raise ParameterError(f"webrtcvad frames are {VAD_FRAME_MS} ms, got frame_ms={frame_ms}")
    if aggressiveness not in (0, 1, 2, 3):
        raise ParameterError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness}")
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    if len(y.shape) != 1:
        raise ParameterError(f"y must be mono with shape (n,), got {y.shape}")
    step = sr * STEP_MS // 1000
    n_steps = y.shape[0] // step
    vad = webrtcvad.Vad(aggressiveness)
    w = np.zeros(n_steps, dtype=np.uint8)
    per = frame_ms // STEP_MS
    span = max(per, BLOCK_STEPS - BLOCK_STEPS % per)  # whole decisions per block
    for b0 in range(0, n_steps, span):  # 16-bit PCM a block at a time, not the whole clip
        b1 = min(n_steps, b0 + span)
        pcm = (np.clip(np.asarray(y[b0 * step: b1 * step]), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        i = b0
        while i < b1:
            k = min(per, n_steps - i)
            if k * STEP_MS not in VAD_FRAME_MS:  # a 10 ms remainder of a 30 ms frame: 2 → 20 ms
                k = max(m for m in (1, 2, 3) if m <= k)
            chunk = pcm[2 * (i - b0) * step: 2 * (i - b0 + k) * step]
            w[i: i + k] = vad.is_speech(chunk, sr)
            i += k
    return w
