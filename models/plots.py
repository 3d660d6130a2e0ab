"""Pictures of a training run (matplotlib, Agg): confusion matrix (AVEF Tables 8-10, Chao Fig. 5),
training curves, attention heatmaps (Chao Fig. 2-3: alignment (T_audio, T_video) and perception
attention (T, E))."""
from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(cm, classes, path, *, title: str = "") -> str:
    """Row-normalised confusion matrix in % (rows = true class), counts in brackets."""
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    pct = 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * n, 1.0 + 0.8 * n))
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{pct[i, j]:.1f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=8,
                    color="white" if pct[i, j] > 60 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="% of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def curves_png(history: list[dict], path, *, title: str = "") -> str:
    """Loss (train, validation) and the validation metric per epoch; ``history`` rows hold
    ``epoch``, ``train_loss`` and optionally ``val_loss``, ``val_metric``."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ep, [h["train_loss"] for h in history], label="train loss")
    if any("val_loss" in h for h in history):
        ax.plot(ep, [h.get("val_loss", np.nan) for h in history], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if any("val_metric" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(ep, [h.get("val_metric", np.nan) for h in history], "g--", label="validation metric")
        ax2.set_ylabel("validation metric")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def attention_png(weights, path, *, xlabel: str = "video frame", ylabel: str = "audio step",
                  title: str = "", xticks=None, yticks=None, panel: str = "output") -> str:
    """A heatmap of one attention map: (T_audio, T_video) alignment weights or (T, E)
    perception attention (rows = query steps); a weight vector (N,) (one weight per segment or
    position, e.g. ACLSTM's NTN score, Priyasad's fusion attention β) as one row; a (T, M, N) map
    (e.g. Lucas eq 4: per step, per output dimension, over the DLSTMs) as M panels, titled
    ``f"{panel} {m}"``. A torch tensor is accepted; a leading batch axis of size 1 is dropped."""
    plt = _plt()
    w = weights.detach().float().cpu().numpy() if hasattr(weights, "detach") else np.asarray(weights, float)
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    if w.ndim == 1:
        w, ylabel, yticks = w[None, :], "", [""]
    if w.ndim not in (2, 3) or 0 in w.shape:
        raise ValueError(f"attention_png needs a vector (N,), a matrix (T_query, T_key) or (T, M, N) "
                         f"panels, got shape {w.shape}")
    panels = [w] if w.ndim == 2 else [w[:, m] for m in range(w.shape[1])]
    rows, cols = panels[0].shape
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(len(panels) * (2 + 0.15 * cols), 1.5 + 0.15 * rows))
    for m, (ax, p) in enumerate(zip(axes[0], panels)):
        im = ax.imshow(p, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if xticks is not None:
            ax.set_xticks(range(len(xticks)), xticks, rotation=90)
        if yticks is not None:
            ax.set_yticks(range(len(yticks)), yticks)
        ax.set_title(title if len(panels) == 1 else f"{title} {panel} {m}".strip())
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
