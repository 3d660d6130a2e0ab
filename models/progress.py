"""One progress line per epoch of every training phase (issue 23 item 4).

    loso-s1 audio_net epoch 3/500: loss 1.0712, accuracy 0.4100, 231 samples/s, ETA 41:07

Every phase that loops over epochs (the pre-training of a model's parts in its ``pretrain`` hook:
AVEF's audio- and visual-net and RBMs, SincNet+text's two networks, ACLSTM's NTN; the SVM of AVEF's
video fusion; the trainer's main phase) makes a :class:`Progress` and calls :meth:`Progress.epoch`
after each epoch. Lines go to the ``models.train`` logger (``python -m models.train`` shows them on
stderr at INFO). ``samples/s`` counts the phase's training samples over the epoch's wall time
(validation included where the phase validates); ``ETA`` is the phase's remaining epochs times the
mean duration of its last five epochs. The trainer names the fold (:func:`context`), so the lines
of a fold's phases carry its name.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import time

logger = logging.getLogger("models.train")
_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("progress_prefix", default="")


@contextlib.contextmanager
def context(prefix: str):
    """Lines made inside start with ``prefix`` (the trainer passes the fold's name)."""
    token = _prefix.set(prefix)
    try:
        yield
    finally:
        _prefix.reset(token)


def clock(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on (``--:--`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    s = int(round(max(seconds, 0.0)))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _num(x) -> str:
    x = float(x)
    return f"{x:.4g}" if x and (abs(x) >= 1e4 or abs(x) < 1e-3) else f"{x:.4f}"


class Progress:
    """The per-epoch lines of one phase.

    ``phase``: its name (``audio_net``, ``rbm-1``, ``svm``, ``train``, ...); ``total_epochs``: the
    epochs it runs; ``n_samples``: training samples per epoch (an :meth:`epoch` call may give the
    count it saw instead); ``start``: epochs already done (a resumed phase); ``metric``: the name
    the metric is shown under. Logs a first line when made, so a long first epoch is announced.
    """

    def __init__(self, phase: str, total_epochs: int, n_samples: int | None = None, *, start: int = 0,
                 metric: str = "metric", log: logging.Logger | None = None):
        self.phase = f"{_prefix.get()} {phase}".strip()
        self.total, self.n_samples, self.done, self.metric = int(total_epochs), n_samples, int(start), metric
        self.log = log or logger
        self.durations: list[float] = []
        self.lines: list[str] = []
        what = f" of {n_samples} samples" if n_samples is not None else ""
        resumed = f", from epoch {start + 1}" if start else ""
        self.log.info("%s: %d epoch%s%s%s", self.phase, self.total, "" if self.total == 1 else "s", what, resumed)
        self._t = time.perf_counter()

    def epoch(self, loss: float | None = None, metric: float | None = None, samples: int | None = None,
              **extra) -> str:
        """Log the line of the epoch just finished: ``loss``, named ``extra`` figures (e.g.
        ``val_loss=`` shown as "val loss"), ``metric`` (left out when None or NaN), samples/s, ETA."""
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        self.done += 1
        self.durations.append(dt)
        parts = [] if loss is None else [f"loss {_num(loss)}"]
        for k, v in extra.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                parts.append(f"{k.replace('_', ' ')} {_num(v) if isinstance(v, (int, float)) else v}")
        if metric is not None and not math.isnan(float(metric)):
            parts.append(f"{self.metric} {_num(metric)}")
        n = samples if samples is not None else self.n_samples
        if n is not None:
            parts.append(f"{n / max(dt, 1e-9):.0f} samples/s")
        recent = self.durations[-5:]
        parts.append(f"ETA {clock(sum(recent) / len(recent) * max(self.total - self.done, 0))}")
        line = f"{self.phase} epoch {self.done}/{self.total}: " + ", ".join(parts)
        self.log.info("%s", line)
        self.lines.append(line)
        return line
