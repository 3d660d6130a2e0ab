import numpy as np
import pytest

from features import ClipError, ParameterError
from features.segments import count_windows, frame_times, frame_weights, place_windows, window_units


@pytest.mark.parametrize("n", [0, 63, 64, 97, 98, 99, 131, 132, 500, 1457])
def test_windows_in_one_voiced_run_of_n_frames(n):
    """⌊(n − 64) / 34⌋ + 1 windows of 64 frames, 30 frames of overlap (AVEF §2.1.1)."""
    expected = (n - 64) // 34 + 1 if n >= 64 else 0
    assert count_windows(n) == expected
    weights = np.zeros(n + 40, np.uint8)
    weights[20:20 + n] = 1
    if expected == 0:
        with pytest.raises(ClipError) as err:
            place_windows(weights=weights)
        assert err.value.status == ("no_voiced_frames" if n == 0 else "too_short")
        return
    frames, weight = place_windows(weights=weights)
    assert frames.shape == (expected, 64)
    assert np.all(weights[frames] == 1) and np.all(weight == 1)
    np.testing.assert_array_equal(frames[:, 0], 20 + 34 * np.arange(expected))
    if expected > 1:  # adjacent windows share 30 frames
        assert len(np.intersect1d(frames[0], frames[1])) == 30


def test_windows_skip_silent_frames_and_map_back_to_the_timeline():
    weights = np.zeros(200, np.uint8)
    weights[10:50] = 1    # 40 voiced frames
    weights[100:150] = 1  # 50 voiced frames: 90 in all -> 1 window across the pause
    frames, weight = place_windows(weights=weights)
    assert frames.shape == (1, 64)
    np.testing.assert_array_equal(frames[0], np.r_[10:50, 100:124])
    t = frame_times(200)
    assert t[frames[0, 0], 0] == pytest.approx(0.100) and t[frames[0, -1], 1] == pytest.approx(1.255)


def test_keep_silent_lays_windows_over_all_frames_with_weight_zero_when_silent():
    weights = np.zeros(200, np.uint8)
    weights[:64] = 1
    frames, weight = place_windows(weights=weights, keep_silent=True)
    assert len(frames) == count_windows(200)
    np.testing.assert_array_equal(frames[:, 0], 34 * np.arange(len(frames)))
    np.testing.assert_array_equal(weight, [1, 0, 0, 0, 0])


def test_frame_weights_take_the_vad_step_holding_the_frame_centre():
    vad = np.array([0, 1, 1, 0, 1], np.uint8)  # 10 ms steps
    # frame t covers [10t, 10t + 25) ms, centre 10t + 12.5 -> step t + 1
    np.testing.assert_array_equal(frame_weights(vad, n_frames=5), [1, 1, 0, 1, 0])


def test_window_units_take_the_majority_unit():
    units = np.array([[0.0, 0.5, 1], [0.5, 0.6, 0], [0.6, 2.0, 1]])
    frames = np.array([np.arange(0, 64), np.arange(40, 104)])  # centres 0.0125.. / 0.4125..
    np.testing.assert_array_equal(window_units(frames, units=units), [0, 2])


def test_parameter_rules():
    with pytest.raises(ParameterError):
        place_windows(weights=np.ones(100), hop_frames=0)
