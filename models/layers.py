"""Small pieces shared by the segment and sequence models (ACLSTM, DLSTM, perception, SincNet+text).

Everything here is functional (tensors in, tensors out) or a thin ``nn.Module``; shapes are given
as (B, T, ...) with ``mask`` (B, T) bool, True = real step (the clip-mode batch convention of
``models/data.py``).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


def as_images(x: torch.Tensor) -> torch.Tensor:
    """Face crops as float in [0, 1]: the uint8 crops of ``models/data.py`` are divided by 255 here,
    on the device (issue 23 item 2); floats pass unchanged."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` with masked-out entries at exactly 0.

    ``mask`` broadcasts against ``scores`` (True = keep). A slice with no True entry gives all
    zeros instead of NaN (a padded clip with no real step contributes nothing).
    """
    if mask is None:
        return torch.softmax(scores, dim=dim)
    mask = mask.to(torch.bool)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    out = torch.softmax(scores, dim=dim)
    return out * mask.to(out.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only the steps where ``mask`` is True.

    ``x`` (B, T, ...), ``mask`` (B, T); returns (B, ...). A row without real steps gives 0.
    """
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def last_step(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real step of each row: ``x`` (B, T, D), ``mask`` (B, T) → (B, D)."""
    t = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.long() * (t + 1)).max(1).values.clamp_min(1) - 1
    return x[torch.arange(x.shape[0], device=x.device), last]


def unit_assignment(unit: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group the windows of each clip by prosodic unit (Hsu & Wu §II-III-A: segment = unit).

    Parameters
    ----------
    unit : (B, T) long, the prosodic unit of each window, -1 on padding.
    mask : (B, T) bool, True = real window.

    Returns
    -------
    assign : (B, S, T) float, row ``s`` holds 1/n_s on the n_s windows of the clip's ``s``-th
        unit (units numbered in increasing unit index, so in time order, without gaps: a unit
        that owns no window, e.g. a silence, is skipped), so ``assign @ x`` is the per-unit mean.
    seg_mask : (B, S) bool, True = a real segment.
    """
    valid = mask.to(torch.bool) & (unit >= 0)
    u = torch.where(valid, unit, torch.zeros_like(unit))
    n_units = int(u.max().item()) + 1 if u.numel() else 1
    onehot = F.one_hot(u, n_units).to(torch.float32) * valid.unsqueeze(-1).float()  # (B,T,U)
    present = onehot.sum(1) > 0  # (B, U)
    rank = present.long().cumsum(1) - 1  # (B, U) compact segment index of each unit
    n_seg = int(present.sum(1).max().item()) if present.any() else 1
    n_seg = max(n_seg, 1)
    seg_of_window = torch.gather(rank, 1, u)  # (B, T)
    seg_of_window = torch.where(valid, seg_of_window, torch.full_like(seg_of_window, n_seg))
    compact = F.one_hot(seg_of_window, n_seg + 1)[..., :n_seg].to(torch.float32)  # (B,T,S)
    counts = compact.sum(1)  # (B, S)
    assign = (compact / counts.clamp_min(1.0).unsqueeze(1)).transpose(1, 2)
    return assign, counts > 0


def unit_mean(x: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Per-segment mean of window features: ``x`` (B, T, ...), ``assign`` (B, S, T) → (B, S, ...)."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    out = torch.bmm(assign.to(flat.dtype), flat)
    return out.reshape(x.shape[0], assign.shape[1], *x.shape[2:])


class GeneralScore(nn.Module):
    """Luong's general dot-product score, score(h_t, h̄_s) = h_tᵀ W_a h̄_s (Lucas §2.1 eq 2).

    ``forward(h, hs)``: ``h`` (B, Dq), ``hs`` (B, S, Dk) → scores (B, S).
    """

    def __init__(self, d_query: int, d_key: int):
        super().__init__()
        self.W_a = nn.Parameter(torch.empty(d_query, d_key))
        nn.init.xavier_uniform_(self.W_a)

    def forward(self, h: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bq,qk,bsk->bs", h, self.W_a, hs)


def make_optimizer(params, *, name: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimiser a config names ("adam", "adadelta", "sgd"), for ``configure_optimizer``."""
    table = {"adam": torch.optim.Adam, "adadelta": torch.optim.Adadelta, "sgd": torch.optim.SGD}
    if name not in table:
        raise ValueError(f"optimizer={name!r}: use one of {sorted(table)}")
    return table[name]([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


def to_device(batch: dict, device) -> dict:
    """Move the tensors of a batch dict to ``device`` (other values pass through)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _phase_name(loss_fn) -> str:
    """A phase name from the loss function's name (``audio_loss`` -> "audio", ``_ntn_loss`` -> "ntn")."""
    name = getattr(loss_fn, "__name__", "") or ""
    name = name.strip("_")
    name = name[:-len("_loss")] if name.endswith("_loss") else name
    return name if name and name != "<lambda>" else "pretrain"


def _batch_size(batch: dict) -> int:
    if torch.is_tensor(batch.get("label")):
        return len(batch["label"])
    return next((len(v) for v in batch.values() if torch.is_tensor(v) and v.dim()), 0)


def fit(params: Iterable, loss_fn: Callable[[dict], torch.Tensor], loader, device,
        *, epochs: int, lr: float, phase: str | None = None) -> list[float]:
    """A short Adam loop used by the ``pretrain`` hooks (separately trained parts of a model).

    ``params``: parameters, or optimiser groups (dicts ``{"params": [...], "lr": ...}``; a group
    without ``lr`` takes ``lr``); those that do not require gradients are left out.
    ``loss_fn(batch)`` gets each batch (already on ``device``) and returns a scalar; returns the
    mean loss of each epoch. Logs one progress line per epoch (:mod:`models.progress`) under
    ``phase`` (default: the loss function's name, ``audio_loss`` -> "audio").
    """
    from models.progress import Progress

    params = list(params)
    if params and isinstance(params[0], dict):
        opt = torch.optim.Adam([{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params], lr=lr)
    else:
        opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=lr)
    progress = Progress(phase or _phase_name(loss_fn), epochs)
    history = []
    for _ in range(epochs):
        total, n, samples = torch.zeros((), dtype=torch.float64, device=device), 0, 0
        for batch in loader:
            samples += _batch_size(batch)
            loss = loss_fn(to_device(batch, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.detach(), n + 1   # read once per epoch, not per step (a sync on a GPU)
        history.append(float(total) / max(n, 1))
        progress.epoch(loss=history[-1], samples=samples)
    return history
