"""Labels over time: time-continuous valence/arousal (Lucas §3, RECOLA) mapped to windows and to
time grids, and segment labels matched to prosodic units with their sound types (Hsu & Wu §II).

RECOLA annotates valence and arousal every 40 ms; a corpus may give any time step. A clip's
series is ``time`` (n,) seconds, strictly increasing, n >= 2, and ``values`` (n,) or (n, d)
(d = 2: valence, arousal), read from the manifest's ``continuous_labels`` file
(``pipeline.manifest``) and stored per clip in the shard (``/labels_t``, ``features.store``).

**The label signal** (this project's rule; the paper does not say how labels meet its steps):
the samples are joined by straight lines, i.e. the label at time t is the linear interpolation
of the two samples around t (``np.interp``). The signal is defined on [time[0], time[-1]] only:
outside it a clip has no label (NaN), it is not extended.

**A window's target** is the time average of that signal over the window's voiced span: the
union of the 25 ms spans [k·hop, k·hop + frame) of its 64 audio frames (``/windows/frames``, the
clip's 10 ms / 25 ms frame grid; ``features.align.window_spans``, the same span the window's
video frames come from), intersected with [time[0], time[-1]]:

    target = ∫_S y(t) dt / |S|,   S = (∪_k [k·hop, k·hop + frame)) ∩ [time[0], time[-1]]

so a pause inside a window (a gap between its voiced stretches) does not count, and the result
does not depend on the label step (at RECOLA's 40 ms it is, up to the end corrections, the mean of
the ~16 samples inside a 655 ms window). A window with |S| = 0 (it lies outside the labelled
time) gets NaN: the trainers mask it out of the loss and the metrics.

**A time grid** (``to_grid``): cells [start + k·step, start + (k + 1)·step); ``how="mean"``
gives each cell the time average of the signal over the cell (the rule above, one span per cell),
``how="interp"`` the signal's value at the cell's start (linear interpolation). NaN outside the
labelled time.
"""
from __future__ import annotations

import numpy as np

from features.errors import ParameterError

#: the sound types of Hsu & Wu §II (the ACLSTM's sound-type CNN targets), in their index order
SOUND_TYPES = ("laugh", "breath", "shout", "silence", "verbal")
#: the label columns of a segment labels file (manifest ``segment_labels``; Hsu & Wu §II)
SEGMENT_LABEL_COLUMNS = ("label", "audio_label", "visual_label", "sound_type")


def _series(time, values) -> tuple[np.ndarray, np.ndarray, bool]:
    """(time (n,), values (n, d), values was 1-D) checked: n >= 2, finite, strictly increasing."""
    t = np.asarray(time, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    flat = v.ndim == 1
    v = v[:, None] if flat else v
    if t.ndim != 1 or v.ndim != 2 or len(v) != len(t):
        raise ParameterError(f"time must be (n,) and values (n,) or (n, d), got {t.shape} and {np.shape(values)}")
    if len(t) < 2:
        raise ParameterError(f"a label series needs at least 2 time points, got {len(t)}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
        raise ParameterError("time and values must be finite")
    if np.any(np.diff(t) <= 0):
        raise ParameterError("time must be strictly increasing")
    return t, v, flat


def _integral(t: np.ndarray, v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """∫_{t[0]}^{x} y, y the piecewise-linear signal; ``x`` (m,) inside [t[0], t[-1]] → (m, d)."""
    cum = np.zeros_like(v)
    cum[1:] = np.cumsum(np.diff(t)[:, None] * (v[1:] + v[:-1]) / 2, axis=0)
    k = np.clip(np.searchsorted(t, x, side="right") - 1, 0, len(t) - 2)
    frac = ((x - t[k]) / (t[k + 1] - t[k]))[:, None]
    vx = v[k] + frac * (v[k + 1] - v[k])
    return cum[k] + (x - t[k])[:, None] * (v[k] + vx) / 2


def span_means(time, values, spans: list) -> np.ndarray:
    """The time average of the label signal over each window's spans (module docstring).

    ``spans``: one (r, 2) array of [begin, end) seconds per window (disjoint) → (n_windows, d)
    float64, or (n_windows,) when ``values`` is 1-D; NaN where no labelled time is covered.
    """
    t, v, flat = _series(time, values)
    arrays = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in spans]
    owner = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    allspans = np.concatenate(arrays) if arrays else np.zeros((0, 2))
    a = np.clip(allspans[:, 0], t[0], t[-1])
    b = np.clip(allspans[:, 1], t[0], t[-1])
    length = np.maximum(b - a, 0.0)
    part = np.where((length > 0)[:, None], _integral(t, v, b) - _integral(t, v, a), 0.0)
    total = np.zeros((len(arrays), v.shape[1]))
    covered = np.zeros(len(arrays))
    np.add.at(total, owner, part)
    np.add.at(covered, owner, length)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where((covered > 0)[:, None], total / covered[:, None], np.nan)
    return out[:, 0] if flat else out


def window_means(time, values, frames, *, frame_ms: float = 25.0, hop_ms: float = 10.0) -> np.ndarray:
    """Each window's target: ``span_means`` over the union of its frames' spans.

    ``frames`` (n_windows, 64) the window's frame indices on the clip's grid (``/windows/frames``).
    """
    from features.align import window_spans

    frames = np.asarray(frames)
    if frames.size == 0:
        v = np.asarray(values)
        return np.zeros((0,) if v.ndim == 1 else (0, v.shape[1]))
    return span_means(time, values, window_spans(frames, frame_ms=frame_ms, hop_ms=hop_ms))


def at_times(time, values, times) -> np.ndarray:
    """The label signal at ``times`` (linear interpolation); NaN outside [time[0], time[-1]]."""
    t, v, flat = _series(time, values)
    x = np.asarray(times, dtype=np.float64).ravel()
    out = np.stack([np.interp(x, t, v[:, j]) for j in range(v.shape[1])], axis=1)
    out[(x < t[0]) | (x > t[-1])] = np.nan
    return out[:, 0] if flat else out


def to_grid(time, values, step: float, *, start: float = 0.0, stop: float | None = None,
            how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """The labels on a time grid a trainer asks for: cells [start + k·step, start + (k+1)·step)
    up to ``stop`` (default: the last label time), ``how`` "mean" (time average over the cell) or
    "interp" (the value at the cell's start). Returns (cell starts (m,), values (m, d) or (m,))."""
    if not step > 0:
        raise ParameterError(f"step must be > 0 seconds, got {step}")
    if how not in ("mean", "interp"):
        raise ParameterError(f"how must be 'mean' or 'interp', got {how!r}")
    t = np.asarray(time, dtype=np.float64)
    stop = float(t[-1]) if stop is None else float(stop)
    m = max(0, int(np.ceil((stop - start) / step - 1e-9)))
    grid = start + step * np.arange(m)
    if how == "interp":
        return grid, at_times(time, values, grid)
    return grid, span_means(time, values, [[[g, g + step]] for g in grid])


def labels_group(series: dict, ids) -> dict[str, np.ndarray]:
    """The shard's ``/labels_t`` group for the clips ``ids`` (in the shard's clip order) from
    ``{clip id: (time, valence, arousal)}``; a clip without a series gets no rows."""
    from features.store import pack

    rows = [series.get(i) for i in ids]
    empty = np.zeros(0)
    out = {}
    for j, (name, dtype) in enumerate((("time", np.float64), ("valence", np.float32), ("arousal", np.float32))):
        out[name], offsets = pack([empty if r is None else r[j] for r in rows], dtype=dtype)
    out["offsets"] = offsets
    return out


def unit_rows(spans: np.ndarray, t_begin: np.ndarray, t_end: np.ndarray) -> np.ndarray:
    """The annotated segment (row of ``spans`` (n, 2) s) of each unit [t_begin, t_end): the row
    that overlaps it most, when that overlap covers at least half the unit; else −1.
    Returns (n_units,) int64."""
    t_begin, t_end = np.asarray(t_begin, np.float64), np.asarray(t_end, np.float64)
    out = np.full(len(t_begin), -1, dtype=np.int64)
    spans = np.asarray(spans, np.float64).reshape(-1, 2)
    if not len(spans) or not len(t_begin):
        return out
    overlap = np.clip(np.minimum(t_end[:, None], spans[None, :, 1]) -
                      np.maximum(t_begin[:, None], spans[None, :, 0]), 0.0, None)   # (units, rows)
    best = overlap.argmax(1)
    enough = overlap[np.arange(len(best)), best] >= 0.5 * (t_end - t_begin) - 1e-9
    out[enough & (overlap.max(1) > 0)] = best[enough & (overlap.max(1) > 0)]
    return out


def unit_labels_group(rows: dict, clip_ids, units: dict) -> dict[str, np.ndarray]:
    """The shard's ``/unit_labels`` group: for every row of ``units`` (the ``/units`` group:
    ``t_begin``, ``t_end``, ``offsets``) the ``label``, ``audio_label``, ``visual_label`` and
    ``sound_type`` of its annotated segment (``unit_rows``; ``""`` when none or not annotated),
    and ``offsets`` equal to the units' ones."""
    offsets = np.asarray(units["offsets"], dtype=np.int64)
    n = int(offsets[-1]) if len(offsets) else 0
    out = {c: np.full(n, "", dtype=object) for c in SEGMENT_LABEL_COLUMNS}
    for k, cid in enumerate(clip_ids):
        if cid not in rows:
            continue
        spans, cols = rows[cid]
        a, b = int(offsets[k]), int(offsets[k + 1])
        pick = unit_rows(spans, units["t_begin"][a:b], units["t_end"][a:b])
        hit = pick >= 0
        for c, values in cols.items():
            out[c][a:b][hit] = values[pick[hit]]
    out["offsets"] = offsets
    return out
