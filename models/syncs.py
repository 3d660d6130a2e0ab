"""What a training step asks of the host: the operators it dispatches and the values it reads back.

On a GPU every operator is a kernel launch (a few µs of host time each, whatever its size) and every
read of a device value (``.item()``, ``float(t)``, ``bool(t)``, ``x[mask]``, ``nonzero``) waits
until the device has run every queued kernel, so the host cannot queue the next step while this one
computes. A model whose step is short is then bound by its launches and reads, not by its FLOPs
(issue 23 item 3). :class:`StepCounter` counts both while a block runs, on any device; on the CPU
the same calls reach the dispatcher, so CI's tests (``tests/models/test_syncs.py``) and
``bench/bench_train.py``'s ``ops_per_step`` / ``reads_per_step`` see them without a GPU.

Not counted as reads: the optimisers' step counters (``torch.optim`` keeps them on the host unless
``capturable``) and a packed RNN's ``batch_sizes`` (``pack_padded_sequence`` keeps them on the host
by construction; the copy of its lengths there, SincNet+text's one transfer per step, is a copy,
not a dispatched read, and is not seen on a CPU).
"""
from __future__ import annotations

import collections
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = ("_local_scalar_dense", "nonzero")
_MASK_INDEXING = ("index", "index_put", "index_put_", "_index_put_impl_")
_HOST_SIDE = ("torch/nn/modules/rnn.py", "torch/nn/utils/rnn.py")


def _from_host_side() -> bool:
    f = sys._getframe(2)   # the caller of the operator
    while f is not None:
        name = f.f_code.co_filename
        if "/torch/optim/" in name or name.endswith(_HOST_SIDE):
            return True
        f = f.f_back
    return False


class StepCounter(TorchDispatchMode):
    """``ops``: operators dispatched; ``reads``: {"_local_scalar_dense" | "nonzero" | "boolean mask": n}."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.reads = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = func.overloadpacket.__name__
        if name in READS:
            if not _from_host_side():
                self.reads[name] += 1
        elif name in _MASK_INDEXING and any(torch.is_tensor(i) and i.dtype == torch.bool for i in args[1]):
            self.reads["boolean mask"] += 1   # x[mask]: its nonzero runs inside the kernel
        return func(*args, **(kwargs or {}))
