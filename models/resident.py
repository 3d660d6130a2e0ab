"""A fold's features held in GPU memory: batches formed on the device, no loader in the loop (issue 23 item 2).

:class:`ResidentLoader` reads every item of a :class:`~models.data.ShardDataset` once (in chunks, through
the dataset's own ``__getitems__``, without normalisation), keeps the arrays on ``device`` and forms
each batch there by indexing: a batch is the one :func:`models.data.collate` gives for the same
items, key for key and value for value (``tests/models/test_resident.py``), so a model cannot tell
the two apart. What stays as stored:

- face crops stay uint8 until the batch is formed (the models divide by 255 on the device:
  ``models.layers.as_images``); 16 crops of 173 px per window are 1.4 MB, not 5.7 MB of float32;
- normalisation (``dataset.norm``, fitted on the training part by ``fit_norm``) is applied to each
  batch on the device, visual features zeroed again where the video is unusable and every padded
  position kept at exactly zero, as the streaming path does on the CPU;
- clip and segment mode: a per-window or sequence feature is held as one array of all clips'
  steps and an offset per clip; a batch gathers its clips' steps padded to the batch's longest, so
  memory grows with the windows that exist, not with the longest clip.

:func:`feed` chooses: ``data="auto"`` keeps the fold resident on a GPU when its features take at
most ``RESIDENT_FRACTION`` of the free GPU memory (an estimate from the first items, printed), and
falls back to the streaming ``DataLoader`` (:func:`models.data.loader`) otherwise and on a CPU;
``"resident"`` and ``"stream"`` force one (``--data`` of ``models.train``). BAUM-1's 12k windows of
log-mel (0.6 GB) and 173 px crops (17 GB uint8) fit in one H100/H200.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from models.data import CLIP_ROWS, FEATURES, SEGMENT_KEYS, VISUAL, loader

logger = logging.getLogger("models.train")

RESIDENT_FRACTION = 0.5     # of the free GPU memory, for all resident parts of a fold together
DATA_MODES = ("auto", "resident", "stream")
_FIXED = (*CLIP_ROWS, "glove_oov")                       # clip mode: fixed-size per clip (e.g. 100 tokens)
_NEG = ("unit", "unit_kind", *SEGMENT_KEYS)             # padded with -1 (collate)
_CHUNK = 256


def _scalar_tensor(values) -> torch.Tensor:
    a = np.asarray(values)
    if a.dtype == bool:
        return torch.as_tensor(a)
    if np.issubdtype(a.dtype, np.integer):
        return torch.as_tensor(a.astype(np.int64))
    return torch.as_tensor(a.astype(np.float32))


def item_bytes(item: dict) -> int:
    return sum(np.asarray(v).nbytes for v in item.values())


class ResidentLoader:
    """Batches of ``dataset`` formed on ``device`` from arrays read once.

    Iterating gives the batches of one epoch: shuffled with ``generator`` (a seeded CPU
    ``torch.Generator``, as the DataLoader's, so ``--resume`` restores it) when ``shuffle``, and,
    shuffled, without a last batch of one item (BatchNorm, as ``models.data.loader``)."""

    def __init__(self, dataset, *, batch_size: int, shuffle: bool = False, seed: int = 0, device="cuda",
                 arrays: dict | None = None):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.arrays = arrays if arrays is not None else materialise(dataset, self.device)
        n = len(dataset)
        self.drop_last = shuffle and n > 1 and n % batch_size == 1
        self._norm = {k: tuple(torch.as_tensor(a, device=self.device) for a in v) for k, v in dataset.norm.items()}
        self._norm_of = dataset.norm
        self._window_features = {f for f in dataset.features if FEATURES[f][0] == "window"}

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.drop_last:
            order = order[:n - 1]
        on_device = order.to(self.device)
        for i in range(0, len(order), self.batch_size):
            yield self.batch(on_device[i:i + self.batch_size], order[i:i + self.batch_size].numpy())

    def batch(self, idx: torch.Tensor, host_idx: np.ndarray | None = None) -> dict:
        """The batch of items ``idx`` (a LongTensor on the device), as ``collate`` gives it.
        ``host_idx``, the same indices in a host array, gives each sequence's padded length without
        reading the device (a sync on a GPU): with it, forming a batch only queues work there."""
        host_idx = idx.cpu().numpy() if host_idx is None else host_idx
        if self._norm_of is not self.dataset.norm:   # the trainer sets train_ds.norm after fit_norm
            self._norm = {k: tuple(torch.as_tensor(a, device=self.device) for a in v)
                          for k, v in self.dataset.norm.items()}
            self._norm_of = self.dataset.norm
        a = self.arrays
        out = {k: v.index_select(0, idx) for k, v in a["fixed"].items()}
        masks = {}
        for key, (flat, offsets, lengths) in a["steps"].items():
            L = lengths.index_select(0, idx)
            host_L = a["host_lengths"][key][host_idx]
            T = int(host_L.max()) if len(host_L) else 0
            steps = torch.arange(T, device=self.device)
            m = steps[None, :] < L[:, None]
            pos = torch.where(m, offsets.index_select(0, idx)[:, None] + steps[None, :], 0)
            x = flat[pos] if len(flat) else flat.new_zeros((len(idx), T, *flat.shape[1:]))
            pad = -1 if key in _NEG else 0
            x = torch.where(m.view(*m.shape, *[1] * (x.ndim - 2)), x, torch.as_tensor(pad, dtype=x.dtype,
                                                                                        device=self.device))
            out[key], masks[key] = x, m
            if key == "waveform":
                out["waveform_length"] = L
        for key in masks:   # clip-level sequences (VGGish's patches, ...) carry their own mask
            if key not in ("waveform", "unit", "video_ok", "unit_kind", "valence_t", "arousal_t", *SEGMENT_KEYS) \
                    and key in self.dataset.features and key not in self._window_features:
                out[f"{key}_mask"] = masks[key]
        if "unit" in masks:
            out["mask"] = masks["unit"]
        for key in ("valence_t", "arousal_t"):   # NaN (no target) and padding: 0, out of target_mask
            if key in out:
                ok = masks[key] & torch.isfinite(out[key])
                out[key] = torch.where(ok, out[key], 0)
                out["target_mask"] = out["target_mask"] & ok if "target_mask" in out else ok
        for name, (mean, std) in self._norm.items():
            if name not in out:
                continue
            x = (out[name] - mean) / std
            if name in masks:                                  # per step: padding stays zero
                valid = masks["unit"] if name in self._window_features else masks[name]
                if name in VISUAL and "video_ok" in out:
                    valid = valid & out["video_ok"]
            elif name in VISUAL:                               # window mode: unusable video stays zero
                valid = out["video_ok"]
            else:
                valid = None
            if valid is not None:
                x = torch.where(valid.view(*valid.shape, *[1] * (x.ndim - valid.ndim)), x, 0)
            out[name] = x
        return out


def materialise(dataset, device) -> dict:
    """Every item of ``dataset``, unnormalised, as device arrays: ``fixed`` {key: (N, ...)} and, in
    clip/segment mode, ``steps`` {key: (flat (ΣT, ...), offsets (N,), lengths (N,))} and
    ``host_lengths`` {key: lengths (N,) as a numpy array}."""
    raw = copy.copy(dataset)
    raw.norm = {}
    n, clip_mode = len(raw), raw.mode != "window"
    fixed, scalars, steps = {}, {}, {}
    for start in range(0, n, _CHUNK):
        items = raw.__getitems__(list(range(start, min(n, start + _CHUNK))))
        for key in items[0]:
            values = [it[key] for it in items]
            if not isinstance(values[0], np.ndarray) or values[0].ndim == 0:
                scalars.setdefault(key, []).extend(values)
            elif clip_mode and key not in _FIXED:
                steps.setdefault(key, []).append(values)
            else:
                x = torch.from_numpy(np.stack(values))
                if key not in fixed:
                    fixed[key] = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=device)
                fixed[key][start:start + len(items)] = x.to(device, non_blocking=False)
    for key, values in scalars.items():
        fixed[key] = _scalar_tensor(values).to(device)
    out_steps, host_lengths = {}, {}
    for key, chunks in steps.items():
        values = [v for chunk in chunks for v in chunk]
        lengths = torch.as_tensor([len(v) for v in values], dtype=torch.int64)
        offsets = torch.cumsum(lengths, 0) - lengths
        flat = torch.from_numpy(np.concatenate(values)) if len(values) else torch.zeros(0)
        if flat.dtype == torch.float64:
            flat = flat.float()
        out_steps[key] = (flat.to(device), offsets.to(device), lengths.to(device))
        host_lengths[key] = lengths.numpy()
    return {"fixed": fixed, "steps": out_steps, "host_lengths": host_lengths}


def estimate_bytes(dataset, sample: int = 8) -> int:
    """The bytes ``materialise`` would hold: the mean of the first ``sample`` items times their number."""
    n = len(dataset)
    if not n:
        return 0
    raw = copy.copy(dataset)
    raw.norm = {}
    items = raw.__getitems__(list(range(min(n, sample))))
    return int(np.mean([item_bytes(it) for it in items]) * n)


def free_bytes(device) -> int:
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def feed(parts: dict, *, batch_size: int, num_workers: int = 0, seed: int = 0, device="cpu",
         data: str = "auto", fraction: float = RESIDENT_FRACTION) -> tuple[dict, str]:
    """Loaders for ``parts`` ({name: ShardDataset}): resident on the device or streaming (module
    docstring). The training part is shuffled. Returns ({name: loader}, "resident" | "stream");
    a dataset that appears under several names is read once."""
    if data not in DATA_MODES:
        raise ValueError(f"--data must be one of {', '.join(DATA_MODES)}, got {data!r}")
    unique = {id(ds): ds for ds in parts.values()}
    mode = data
    if data != "stream":
        need = sum(estimate_bytes(ds) for ds in unique.values())
        free = free_bytes(device)
        if data == "auto":
            mode = "resident" if torch.device(device).type == "cuda" and need <= fraction * free else "stream"
        elif torch.device(device).type == "cuda" and need > free:   # forced, and it cannot fit: say so now
            raise ValueError(f"--data resident: the fold's features take {need / 1e9:.1f} GB and {device} has "
                             f"{free / 1e9:.1f} GB free; use --data stream (or auto, which streams then)")
        logger.info("data: %s (%.2f GB of features%s)", mode, need / 1e9,
                    f", {free / 1e9:.1f} GB free on {device}" if free else "")
    if mode == "stream":
        return {name: loader(ds, batch_size=batch_size, shuffle=name == "train", num_workers=num_workers,
                             seed=seed, device=device) for name, ds in parts.items()}, mode
    arrays = {k: materialise(ds, device) for k, ds in unique.items()}
    return {name: ResidentLoader(ds, batch_size=batch_size, shuffle=name == "train", seed=seed, device=device,
                                 arrays=arrays[id(ds)]) for name, ds in parts.items()}, mode


def another(dl, *, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0, device="cpu"):
    """A second loader over ``dl``'s dataset (another batch size or order), resident when ``dl`` is,
    sharing its device arrays."""
    if isinstance(dl, ResidentLoader):
        return ResidentLoader(dl.dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, device=dl.device,
                              arrays=dl.arrays)
    return loader(dl.dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, seed=seed,
                  device=device)
