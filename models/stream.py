"""The streaming loader's transfers from its worker processes (issue 23 item 2).

A ``DataLoader`` worker hands each tensor of a batch to the main process through its own shared
memory segment: with ``file_descriptor`` sharing (Linux's default) the main process connects to
the worker's resource sharer once per tensor to receive the descriptor. With five tensors per
AVEF batch that was 1.5-2.2 ms of the main process's CPU per batch on the 2-core VM (cProfile:
``resource_sharer.get_connection``, ``recvmsg``), the same for 4 or 14 workers: the serial part that
capped the loader (bench_train on an H200: 4,664 windows/s with 14 workers, 466 batches/s).

Here a worker collates up to ``BATCHES_PER_TRANSFER`` consecutive batches, each with ``collate``
as before, and copies them into one uint8 buffer (``pack``); the main process receives that one
buffer and cuts the batches out of it as views (``unpack``): the same batches, in the same order,
with the same dtypes, shapes and values as ``DataLoader(batch_size=...)`` gives (tested). Pinned
memory (on a GPU) pins the one buffer.
"""
from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

#: batches a worker sends in one transfer, at most (fewer when an epoch has few batches per worker)
BATCHES_PER_TRANSFER = 4
_ALIGN = 64  # byte alignment of each tensor in the buffer (any dtype can view its slice)


def pack(batches: list[dict]) -> tuple[torch.Tensor, list]:
    """``batches`` ([{key: tensor}]) as one uint8 tensor and its layout [(batch, key, dtype, shape,
    offset, nbytes)]."""
    layout, offset = [], 0
    for b, batch in enumerate(batches):
        for key, value in batch.items():
            n = value.numel() * value.element_size()
            layout.append((b, key, value.dtype, tuple(value.shape), offset, n))
            offset += -(-n // _ALIGN) * _ALIGN
    buf = torch.empty(offset, dtype=torch.uint8)
    for b, key, _, _, offset, n in layout:
        if n:
            buf[offset:offset + n].copy_(batches[b][key].contiguous().reshape(-1).view(torch.uint8))
    return buf, layout


def unpack(packed: tuple[torch.Tensor, list]) -> list[dict]:
    """The batches of ``pack``, as views of its buffer."""
    buf, layout = packed
    out: list[dict] = []
    for b, key, dtype, shape, offset, n in layout:
        while len(out) <= b:
            out.append({})
        out[b][key] = buf[offset:offset + n].view(dtype).view(shape)
    return out


class _Groups(torch.utils.data.Sampler):
    """Consecutive groups of up to ``k`` batches (index lists) of ``batches``."""

    def __init__(self, batches: BatchSampler, k: int):
        self.batches, self.k = batches, k

    def __iter__(self):
        group = []
        for batch in self.batches:
            group.append(batch)
            if len(group) == self.k:
                yield group
                group = []
        if group:
            yield group

    def __len__(self) -> int:
        return -(-len(self.batches) // self.k)


class _Collated(torch.utils.data.Dataset):
    """Item of a group of index lists: its batches collated and packed (in the worker)."""

    def __init__(self, dataset, collate):
        self.dataset, self.collate = dataset, collate

    def __getitem__(self, group):
        get = getattr(self.dataset, "__getitems__", None)
        return pack([self.collate(get(ks) if get else [self.dataset[k] for k in ks]) for ks in group])


def _as_is(x):
    return x


class PackedLoader:
    """A ``DataLoader`` of ``num_workers`` (≥ 1) worker processes whose batches cross to the main
    process several at a time in one buffer (module docstring). Iterating gives the batches
    ``DataLoader(dataset, batch_size, shuffle, collate_fn=collate, generator=generator,
    drop_last=drop_last)`` gives, in its order; ``len``, ``dataset``, ``batch_size``,
    ``generator`` as a DataLoader's."""

    def __init__(self, dataset, *, batch_size: int, shuffle: bool, num_workers: int, collate, generator,
                 drop_last: bool = False, pin_memory: bool = False, per_transfer: int = BATCHES_PER_TRANSFER,
                 sampler=None):
        if num_workers < 1:
            raise ValueError("PackedLoader needs worker processes (num_workers >= 1); use a DataLoader without")
        self.dataset, self.batch_size, self.generator, self.drop_last = dataset, batch_size, generator, drop_last
        if sampler is None:   # another sampler of item indices: bench_train's draws with replacement
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        # enough transfers to keep every worker busy twice over, up to per_transfer batches in each
        k = max(1, min(per_transfer, len(self.batch_sampler) // (2 * num_workers)))
        self.per_transfer = k
        self.loader = DataLoader(_Collated(dataset, collate), batch_size=None, sampler=_Groups(self.batch_sampler, k),
                                 num_workers=num_workers, collate_fn=_as_is, pin_memory=pin_memory,
                                 generator=generator, persistent_workers=True)

    def __iter__(self):
        return self._batches(iter(self.loader))   # the DataLoader's iterator now, as iter(DataLoader) makes it

    @staticmethod
    def _batches(transfers):
        for packed in transfers:
            yield from unpack(packed)

    def __len__(self) -> int:
        return len(self.batch_sampler)
