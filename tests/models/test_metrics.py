import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from models import metrics


def test_classification_matches_sklearn():
    rng = np.random.default_rng(0)
    for trial in range(20):
        C = int(rng.integers(2, 7))
        y = rng.integers(0, C, 50)
        yhat = np.where(rng.random(50) < 0.5, y, rng.integers(0, C, 50))
        if trial % 4 == 0:
            yhat[yhat == 0] = 1   # a class never predicted
        m = metrics.classification(y, yhat, n_classes=C)
        assert np.isclose(m["WA"], accuracy_score(y, yhat))
        assert np.isclose(m["UA"], balanced_accuracy_score(y, yhat))
        assert np.isclose(m["F1"], f1_score(y, yhat, average="macro"))
        assert np.array(m["confusion"]).sum() == 50


def test_ccc_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    x -= x.mean()
    y = 0.5 * x + rng.normal(size=200) + 0.3
    sxy = np.cov(x, y, bias=True)[0, 1]
    expect = 2 * sxy / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert np.isclose(metrics.ccc(x, y), expect)
    assert np.isclose(metrics.ccc(x, x), 1.0) and np.isclose(metrics.ccc(x, -x), -1.0)
    assert metrics.ccc(x, x + 1) < np.corrcoef(x, x + 1)[0, 1]   # a shift lowers CCC, not Pearson


def test_summary_mean_std():
    folds = [{"WA": 0.5, "UA": 0.4}, {"WA": 0.7, "UA": 0.6}, {"WA": 0.6, "UA": 0.8}]
    s = metrics.summarize(folds)
    assert np.isclose(s["WA"]["mean"], 0.6) and np.isclose(s["UA"]["std"], np.std([0.4, 0.6, 0.8]))
    assert "| UA | 60.00 ± 16.33 % | 3 |" in metrics.table(s)


def _ccc_np(x, y):
    """Lin's CCC from numpy's moments (population)."""
    sxy = np.cov(x, y, bias=True)[0, 1]
    return 2 * sxy / (np.var(x) + np.var(y) + (np.mean(x) - np.mean(y)) ** 2)


def test_sequence_ccc_is_the_mean_over_sequences_and_the_pooled_one_beside_it():
    """Lucas §3: "computed for each sequence in test partition ... and averaged over the
    sequences"; pooled = all steps at once. Three sequences whose predictions follow each target
    but miss its level: each CCC is high, the pooled one differs."""
    rng = np.random.default_rng(2)
    seq, x, y = [], [], []
    for s, (n, level) in enumerate([(50, 0.0), (80, 0.5), (30, -0.4)]):
        target = level + np.sin(np.linspace(0, 6, n)) * 0.3
        seq += [f"clip{s}"] * n
        y.append(target)
        x.append(target + rng.normal(0, 0.05, n) - level)   # right shape, every level predicted as 0
    x, y = np.concatenate(x), np.concatenate(y)
    r = metrics.sequence_ccc(np.array(seq), x, y)
    per = [_ccc_np(x[np.array(seq) == f"clip{s}"], y[np.array(seq) == f"clip{s}"]) for s in range(3)]
    assert np.isclose(r["mean"], np.mean(per)) and r["sequences"] == 3 and r["skipped"] == 0
    assert np.allclose([r["per_sequence"][f"clip{s}"] for s in range(3)], per)
    assert np.isclose(r["pooled"], _ccc_np(x, y)) and not np.isclose(r["pooled"], r["mean"], atol=0.05)


def test_a_sequence_without_a_defined_ccc_is_skipped_not_averaged_as_nan():
    seq = np.array([0, 0, 0, 1, 2, 2])
    x = np.array([0.1, 0.2, 0.4, 0.3, 0.5, 0.5])
    y = np.array([0.0, 0.3, 0.3, 0.3, 0.5, 0.5])    # sequence 1: one step; sequence 2: both constant 0.5
    r = metrics.sequence_ccc(seq, x, y)
    assert r["sequences"] == 1 and r["skipped"] == 2 and np.isclose(r["mean"], _ccc_np(x[:3], y[:3]))
    assert np.isnan(r["per_sequence"][1]) and np.isclose(r["pooled"], _ccc_np(x, y))


def test_summary_of_repetitions_reports_both_cccs():
    runs = [{"CCC_valence": 0.3, "CCC_valence_pooled": 0.2}, {"CCC_valence": 0.5, "CCC_valence_pooled": 0.4}]
    s = metrics.summarize(runs)
    assert np.isclose(s["CCC_valence"]["mean"], 0.4) and np.isclose(s["CCC_valence_pooled"]["std"], 0.1)
    assert "| CCC_valence_pooled | 0.30 ± 0.10 | 2 |" in metrics.table(s, runs="runs")
    assert "| metric | mean ± std | runs |" in metrics.table(s, runs="runs")
