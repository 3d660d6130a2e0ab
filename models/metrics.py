"""Metrics as the papers report them: WA, UA, macro-F1, CCC; mean ± std across folds.

- WA (weighted accuracy): the fraction of correct predictions (AVEF "global accuracy").
- UA (unweighted accuracy): the mean of the per-class recalls (Chao §4, Priyasad §4).
- macro-F1: the mean of the per-class F1 = 2·TP / (2·TP + FP + FN), over the classes present in
  the labels or the predictions (scikit-learn's ``f1_score(average="macro")``).
- CCC (Lucas §3, Lin 1989): 2·cov(x, y) / (var(x) + var(y) + (mean(x) − mean(y))²), population
  moments.
"""
from __future__ import annotations

import numpy as np


def confusion(y_true, y_pred, *, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def classification(y_true, y_pred, *, n_classes: int) -> dict:
    """WA, UA, macro-F1 and the confusion matrix of class indices ``y_true``/``y_pred``."""
    cm = confusion(y_true, y_pred, n_classes=n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    present = support > 0
    recall = tp[present] / support[present]
    used = present | (predicted > 0)
    denom = 2 * tp + (predicted - tp) + (support - tp)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return {"WA": float(tp.sum() / max(cm.sum(), 1)), "UA": float(recall.mean()) if present.any() else 0.0,
            "F1": float(f1[used].mean()) if used.any() else 0.0, "n": int(cm.sum()),
            "confusion": cm.tolist()}


def ccc(x, y) -> float:
    """Concordance correlation coefficient of two 1-D arrays (population moments)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return float(2 * cov / (x.var() + y.var() + (mx - my) ** 2))


def summarize(results: list[dict], keys=("WA", "UA", "F1", "CCC_valence", "CCC_arousal")) -> dict:
    """{metric: {"mean", "std", "folds"}} over the per-fold result dicts (population std)."""
    out = {}
    for k in keys:
        vals = [r[k] for r in results if k in r]
        if vals:
            out[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "folds": len(vals)}
    return out


def table(summary: dict, *, title: str = "") -> str:
    """A Markdown table of ``summarize`` output: metric | mean ± std (in %, CCC as is)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | mean ± std | folds |", "|---|---|---|"]
    for k, v in summary.items():
        scale, unit = (1, "") if k.startswith("CCC") else (100, " %")
        lines.append(f"| {k} | {scale * v['mean']:.2f} ± {scale * v['std']:.2f}{unit} | {v['folds']} |")
    return "\n".join(lines)
