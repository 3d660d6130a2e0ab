"""Prosodic units with Praat (parselmouth): silences, verbal / non-verbal, phrase boundaries.

Hsu & Wu, "Attentively-Coupled LSTM for Audio-Visual Emotion Recognition" (``shared/papers/000``),
§II and §III-A: each clip is cut into segments, the recognition unit of the segment-based models,
by silence detection (EasyAlign-style, i.e. Praat's intensity-based silence detector),
verbal / non-verbal segment detection, and prosodic phrase detection (Dominguez et al. 2016:
pauses and F0 resets mark phrase boundaries). The papers give no numbers for these steps; the
rule used here, and its defaults, are:

1. **Silence**: Praat ``To TextGrid (silences)`` on the intensity contour (pitch floor 100 Hz):
   an interval is silent when its intensity lies more than ``silence_db`` (−25 dB) below the
   clip's maximum for at least ``min_silence_s`` (0.10 s); sounding intervals last at least
   ``min_sounding_s`` (0.05 s).
2. **Verbal / non-verbal**: a sounding interval is *verbal* when at least ``min_voiced`` (30 %) of
   its 10 ms pitch frames are voiced (Praat ``To Pitch``, 75-600 Hz) and its mean intensity is
   within ``verbal_db`` (20 dB) of the loudest sounding interval; otherwise *non-verbal*
   (breath, laugh, noise).
3. **Phrase boundaries**: a verbal interval is split where, after an unvoiced gap of at least
   ``reset_gap_s`` (0.05 s), the median F0 of the next 100 ms lies at least ``reset_st``
   (3 semitones) above the median F0 of the 100 ms before the gap (an F0 reset), provided both
   parts last at least ``min_unit_s`` (0.3 s).

The units tile the clip from 0 to its duration without gaps or overlaps.
"""
from __future__ import annotations

import numpy as np

from features.errors import ClipError, ParameterError

SILENCE, VERBAL, NONVERBAL = 0, 1, 2
UNIT_KINDS = {SILENCE: "silence", VERBAL: "verbal", NONVERBAL: "nonverbal"}
PITCH_STEP_S = 0.01
BLOCK = 1 << 16  # samples converted to float64 at a time
#: Longer clips (> 5 min at 16 kHz) are copied into Praat block by block (``praat_sound``).
DIRECT_SAMPLES = 5 * 60 * 16000


def prosodic_units(*, y: np.ndarray, sr: int, silence_db: float = -25.0, min_silence_s: float = 0.10,
                   min_sounding_s: float = 0.05, pitch_floor: float = 75.0, pitch_ceiling: float = 600.0,
                   min_voiced: float = 0.3, verbal_db: float = 20.0, reset_gap_s: float = 0.05,
                   reset_st: float = 3.0, min_unit_s: float = 0.3) -> np.ndarray:
    """Cut a mono signal into prosodic units (see the module docstring for the rule).

    Returns
    -------
    units : np.ndarray, shape (n_units, 3), float64 — columns t_begin (s), t_end (s), kind
        (0 silence, 1 verbal, 2 non-verbal), in time order, tiling [0, len(y) / sr].

    ``y`` may be any 1-D sequence that slices to arrays (an HDF5 dataset): it is read ``BLOCK``
    samples at a time, and never converted to float64 whole outside Praat (``praat_sound``); a
    silent clip is found so without Praat.
    """
    from parselmouth.praat import call

    if silence_db >= 0:
        raise ParameterError(f"silence_db is relative to the maximum and must be < 0, got {silence_db}")
    if not 0 < pitch_floor < pitch_ceiling:
        raise ParameterError(f"need 0 < pitch_floor < pitch_ceiling, got {pitch_floor}, {pitch_ceiling}")
    if not hasattr(y, "shape"):
        y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    duration = n / sr
    if duration < 0.1:  # Praat's intensity analysis needs 6.4 / 100 Hz = 64 ms plus margin
        raise ClipError("too_short", f"{duration * 1000:.0f} ms of audio is too short for prosodic analysis")
    if not any(np.any(np.abs(np.asarray(y[a:a + BLOCK], dtype=np.float64)) > 1e-6) for a in range(0, n, BLOCK)):
        return np.array([[0.0, duration, SILENCE]])
    sound = praat_sound(y, sr)
    intensity = sound.to_intensity(minimum_pitch=100.0, time_step=PITCH_STEP_S)
    db, db_t = intensity.values[0], intensity.xs()
    grid = call(intensity, "To TextGrid (silences)", silence_db, min_silence_s, min_sounding_s,
                "silent", "sounding")
    intervals = _intervals(call(grid, "List", "no", 17, "no", "yes"))

    pitch = sound.to_pitch(time_step=PITCH_STEP_S, pitch_floor=pitch_floor, pitch_ceiling=pitch_ceiling)
    f0, f0_t = pitch.selected_array["frequency"], pitch.xs()

    def mean_db(t0, t1):
        sel = db[(db_t >= t0) & (db_t < t1)]
        return float(np.mean(sel)) if sel.size else -np.inf

    loudest = max((mean_db(t0, t1) for t0, t1, s in intervals if s), default=-np.inf)
    units = []
    for t0, t1, sounding in intervals:
        if not sounding:
            units.append((t0, t1, SILENCE))
            continue
        sel = (f0_t >= t0) & (f0_t < t1)
        voiced = float(np.mean(f0[sel] > 0)) if sel.any() else 0.0
        if voiced >= min_voiced and mean_db(t0, t1) >= loudest - verbal_db:
            cuts = _f0_resets(f0, f0_t, t0, t1, reset_gap_s, reset_st, min_unit_s)
            edges = [t0, *cuts, t1]
            units.extend((a, b, VERBAL) for a, b in zip(edges[:-1], edges[1:]))
        else:
            units.append((t0, t1, NONVERBAL))
    out = np.array(units, dtype=np.float64)
    out[0, 0], out[-1, 1] = 0.0, duration
    return out


def praat_sound(y, sr: int):
    """A Praat Sound of the mono signal ``y`` (any 1-D sequence that slices to arrays).

    Praat holds samples as float64: 0.46 GB per hour at 16 kHz. A short clip goes through
    ``parselmouth.Sound(y)`` (which needs the float64 array); a long one (more than
    ``DIRECT_SAMPLES``) is created empty in Praat and filled ``BLOCK`` samples at a time, so no
    float64 copy of the whole clip exists outside Praat (issue 19 item 11). Both have the same
    samples, start, sampling period and first sample time (``Override sampling frequency`` sets
    x1 = dx / 2 as the constructor does); the end time is ``nx · dx`` where the constructor has
    ``n / sr``, which can differ in the last bit.
    """
    import parselmouth
    from parselmouth.praat import call

    n = y.shape[0]
    if n <= DIRECT_SAMPLES:
        return parselmouth.Sound(np.asarray(y[:], dtype=np.float64), sampling_frequency=sr)
    sound = call("Create Sound from formula", "clip", 1, 0.0, n / sr, sr, "0")
    sound.override_sampling_frequency(sr)
    if sound.n_samples != n:
        raise RuntimeError(f"Praat made a Sound of {sound.n_samples} samples for {n}")
    values = sound.values  # a writable view of Praat's own samples
    for a in range(0, n, BLOCK):
        values[0, a:a + BLOCK] = np.asarray(y[a:a + BLOCK], dtype=np.float64)
    return sound


def _intervals(listing: str) -> list[tuple[float, float, bool]]:
    """(t_begin, t_end, sounding) of the TextGrid's tier 1 from Praat's ``List`` (one call, where
    three ``Get ... of interval`` calls per interval cost ~0.2 ms each): a tab-separated table
    with the header ``tmin, text, tmax``."""
    rows = [line.split("\t") for line in listing.strip().splitlines()]
    if not rows or rows[0] != ["tmin", "text", "tmax"]:
        raise RuntimeError(f"unexpected TextGrid listing from Praat: {listing[:200]!r}")
    return [(float(t0), float(t1), text == "sounding") for t0, text, t1 in rows[1:]]


def _f0_resets(f0, f0_t, t0, t1, gap_s, reset_st, min_unit_s) -> list[float]:
    """Times inside (t0, t1) where F0 resets upward after an unvoiced gap (rule 3)."""
    sel = np.flatnonzero((f0_t >= t0) & (f0_t < t1))
    v = f0[sel] > 0
    cuts, last = [], t0
    ctx = int(round(0.1 / PITCH_STEP_S))
    i = 0
    while i < v.size:
        if v[i]:
            i += 1
            continue
        j = i
        while j < v.size and not v[j]:
            j += 1
        if i > 0 and j < v.size and (j - i) * PITCH_STEP_S >= gap_s:
            before = f0[sel[max(0, i - ctx): i]]
            after = f0[sel[j: j + ctx]]
            before, after = before[before > 0], after[after > 0]
            t_cut = float(f0_t[sel[i]] + f0_t[sel[j]]) / 2
            if (before.size and after.size
                    and 12 * np.log2(np.median(after) / np.median(before)) >= reset_st
                    and t_cut - last >= min_unit_s and t1 - t_cut >= min_unit_s):
                cuts.append(t_cut)
                last = t_cut
        i = j
    return cuts
