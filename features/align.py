"""The video frames of each audio window, trimmed or repeated to 16 (AVEF §2.1.2 "Visual data").

AVEF: each 655 ms voice segment has a time range [T_begin, T_end] in the original video, and "the
image sequences within this time interval" form its visual segment. The visual network takes 16
images: with more (their example: [100 ms, 755 ms] at 30 frames/s, 20 images) "we remove the
first two and the last two face images"; with fewer ("supposing it has only 12 images") "repeat
the first two and the last two frames". This module returns frame *indices* into the clip's
frames (stored once in the shard), never copies of images, so overlapping windows share frames.

This project's rules where the paper says nothing:

* A frame belongs to a window when its timestamp (presentation time of the frame's start, in
  seconds) lies in [t_begin, t_end); the comparisons allow 1 µs for floating-point rounding.
  (Counting this way gives 20 frames in the paper's example; note that ``int(0.655 × 30)`` is
  in fact 19, since 0.655 × 30 = 19.65.)
* Uneven trims and repeats: ``(m − 16) // 2`` frames are dropped from the start and the rest from
  the end (21 → 2 + 3); ``(16 − m) // 2`` copies of the first frame are prepended and the rest of
  the last appended (11 → 2 + 3).
* Frames without a face are left out *before* the 16-rule (the paper trims "face images": its
  frames are the output of face detection). A window keeps its slot but is masked (``ok`` False,
  frames all −1) when it holds no frame (``"no_frames"``) or fewer than ``min_found`` frames with
  a face (``"no_face"``). With ``min_found=1`` a single face frame is repeated 16 times.
* Windows of the audio chain that join voiced frames across a pause (``segments.place_windows``)
  are longer than 655 ms and so hold more than 16 frames (pause frames included); the 16-rule
  applies unchanged and keeps the middle of the window. Pass ``found & in_voiced_time`` as
  ``found`` to leave out frames that fall in the pause.
"""
from __future__ import annotations

import numpy as np

from features.errors import ParameterError

TIME_TOLERANCE_S = 1e-6


def frames_in_window(times: np.ndarray, *, t_begin: float, t_end: float) -> np.ndarray:
    """Indices of the frames whose timestamp lies in [t_begin, t_end) (± 1 µs rounding).

    ``times`` (n,) seconds → (m,) int64 indices, increasing.
    """
    times = np.asarray(times, dtype=np.float64)
    if t_end < t_begin:
        raise ParameterError(f"t_end must be >= t_begin, got [{t_begin}, {t_end})")
    inside = (times >= t_begin - TIME_TOLERANCE_S) & (times < t_end - TIME_TOLERANCE_S)
    return np.flatnonzero(inside)


def sixteen(indices: np.ndarray, *, n: int = 16) -> np.ndarray:
    """AVEF's rule (§2.1.2): trim or repeat a visual segment's frames to exactly ``n``.

    m > n: drop ``(m − n) // 2`` frames from the start and the rest from the end (20 → 2 + 2,
    21 → 2 + 3). m < n: prepend ``(n − m) // 2`` copies of the first frame and append the rest
    as copies of the last (12 → 2 + 2). m == n: unchanged. m == 0: all −1 (no frame; the caller
    masks the window, as ``align_windows`` does) rather than an exception, so one empty window
    does not stop a clip.

    ``indices`` (m,) → (n,) int32.
    """
    if n < 1:
        raise ParameterError(f"n must be >= 1, got {n}")
    idx = np.asarray(indices).astype(np.int32).ravel()
    m = idx.size
    if m == 0:
        return np.full(n, -1, dtype=np.int32)
    if m >= n:
        start = (m - n) // 2
        return idx[start:start + n].copy()
    before = (n - m) // 2
    return np.concatenate([np.repeat(idx[:1], before), idx, np.repeat(idx[-1:], n - m - before)])


def align_windows(times: np.ndarray, found: np.ndarray, *, t_begin: np.ndarray, t_end: np.ndarray,
                  n: int = 16, min_found: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` video frames of each audio window (AVEF §2.1.2; rules in the module docstring).

    Parameters
    ----------
    times : np.ndarray, shape (n_frames,), seconds — timestamp of each video frame of the clip
    found : np.ndarray, shape (n_frames,), bool — frames with a usable face
    t_begin, t_end : np.ndarray, shape (n_windows,), seconds — each audio window's time range
    n : int, frames per visual segment (16 in AVEF)
    min_found : int, fewest face frames a window needs (>= 1)

    Returns
    -------
    frames : np.ndarray, shape (n_windows, n), int32 — indices into the clip's frames, −1 in
        masked windows
    ok : np.ndarray, shape (n_windows,), bool
    reason : np.ndarray, shape (n_windows,), str — "" when ok, else "no_frames" or "no_face"
    """
    times = np.asarray(times, dtype=np.float64)
    found = np.asarray(found, dtype=bool)
    t_begin = np.atleast_1d(np.asarray(t_begin, dtype=np.float64))
    t_end = np.atleast_1d(np.asarray(t_end, dtype=np.float64))
    if times.ndim != 1 or found.shape != times.shape:
        raise ParameterError(f"times and found must have the same shape (n_frames,), "
                             f"got {times.shape} and {found.shape}")
    if t_begin.ndim != 1 or t_begin.shape != t_end.shape:
        raise ParameterError(f"t_begin and t_end must have the same shape (n_windows,), "
                             f"got {t_begin.shape} and {t_end.shape}")
    if min_found < 1:
        raise ParameterError(f"min_found must be >= 1, got {min_found}")
    frames = np.full((len(t_begin), n), -1, dtype=np.int32)
    ok = np.zeros(len(t_begin), dtype=bool)
    reason = np.full(len(t_begin), "", dtype=object)
    for w, (tb, te) in enumerate(zip(t_begin, t_end)):
        inside = frames_in_window(times, t_begin=tb, t_end=te)
        faces = inside[found[inside]]
        if inside.size == 0:
            reason[w] = "no_frames"
        elif faces.size < min_found:
            reason[w] = "no_face"
        else:
            frames[w] = sixteen(faces, n=n)
            ok[w] = True
    return frames, ok, reason.astype(str)
