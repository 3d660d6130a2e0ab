import math

import numpy as np
import pytest

from features import ParameterError
from features.align import align_windows, frames_in_spans, frames_in_window, sixteen, span_counts, window_spans
from features.segments import frame_times, place_windows

# AVEF §2.1.2: a 655 ms window starting at 100 ms, i.e. [0.100, 0.755) s; frame i at t = i / fps.
# Frames inside: i / fps >= 0.1 and i / fps < 0.755, counted by hand:
#   15 fps: i >= 1.5, i < 11.325  -> 2..11, 10 frames (int(0.655 * 15) = int(9.825) = 9, not 10)
#   25 fps: i >= 2.5, i < 18.875  -> 3..18, 16 frames (int(16.375) = 16)
#   30 fps: i >= 3,   i < 22.65   -> 3..22, 20 frames (the paper's 20; int(0.655 * 30) = int(19.65)
#                                    = 19 in exact and in floating-point arithmetic)
#   60 fps: i >= 6,   i < 45.3    -> 6..45, 40 frames (int(39.3) = 39)
#   29.97 fps (30000/1001, the demo clips): i >= 2.997, i < 22.63 -> 3..22, 20 frames
WINDOW_TABLE = [
    # fps, frames inside, the 16 kept
    (15, list(range(2, 12)), [2, 2, 3, 3, 4, 4] + list(range(5, 9)) + [9, 9, 10, 10, 11, 11]),  # 10: 3 + 3 doubled
    (25, list(range(3, 19)), list(range(3, 19))),                                   # 16: unchanged
    (30, list(range(3, 23)), list(range(5, 21))),                                   # 20: -2, -2
    (60, list(range(6, 46)), list(range(18, 34))),                                  # 40: -12, -12
    (30000 / 1001, list(range(3, 23)), list(range(5, 21))),
]


@pytest.mark.parametrize("fps, inside, kept", WINDOW_TABLE)
def test_avef_window_at_100_ms_gives_these_16_frames(fps, inside, kept):
    times = np.arange(100) / fps
    np.testing.assert_array_equal(frames_in_window(times, t_begin=0.1, t_end=0.1 + 0.655), inside)
    spans = window_spans(np.arange(10, 74)[None])     # audio frames 10..73: [100 ms, 755 ms)
    np.testing.assert_allclose(spans[0], [[0.1, 0.755]])
    frames, ok, reason = align_windows(times, np.ones(100, bool), spans=spans)
    assert frames.shape == (1, 16) and frames.dtype == np.int32
    np.testing.assert_array_equal(frames[0], kept)
    assert ok.tolist() == [True] and reason.tolist() == [""]


@pytest.mark.parametrize("m, expected", [
    (0, [-1] * 16),                                                   # nothing inside: masked
    (1, [0] * 16),                                                    # 1 → 2 → 4 → 8 → 16
    (5, [0] * 4 + [1] * 3 + [2] * 2 + [3] * 3 + [4] * 4),             # 5 → 10 (all doubled), then 3 + 3
    (8, list(np.repeat(np.arange(8), 2))),                            # 8 missing: every frame doubled
    (11, [0, 0, 1, 1] + list(range(2, 8)) + [8, 8, 9, 9, 10, 10]),    # 5 missing: 2 first, 3 last doubled
    (12, [0, 0, 1, 1] + list(range(2, 10)) + [10, 10, 11, 11]),       # the paper's 12: frames 1-2, 11-12
    (16, list(range(16))),
    (20, list(range(2, 18))),                                         # the paper's 20: 2 + 2
    (21, list(range(2, 18))),                                         # 5 extra: 2 first, 3 last
])
def test_sixteen_trims_and_repeats_as_avef(m, expected):
    out = sixteen(np.arange(m) + 0)
    assert out.shape == (16,)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(sixteen(100 + np.arange(m)), [e + 100 if e >= 0 else -1 for e in expected])


def test_twelve_frames_repeat_the_first_two_and_the_last_two_not_the_first_and_last_twice():
    """AVEF §2.1.2: "supposing it has only 12 images, it is required to simply repeat the first two
    and the last two frames" (parallel to "remove the first two and the last two face images"):
    frames 1, 2, 11, 12 appear twice each, the others once, in time order."""
    frames = np.arange(1, 13)                      # the paper's frames 1..12
    out = sixteen(frames)
    counts = {int(f): int(c) for f, c in zip(*np.unique(out, return_counts=True))}
    assert counts == {f: 2 if f in (1, 2, 11, 12) else 1 for f in range(1, 13)}
    assert np.all(np.diff(out) >= 0)


def test_sixteen_other_n_and_bad_n():
    np.testing.assert_array_equal(sixteen([7, 8, 9], n=4), [7, 8, 9, 9])
    with pytest.raises(ParameterError):
        sixteen([1, 2], n=0)


def test_timestamps_on_the_window_edges_allow_for_rounding():
    times = np.array([0.1 + 0.2, 0.5, 0.755 - 1e-9, 0.9])    # 0.30000000000000004 is "0.3"
    np.testing.assert_array_equal(frames_in_window(times, t_begin=0.3, t_end=0.755), [0, 1])
    np.testing.assert_array_equal(frames_in_window(times, t_begin=0.30001, t_end=0.9), [1, 2])  # 10 µs: out
    with pytest.raises(ParameterError):
        frames_in_window(times, t_begin=0.5, t_end=0.4)


def test_window_spans_are_the_union_of_the_frames_25_ms_spans():
    contiguous = np.arange(5, 69)
    one_silent = np.r_[5:30, 31:70]        # frame 30 silent: its samples lie in frames 29 and 31
    two_silent = np.r_[5:30, 32:71]        # frames 30, 31 silent: a 5 ms hole [0.315, 0.320)
    pause = np.r_[5:30, 130:169]           # a 1 s pause
    spans = window_spans(np.stack([contiguous, one_silent, two_silent, pause]))
    np.testing.assert_allclose(spans[0], [[0.05, 0.705]])               # = [t_begin, t_end)
    np.testing.assert_allclose(spans[1], [[0.05, 0.715]])
    np.testing.assert_allclose(spans[2], [[0.05, 0.315], [0.32, 0.725]])
    np.testing.assert_allclose(spans[3], [[0.05, 0.315], [1.30, 1.705]])
    np.testing.assert_allclose(window_spans(pause[None], frame_ms=20.0, hop_ms=5.0)[0],
                               [[0.025, 0.165], [0.65, 0.86]])
    times = np.array([0.04, 0.05, 0.31, 0.315, 0.3175, 0.32, 0.72, 0.725])
    np.testing.assert_array_equal(frames_in_spans(times, spans[2]), [1, 2, 5, 6])
    with pytest.raises(ParameterError):
        window_spans(np.array([[3, 2, 4]]))
    with pytest.raises(ParameterError):
        frames_in_spans(times, [[0.5, 0.6], [0.55, 0.7]])


def pause_clip(fps):
    """Synthetic clip: voiced audio frames 0..79, a 1 s pause (frames 80..179), voiced 180..239;
    video at ``fps`` whose face state is 1 (a marker) while no voiced audio frame covers it."""
    weights = np.zeros(240, np.uint8)
    weights[:80] = weights[180:] = 1
    times = np.arange(int(2.5 * fps)) / fps
    grid = frame_times(240)
    voiced = grid[weights == 1]
    in_voice = ((times[:, None] >= voiced[:, 0] - 1e-6) & (times[:, None] < voiced[:, 1] - 1e-6)).any(axis=1)
    return weights, times, np.where(in_voice, 0, 1)


@pytest.mark.parametrize("fps", [15, 25, 30000 / 1001, 30, 60])
def test_no_video_frame_of_a_window_lies_in_the_pause(fps):
    weights, times, state = pause_clip(fps)
    assert 0.8 * fps < state.sum() < 1.1 * fps         # about 1 s of marked frames: 0.415 .. 1.80 s
    frames, _ = place_windows(weights=weights)
    assert len(frames) == 3 and (np.diff(frames, axis=1) > 1).any(axis=1).tolist() == [False, True, True]
    t = frame_times(240)
    t_begin, t_end = t[frames[:, 0], 0], t[frames[:, -1], 1]
    found = np.ones(len(times), bool)
    video, ok, _ = align_windows(times, found, spans=window_spans(frames))
    assert ok.all()
    assert not state[video].any()                     # no selected frame shows the pause
    # the time range [t_begin, t_end) of a window across the pause holds marked frames: the old rule took them
    old, _, _ = align_windows(times, found, spans=[[[b, e]] for b, e in zip(t_begin, t_end)])
    assert state[old[1:]].any()
    np.testing.assert_array_equal(video[0], old[0])   # the window without a gap is unchanged
    for w in (1, 2):                                  # the others: the 16-rule over their voiced frames
        both = frames_in_window(times, t_begin=t_begin[w], t_end=t_end[w])
        np.testing.assert_array_equal(video[w], sixteen(both[state[both] == 0]))


def test_keep_silent_windows_take_the_video_of_all_their_frames():
    """keep_silent windows hold their silent frames, so their video covers [t_begin, t_end), the
    pause included (documented in features.align); their weight says which are mostly silent."""
    weights, times, state = pause_clip(25)
    frames, weight = place_windows(weights=weights, keep_silent=True)
    assert (np.diff(frames, axis=1) == 1).all()
    spans = window_spans(frames)
    t = frame_times(240)
    for s, f in zip(spans, frames):
        np.testing.assert_allclose(s, [[t[f[0], 0], t[f[-1], 1]]])
    video, ok, _ = align_windows(times, np.ones(len(times), bool), spans=spans)
    assert ok.all()
    silent = np.flatnonzero(weight == 0)
    inner = [w for w in silent if frames[w, 0] >= 80 and frames[w, -1] < 180]   # frames 102..165
    assert len(inner) == 1 and state[video[inner[0]]].all()   # all 16 show the pause
    assert not state[video[0]].any()                          # frames 0..63: voiced, no pause frame


@pytest.mark.parametrize("fps, counts", [(15, (9, 10)), (25, (16, 17)), (30, (19, 20)), (30000 / 1001, (19, 20)),
                                         (24, (15, 16)), (50, (32, 33)), (60, (39, 40)), (200, (131,))])
def test_a_655_ms_span_holds_floor_or_ceil_of_0655_fps_frames_by_phase(fps, counts):
    """A span [φ, φ + 0.655) holds ⌈(φ + 0.655)·fps⌉ − ⌈φ·fps⌉ frames: the larger count for a
    fraction frac(0.655·fps) of the phases φ in [0, 1/fps)."""
    assert span_counts(fps) == counts
    times = np.arange(200) / fps
    phases = 10 / fps + (np.arange(997) + 0.5) / 997 / fps     # 997 phases across one frame period
    got = np.array([len(frames_in_window(times, t_begin=p, t_end=p + 0.655)) for p in phases])
    formula = np.array([math.ceil((p + 0.655) * fps) - math.ceil(p * fps) for p in phases])
    np.testing.assert_array_equal(got, formula)
    assert set(got.tolist()) == set(counts)
    frac = 0.655 * fps - math.floor(0.655 * fps)
    assert abs(np.mean(got == max(counts)) - (frac if len(counts) == 2 else 1.0)) <= 2 / 997


def test_windows_on_the_10_ms_audio_grid_hold_16_or_17_frames_at_25_fps_and_9_or_10_at_15():
    """The windows start on the 10 ms frame grid; with video frames at k / fps from 0:
    25 fps (40 ms) → starts 0, 10, 20, 30 ms mod 40 hold 17, 16, 16, 17 frames;
    15 fps (66.7 ms) → starts mod 200 ms hold 10 or 9."""
    starts = np.arange(0, 200) * 0.01
    for fps, expected in ((25, {16: 100, 17: 100}), (15, {9: 30, 10: 170})):
        times = np.arange(int(3 * fps)) / fps
        counts = [len(frames_in_window(times, t_begin=s, t_end=s + 0.655)) for s in starts]
        assert dict(zip(*np.unique(counts, return_counts=True))) == expected
    times = np.arange(75) / 25
    assert [len(frames_in_window(times, t_begin=s, t_end=s + 0.655)) for s in (0, 0.01, 0.02, 0.03)] == [17, 16, 16, 17]


def test_windows_without_frames_or_faces_are_masked_with_a_reason():
    fps = 30.0
    times = np.arange(90) / fps            # 3 s of video
    found = np.ones(90, bool)
    found[30:60] = False                   # no face in [1, 2) s
    found[66:70] = False                   # a few face-less frames in [2.0, 2.655)
    spans = window_spans(np.array([0, 100, 200, 500])[:, None] + np.arange(64))
    frames, ok, reason = align_windows(times, found, spans=spans)
    assert ok.tolist() == [True, False, True, False]
    assert reason.tolist() == ["", "no_face", "", "no_frames"]
    assert np.all(frames[[1, 3]] == -1)
    # window 2 holds frames 60..79 (20); the 16 with a face are 60..65 and 70..79: kept unchanged
    np.testing.assert_array_equal(frames[2], np.r_[60:66, 70:80])
    assert np.all(found[frames[ok]])
    # window 0: frames 0..19, 20 with a face -> drop 2 + 2
    np.testing.assert_array_equal(frames[0], np.arange(2, 18))


def test_min_found_masks_windows_with_too_few_faces():
    times = np.arange(30) / 30.0
    found = np.zeros(30, bool)
    found[[5, 9]] = True
    span = [[[0.0, 0.655]]]
    frames, ok, reason = align_windows(times, found, spans=span, min_found=3)
    assert ok.tolist() == [False] and reason.tolist() == ["no_face"]
    frames, ok, _ = align_windows(times, found, spans=span, min_found=2)
    np.testing.assert_array_equal(frames[0], [5] * 8 + [9] * 8)   # 2 → 4 → 8 → 16
    with pytest.raises(ParameterError):
        align_windows(times, found, spans=span, min_found=0)


def test_align_windows_argument_rules():
    with pytest.raises(ParameterError):
        align_windows(np.arange(5.0), np.ones(4, bool), spans=[[[0.0, 1.0]]])
    with pytest.raises(ParameterError):
        align_windows(np.arange(5.0), np.ones(5, bool), spans=[[[1.0, 0.0]]])
