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
