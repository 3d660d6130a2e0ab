"""Metrics as the papers report them: WA, UA, macro-F1, CCC; mean ± std across folds.

- WA (weighted accuracy): the fraction of correct predictions (AVEF "global accuracy").
- UA (unweighted accuracy): the mean of the per-class recalls (Chao §4, Priyasad §4).
- macro-F1: the mean of the per-class F1 = 2·TP / (2·TP + FP + FN), over the classes present in
  the labels or the predictions (scikit-learn's ``f1_score(average="macro")``).
- CCC (Lucas §3, Lin 1989): 2·cov(x, y) / (var(x) + var(y) + (mean(x) − mean(y))²), population
  moments.
- Time-continuous labels (issue 18 item 3): Lucas §3 "The CCC is computed for each sequence in
  test partition of the dataset and averaged over the sequences": ``sequence_ccc`` gives that
  mean (``CCC_valence``) and, beside it, the CCC of all time steps of all sequences pooled
  (``CCC_valence_pooled``, AVEC's way, which also rewards getting each sequence's level right).
  A sequence whose CCC is undefined (fewer than 2 steps, or prediction and target one and the same
  constant: 0/0) is left out of the mean and counted in ``skipped``.
- Repetitions (Lucas §3: training "is repeated 10 times"): ``summarize`` over the runs gives
  mean ± std (population std, as over folds).
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


def sequence_ccc(sequences, x, y) -> dict:
    """CCC per sequence and pooled: ``sequences`` (n,) the sequence (clip) of each time step,
    ``x`` predictions and ``y`` targets (n,). Returns ``{"mean": mean over the sequences,
    "pooled": CCC of all steps, "per_sequence": {sequence: CCC}, "sequences": how many were
    averaged, "skipped": how many had no defined CCC}``."""
    sequences = np.asarray(sequences)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    per = {}
    for s in np.unique(sequences):
        m = sequences == s
        with np.errstate(invalid="ignore", divide="ignore"):
            per[s.item() if hasattr(s, "item") else s] = ccc(x[m], y[m]) if m.sum() >= 2 else float("nan")
    defined = [v for v in per.values() if np.isfinite(v)]
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = ccc(x, y) if len(x) >= 2 else float("nan")
    return {"mean": float(np.mean(defined)) if defined else float("nan"), "pooled": pooled,
            "per_sequence": per, "sequences": len(defined), "skipped": len(per) - len(defined)}


def summarize(results: list[dict], keys=("WA", "UA", "F1", "CCC_valence", "CCC_arousal", "CCC_valence_pooled",
                                         "CCC_arousal_pooled")) -> dict:
    """{metric: {"mean", "std", "folds"}} over the per-fold result dicts (population std)."""
    out = {}
    for k in keys:
        vals = [r[k] for r in results if k in r]
        if vals:
            out[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "folds": len(vals)}
    return out


def table(summary: dict, *, title: str = "", runs: str = "folds") -> str:
    """A Markdown table of ``summarize`` output: metric | mean ± std (in %, CCC as is); ``runs``
    names the last column (e.g. "runs" for folds × repetitions)."""
    lines = [f"### {title}", ""] if title else []
    lines += [f"| metric | mean ± std | {runs} |", "|---|---|---|"]
    for k, v in summary.items():
        scale, unit = (1, "") if k.startswith("CCC") else (100, " %")
        lines.append(f"| {k} | {scale * v['mean']:.2f} ± {scale * v['std']:.2f}{unit} | {v['folds']} |")
    return "\n".join(lines)
