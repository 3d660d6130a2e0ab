"""655 ms windows over voiced frames (AVEF §2.1.1 "Segmenting") and their place on the timeline.

AVEF: 25 ms frames with a 10 ms shift, 64 frames per segment (655 ms = 25 + 63 × 10), 30 frames
of overlap between adjacent segments (so a hop of 34 frames); frames whose VAD weight is 0 are
discarded before segmenting (their 2.7 s example becomes 1.6 s).

How windows treat the gaps (this project's rule): the voiced frames of a clip are taken in time
order with the silent ones removed, exactly as AVEF does, and windows of 64 frames are laid over
that sequence every 34 frames. A window may therefore join frames from both sides of a pause; it
records the 64 frame indices it uses on the clip's own frame grid, so it maps back to the clip:
``t_begin`` = start of its first frame, ``t_end`` = end of its last frame (= t_begin + 0.655 s
when the window has no gap, more when it spans one; ``contiguous`` says which). A run of n voiced
frames gives ⌊(n − 64) / 34⌋ + 1 windows; a trailing part shorter than 64 frames is dropped.
With ``keep_silent=True`` the windows are laid over all frames instead, and a window whose frames
are mostly silent gets weight 0 (AVEF's weight) instead of being dropped.
Each window belongs to the prosodic unit that holds the most of its frames (the earlier on a tie).
"""
from __future__ import annotations

import numpy as np

from features.errors import ClipError, ParameterError


def frame_times(n_frames: int, *, frame_ms: float = 25.0, hop_ms: float = 10.0) -> np.ndarray:
    """(n_frames, 2) start and end in seconds of frame t: [t·hop, t·hop + frame)."""
    t0 = np.arange(n_frames) * hop_ms / 1000.0
    return np.stack([t0, t0 + frame_ms / 1000.0], axis=1)


def frame_weights(vad: np.ndarray, *, n_frames: int, frame_ms: float = 25.0, hop_ms: float = 10.0,
                  vad_step_ms: float = 10.0) -> np.ndarray:
    """The VAD weight of each analysis frame: the weight of the 10 ms step holding its centre.

    ``vad`` has one 0/1 weight per ``vad_step_ms``; frames whose centre lies past the last step
    get weight 0. Returns (n_frames,) uint8.
    """
    vad = np.asarray(vad, dtype=np.uint8)
    centre_ms = np.arange(n_frames) * hop_ms + frame_ms / 2.0
    step = np.floor(centre_ms / vad_step_ms).astype(np.int64)
    out = np.zeros(n_frames, dtype=np.uint8)
    inside = step < vad.size
    out[inside] = vad[step[inside]]
    return out


def count_windows(n: int, *, window_frames: int = 64, hop_frames: int = 34) -> int:
    """Windows in a sequence of n frames: ⌊(n − window) / hop⌋ + 1, or 0 when n < window."""
    return 0 if n < window_frames else (n - window_frames) // hop_frames + 1


def place_windows(*, weights: np.ndarray, window_frames: int = 64, hop_frames: int = 34,
                  keep_silent: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Lay windows over a clip's frames (see the module docstring for the rule).

    Parameters
    ----------
    weights : np.ndarray, shape (n_frames,), 0/1 VAD weight per analysis frame

    Returns
    -------
    frames : np.ndarray, shape (n_windows, window_frames), int32 — frame indices, increasing
    weight : np.ndarray, shape (n_windows,), uint8 — 1 when at least half the frames are voiced

    Raises ``ClipError`` (``no_voiced_frames`` or ``too_short``) when no window fits.
    """
    if window_frames < 1 or hop_frames < 1:
        raise ParameterError(f"window_frames and hop_frames must be >= 1, got {window_frames}, {hop_frames}")
    weights = np.asarray(weights, dtype=np.uint8)
    voiced = np.flatnonzero(weights)
    if not keep_silent and voiced.size == 0:
        raise ClipError("no_voiced_frames", "the voice activity detector found no voiced frame")
    pool = np.arange(weights.size) if keep_silent else voiced
    n = count_windows(pool.size, window_frames=window_frames, hop_frames=hop_frames)
    if n == 0:
        what = "frames" if keep_silent else "voiced frames"
        raise ClipError("too_short", f"{pool.size} {what}, fewer than one window of {window_frames}")
    starts = np.arange(n) * hop_frames
    frames = pool[starts[:, None] + np.arange(window_frames)[None, :]].astype(np.int32)
    weight = (2 * weights[frames].sum(axis=1) >= window_frames).astype(np.uint8)
    return frames, weight


def window_units(frames: np.ndarray, *, units: np.ndarray, frame_ms: float = 25.0,
                 hop_ms: float = 10.0) -> np.ndarray:
    """Index of the unit (rows of ``prosody.prosodic_units``) holding most of each window's frames.

    A frame belongs to the unit holding its centre. Returns (n_windows,) int32.
    """
    centre = frames * (hop_ms / 1000.0) + frame_ms / 2000.0
    unit_of_frame = np.searchsorted(units[:, 1], centre, side="right")
    unit_of_frame = np.minimum(unit_of_frame, len(units) - 1)
    out = np.empty(len(frames), dtype=np.int32)
    for i, row in enumerate(unit_of_frame):
        values, counts = np.unique(row, return_counts=True)
        out[i] = values[np.argmax(counts)]
    return out
