"""The video frames of each audio window, trimmed or repeated to 16 (AVEF §2.1.2 "Visual data").

AVEF: each 655 ms voice segment has a time range [T_begin, T_end] in the original video, and "the
image sequences within this time interval" form its visual segment. The visual network takes 16
images: with more (their example: [100 ms, 755 ms] at 30 frames/s, 20 images) "we remove the
first two and the last two face images"; with fewer ("supposing it has only 12 images") "repeat
the first two and the last two frames". Silent audio frames get weight 0 "as well as the
corresponding facial expression frames in visual data. Simply, when a certain time interval of
audio/visual data is assigned a weight of zero, we discard it" (§1, §2.1). This module returns
frame *indices* into the clip's frames (stored once in the shard), never copies of images, so
overlapping windows share frames.

This project's rules where the paper says nothing:

* **The time of a window** is the union of the spans of its own audio frames: frame k of the clip's
  25 ms / 10 ms grid spans [k·hop, k·hop + frame) (``segments.frame_times``), and a window stores
  its 64 frame indices (``segments.place_windows``, ``/windows/frames``). For a window without a
  gap this is [t_begin, t_end), the paper's [T_begin, T_end]. A window that joins voiced frames
  across a pause covers the voiced stretches only, so no video frame of the pause is taken (AVEF
  discards the facial frames of weight-0 intervals). The union of the 25 ms spans, not of 10 ms
  hop cells, is used because it is exactly the audio the window's frames hold (overlapping spans
  count once): a pause of g silent frames leaves a hole of g·10 − 15 ms (none for g = 1, whose
  samples lie inside its voiced neighbours' frames). On the demo, 67 of the 132 windows join
  frames across a pause; with the time range [t_begin, t_end), 53 of the 123 windows with video
  took 1-8 of their 16 frames from the silence, now none (``scripts/count_pause_frames.py``); the
  65 windows without a gap keep their frames.
* **keep_silent windows** (``segments.place_windows(keep_silent=True)``) hold their silent frames
  in their audio image, so their video follows them: all frames of [t_begin, t_end), silent
  stretches included (Hsu & Wu §II label silence segments in the visual modality too); the
  window's ``weight`` (0 when mostly silent) tells a trainer what to do with it.
* A video frame belongs to a window when its timestamp (presentation time of the frame's start,
  in seconds) lies in one of the window's spans; the comparisons allow 1 µs for floating-point
  rounding. (Counting this way gives 20 frames in the paper's example; ``int(0.655 × 30)`` is in
  fact 19, since 0.655 × 30 = 19.65.) A 655 ms span holds ⌊0.655·fps⌋ or ⌈0.655·fps⌉ frames
  depending on where it starts between two video frames: 19 or 20 at 30 fps, 16 or 17 at 25 fps,
  9 or 10 at 15 fps (``span_counts``).
* More than 16: ``(m − 16) // 2`` frames are dropped from the start and the rest from the end
  (20 → 2 + 2, 21 → 2 + 3). Fewer: "repeat the first two and the last two frames" read as
  "remove the first two and the last two face images" two sentences before it: frames 1, 2, 11
  and 12 are each shown twice, in time order (12 → 1 1 2 2 3 … 10 11 11 12 12), not frame 1 and
  frame 12 three times each. For d = 16 − m missing frames the first ``d // 2`` and the last
  ``d − d // 2`` frames are doubled (11 → 2 + 3); when d > m every frame is doubled first and
  the rule applied again (5 → 10 → 16; 1 → 16 copies).
* Frames without a face are left out *before* the 16-rule (the paper trims "face images": its
  frames are the output of face detection). A window keeps its slot but is masked (``ok`` False,
  frames all −1) when it holds no frame (``"no_frames"``) or fewer than ``min_found`` frames with
  a face (``"no_face"``). With ``min_found=1`` a single face frame is repeated 16 times.
"""
from __future__ import annotations

import math

import numpy as np

from features.errors import ParameterError

TIME_TOLERANCE_S = 1e-6


def window_spans(frames: np.ndarray, *, frame_ms: float = 25.0, hop_ms: float = 10.0) -> list[np.ndarray]:
    """The time a window covers: the union of its frames' spans [k·hop, k·hop + frame), merged.

    ``frames`` (n_windows, window_frames) increasing frame indices on the clip's grid → one
    (r, 2) float64 array of [begin, end) seconds per window, r = 1 for a window without a gap.
    """
    frames = np.atleast_2d(np.asarray(frames, dtype=np.int64))
    if frame_ms <= 0 or hop_ms <= 0:
        raise ParameterError(f"frame_ms and hop_ms must be > 0, got {frame_ms}, {hop_ms}")
    if frames.size and np.any(np.diff(frames, axis=1) <= 0):
        raise ParameterError("each window's frame indices must be strictly increasing")
    out = []
    for row in frames:
        begin = row * hop_ms / 1000.0
        end = begin + frame_ms / 1000.0
        new = np.r_[True, begin[1:] > end[:-1]]          # a span starts where the previous ones end
        last = np.r_[np.flatnonzero(new)[1:] - 1, len(row) - 1]
        out.append(np.stack([begin[new], end[last]], axis=1))
    return out


def frames_in_spans(times: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Indices of the frames whose timestamp lies in one of the [begin, end) ``spans`` (± 1 µs).

    ``times`` (n,) seconds, ``spans`` (r, 2) seconds, disjoint and increasing → (m,) int64
    indices, increasing.
    """
    times = np.asarray(times, dtype=np.float64)
    spans = np.asarray(spans, dtype=np.float64).reshape(-1, 2)
    if np.any(spans[:, 1] < spans[:, 0]):
        raise ParameterError(f"each span must have end >= begin, got {spans.tolist()}")
    if np.any(spans[1:, 0] < spans[:-1, 1]):
        raise ParameterError(f"spans must be disjoint and increasing, got {spans.tolist()}")
    k = np.searchsorted(spans[:, 0] - TIME_TOLERANCE_S, times, side="right") - 1
    inside = (k >= 0) & (times < spans[np.maximum(k, 0), 1] - TIME_TOLERANCE_S)
    return np.flatnonzero(inside)


def frames_in_window(times: np.ndarray, *, t_begin: float, t_end: float) -> np.ndarray:
    """Indices of the frames whose timestamp lies in [t_begin, t_end) (± 1 µs rounding)."""
    if t_end < t_begin:
        raise ParameterError(f"t_end must be >= t_begin, got [{t_begin}, {t_end})")
    return frames_in_spans(times, [[t_begin, t_end]])


def span_counts(fps: float, *, span_s: float = 0.655) -> tuple[int, ...]:
    """The numbers of video frames (at k / fps) a span of ``span_s`` seconds can hold, by phase.

    A span [φ, φ + T) holds ⌈(φ + T)·fps⌉ − ⌈φ·fps⌉ frames: ⌊T·fps⌋ or ⌈T·fps⌉, the larger for
    a fraction frac(T·fps) of the phases φ (both equal when T·fps is a whole number).
    """
    x = span_s * fps
    return tuple(sorted({math.floor(x), math.ceil(x)}))


def sixteen(indices: np.ndarray, *, n: int = 16) -> np.ndarray:
    """AVEF's rule (§2.1.2): trim or repeat a visual segment's frames to exactly ``n``.

    m > n: drop ``(m − n) // 2`` frames from the start and the rest from the end (20 → 2 + 2,
    21 → 2 + 3). m < n, d = n − m: the first ``d // 2`` and the last ``d − d // 2`` frames are
    shown twice, in place (12 → 1 1 2 2 3 … 10 11 11 12 12; "repeat the first two and the last
    two frames"); when d > m every frame is doubled first and the rule applied again. m == n:
    unchanged. m == 0: all −1 (no frame; the caller masks the window, as ``align_windows``
    does) rather than an exception, so one empty window does not stop a clip.

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
    d = n - m
    if d > m:
        return sixteen(np.repeat(idx, 2), n=n)
    copies = np.ones(m, dtype=np.int64)
    copies[:d // 2] += 1
    copies[m - (d - d // 2):] += 1
    return np.repeat(idx, copies)


def align_windows(times: np.ndarray, found: np.ndarray, *, spans: list[np.ndarray], n: int = 16,
                  min_found: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` video frames of each audio window (AVEF §2.1.2; rules in the module docstring).

    Parameters
    ----------
    times : np.ndarray, shape (n_frames,), seconds — timestamp of each video frame of the clip
    found : np.ndarray, shape (n_frames,), bool — frames with a usable face
    spans : one (r, 2) array of [begin, end) seconds per window — the time it covers
        (``window_spans`` of its audio frames; ``[[t_begin, t_end]]`` for a plain time range)
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
    if times.ndim != 1 or found.shape != times.shape:
        raise ParameterError(f"times and found must have the same shape (n_frames,), "
                             f"got {times.shape} and {found.shape}")
    if min_found < 1:
        raise ParameterError(f"min_found must be >= 1, got {min_found}")
    frames = np.full((len(spans), n), -1, dtype=np.int32)
    ok = np.zeros(len(spans), dtype=bool)
    reason = np.full(len(spans), "", dtype=object)
    for w, span in enumerate(spans):
        inside = frames_in_spans(times, span)
        faces = inside[found[inside]]
        if inside.size == 0:
            reason[w] = "no_frames"
        elif faces.size < min_found:
            reason[w] = "no_face"
        else:
            frames[w] = sixteen(faces, n=n)
            ok[w] = True
    return frames, ok, reason.astype(str)
