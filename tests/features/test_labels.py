"""Time-continuous labels mapped to windows and time grids (issue 18 item 3), against hand
computations of the rule in ``features/labels.py``: the piecewise-linear label signal averaged
over the union of a window's 25 ms frame spans, cut to the labelled time."""
import numpy as np
import pytest

from features import ParameterError
from features.labels import at_times, labels_group, span_means, to_grid, window_means

TENT_T, TENT_V = [0.0, 1.0, 2.0], [0.0, 1.0, 0.0]   # y = t on [0, 1], 2 − t on [1, 2]


def test_a_window_without_a_gap_takes_the_mean_over_its_655_ms():
    """A linear label y = 2t + 1 (RECOLA's 40 ms step): the mean over [0, 0.655) is y(0.3275)."""
    t = np.arange(0, 2.0001, 0.04)
    frames = np.arange(64)[None]
    assert np.allclose(window_means(t, 2 * t + 1, frames), 2 * 0.3275 + 1)


def test_a_window_across_a_pause_averages_its_voiced_spans_only():
    """Frames 0-31 and 40-71: spans [0, 0.335) and [0.400, 0.735) (frame k: [10k, 10k + 25) ms);
    y = 2t + 1 averaged over both, equal lengths: y((0.1675 + 0.5675) / 2) = y(0.3675) = 1.735.
    A linear label cannot tell the pause apart (the whole [0, 0.735) has the same centre), so a
    quadratic one checks that the pause [0.335, 0.400) is left out."""
    t = np.arange(0, 2.0001, 0.04)
    frames = np.r_[np.arange(32), np.arange(40, 72)][None]
    got = window_means(t, 2 * t + 1, frames)
    assert np.allclose(got, 1.735)
    # a non-symmetric label shows the pause is left out: y = t² on the 40 ms grid (linear between
    # samples, so compare with the dense midpoint rule over the two spans)
    y = t ** 2
    dense = np.r_[np.arange(0, 0.335, 1e-5), np.arange(0.400, 0.735, 1e-5)] + 5e-6
    assert np.allclose(window_means(t, y, frames), np.interp(dense, t, y).mean(), atol=1e-6)
    whole = np.arange(0, 0.735, 1e-5) + 5e-6
    assert not np.isclose(window_means(t, y, frames), np.interp(whole, t, y).mean(), atol=1e-3)


def test_span_means_by_hand_on_a_tent():
    """Tent 0 → 1 → 0 over [0, 2] s. [0.5, 1.5): ∫ = 2 · ½(0.5 + 1)·0.5 = 0.75 over 1 s → 0.75.
    [1.5, 3): cut to [1.5, 2]: ∫ = ½(0.5 + 0)·0.5 = 0.125 over 0.5 s → 0.25. [2.5, 3): no
    labelled time → NaN. Two spans [0, 0.5) ∪ [1.5, 2): (0.125 + 0.125) / 1 = 0.25."""
    got = span_means(TENT_T, TENT_V, [[[0.5, 1.5]], [[1.5, 3.0]], [[2.5, 3.0]], [[0, 0.5], [1.5, 2.0]]])
    assert np.allclose(got[[0, 1, 3]], [0.75, 0.25, 0.25]) and np.isnan(got[2])
    two = span_means(TENT_T, np.c_[TENT_V, 2 * np.asarray(TENT_V)], [[[0.5, 1.5]]])   # (n, d) values
    assert two.shape == (1, 2) and np.allclose(two, [[0.75, 1.5]])


def test_the_mean_does_not_depend_on_the_label_step():
    """The same linear-between-samples signal sampled at 40 ms and at 10 ms: equal targets."""
    coarse = np.arange(0, 3.0001, 0.04)
    fine = np.arange(0, 3.0001, 0.01)
    y = lambda t: np.interp(t, coarse, np.sin(coarse * 3))   # noqa: E731
    rng = np.random.default_rng(0)
    frames = np.sort(np.stack([rng.choice(250, 64, replace=False) for _ in range(20)]), axis=1)
    assert np.allclose(window_means(coarse, y(coarse), frames), window_means(fine, y(fine), frames), atol=1e-9)


def test_time_grids_by_hand():
    """Cells of 0.5 s over the tent: means ¼, ¾, ¾, ¼ (each a trapezoid / 0.5); values at the
    cell starts 0, ½, 1, ½; beyond the labelled time NaN."""
    grid, mean = to_grid(TENT_T, TENT_V, 0.5)
    assert np.allclose(grid, [0, 0.5, 1.0, 1.5]) and np.allclose(mean, [0.25, 0.75, 0.75, 0.25])
    grid, value = to_grid(TENT_T, TENT_V, 0.5, how="interp")
    assert np.allclose(value, [0, 0.5, 1.0, 0.5])
    grid, mean = to_grid(TENT_T, TENT_V, 1.0, start=1.0, stop=3.0)
    assert np.allclose(grid, [1, 2]) and mean[0] == pytest.approx(0.5) and np.isnan(mean[1])
    assert np.allclose(at_times(TENT_T, TENT_V, [0.25, 1.75]), [0.25, 0.25]) and np.isnan(at_times(TENT_T, TENT_V, [-1])[0])


@pytest.mark.parametrize("time, values, rule", [
    ([0.0], [1.0], "at least 2"),
    ([0.0, 0.0], [1.0, 2.0], "strictly increasing"),
    ([0.0, 1.0], [1.0, np.nan], "finite"),
])
def test_bad_series_are_refused(time, values, rule):
    with pytest.raises(ParameterError, match=rule):
        span_means(time, values, [[[0, 1]]])


def test_the_shard_group_is_ragged_per_clip():
    series = {"a": (np.array([0, 0.04]), np.array([0.1, 0.2]), np.array([0.3, 0.4])),
              "c": (np.array([0, 0.04, 0.08]), np.zeros(3), np.ones(3))}
    g = labels_group(series, ["a", "b", "c"])
    assert g["offsets"].tolist() == [0, 2, 2, 5] and g["time"].dtype == np.float64
    assert np.allclose(g["valence"], [0.1, 0.2, 0, 0, 0]) and g["arousal"].dtype == np.float32
