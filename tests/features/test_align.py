import numpy as np
import pytest

from features import ParameterError
from features.align import align_windows, frames_in_window, sixteen

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
    (15, list(range(2, 12)), [2, 2, 2, 2] + list(range(3, 11)) + [11, 11, 11, 11]),  # 10: +3, +3
    (25, list(range(3, 19)), list(range(3, 19))),                                   # 16: unchanged
    (30, list(range(3, 23)), list(range(5, 21))),                                   # 20: -2, -2
    (60, list(range(6, 46)), list(range(18, 34))),                                  # 40: -12, -12
    (30000 / 1001, list(range(3, 23)), list(range(5, 21))),
]


@pytest.mark.parametrize("fps, inside, kept", WINDOW_TABLE)
def test_avef_window_at_100_ms_gives_these_16_frames(fps, inside, kept):
    times = np.arange(100) / fps
    np.testing.assert_array_equal(frames_in_window(times, t_begin=0.1, t_end=0.1 + 0.655), inside)
    frames, ok, reason = align_windows(times, np.ones(100, bool), t_begin=[0.1], t_end=[0.755])
    assert frames.shape == (1, 16) and frames.dtype == np.int32
    np.testing.assert_array_equal(frames[0], kept)
    assert ok.tolist() == [True] and reason.tolist() == [""]


@pytest.mark.parametrize("m, expected", [
    (0, [-1] * 16),                                                   # nothing inside: masked
    (1, [0] * 16),
    (11, [0, 0] + list(range(11)) + [10, 10, 10]),                    # 5 missing: 2 first, 3 last
    (12, [0, 0] + list(range(12)) + [11, 11]),                        # the paper's 12: 2 + 2
    (16, list(range(16))),
    (20, list(range(2, 18))),                                         # the paper's 20: 2 + 2
    (21, list(range(2, 18))),                                         # 5 extra: 2 first, 3 last
])
def test_sixteen_trims_and_repeats_as_avef(m, expected):
    out = sixteen(np.arange(m) + 0)
    assert out.shape == (16,)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(sixteen(100 + np.arange(m)), [e + 100 if e >= 0 else -1 for e in expected])


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


def test_windows_without_frames_or_faces_are_masked_with_a_reason():
    fps = 30.0
    times = np.arange(90) / fps            # 3 s of video
    found = np.ones(90, bool)
    found[30:60] = False                   # no face in [1, 2) s
    found[66:70] = False                   # a few face-less frames in [2.0, 2.655)
    t_begin = np.array([0.0, 1.0, 2.0, 5.0])
    frames, ok, reason = align_windows(times, found, t_begin=t_begin, t_end=t_begin + 0.655)
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
    frames, ok, reason = align_windows(times, found, t_begin=[0.0], t_end=[0.655], min_found=3)
    assert ok.tolist() == [False] and reason.tolist() == ["no_face"]
    frames, ok, _ = align_windows(times, found, t_begin=[0.0], t_end=[0.655], min_found=2)
    np.testing.assert_array_equal(frames[0], [5] * 8 + [9] * 8)   # 14 missing: 7 copies of 5, 7 of 9
    with pytest.raises(ParameterError):
        align_windows(times, found, t_begin=[0.0], t_end=[0.655], min_found=0)


def test_a_window_across_a_pause_still_gives_16_frames_from_its_middle():
    times = np.arange(120) / 30.0
    # segments.place_windows joins voiced frames across a pause: [0.1, 1.255) s is 1.155 s long
    frames, ok, _ = align_windows(times, np.ones(120, bool), t_begin=[0.1], t_end=[1.255])
    inside = np.arange(3, 38)              # 3/30 = 0.1 .. 37/30 = 1.233; 38/30 = 1.2667 is out
    np.testing.assert_array_equal(frames[0], inside[9:25])   # 35 frames: drop 9 + 10
    assert ok.tolist() == [True]


def test_align_windows_argument_rules():
    with pytest.raises(ParameterError):
        align_windows(np.arange(5.0), np.ones(4, bool), t_begin=[0.0], t_end=[1.0])
    with pytest.raises(ParameterError):
        align_windows(np.arange(5.0), np.ones(5, bool), t_begin=[0.0, 1.0], t_end=[1.0])
