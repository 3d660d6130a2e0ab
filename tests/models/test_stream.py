"""The streaming loader's packed transfers (``models.stream``): with worker processes, ``loader``
gives the batches a plain ``DataLoader`` gives, in its order, with the same dtypes, shapes and
values, in every mode, shuffled or not, over several epochs; the main process receives one buffer
per transfer."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from models import stream
from models.data import ShardDataset, clip_table, collate, find_shards, loader


@pytest.fixture(scope="module")
def table(demo_store):
    return clip_table(find_shards(demo_store, "demo"))


def epochs(dl, n):
    return [[{k: v.clone() for k, v in b.items()} for b in dl] for _ in range(n)]


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape, k
            assert torch.equal(g[k], w[k]), k


@pytest.mark.parametrize("mode,features,batch_size,shuffle", [
    ("window", ("logmel", "crop_small", "pca"), 4, True),   # 123 windows: a last batch of 3
    ("window", ("logmel",), 11, False),                     # 123 = 11·11 + 2
    ("clip", ("logmel", "waveform"), 4, True),              # padded per batch: each batch collated alone
    ("segment", ("logmel",), 3, False),
])
def test_packed_transfers_give_the_data_loaders_batches(table, mode, features, batch_size, shuffle):
    ds = ShardDataset(table, range(len(table)), features=features, mode=mode)
    drop_last = shuffle and len(ds) % batch_size == 1
    plain = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=2, collate_fn=collate,
                       generator=torch.Generator().manual_seed(7), persistent_workers=True, drop_last=drop_last)
    packed = loader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=2, seed=7)
    assert isinstance(packed, stream.PackedLoader) and len(packed) == len(plain)
    assert packed.per_transfer > 1 or len(plain) < 8   # several batches per transfer where there are enough
    for got, want in zip(epochs(packed, 2), epochs(plain, 2)):   # the second epoch's shuffle too
        assert_same(got, want)


def test_pack_keeps_every_dtype_and_shape_and_views_one_buffer():
    rng = np.random.default_rng(0)
    batches = [{"a": torch.from_numpy(rng.normal(size=(3, 5)).astype(np.float32)),
                "b": torch.tensor([True, False, True]), "c": torch.arange(7, dtype=torch.int64),
                "d": torch.zeros((0, 4), dtype=torch.float16), "e": torch.from_numpy(rng.integers(0, 255, (2, 3, 4), np.uint8))},
               {"a": torch.ones(1, 5), "b": torch.tensor([False]), "c": torch.tensor([-1]),
                "d": torch.ones((2, 4), dtype=torch.float16), "e": torch.zeros((1, 3, 4), dtype=torch.uint8)}]
    buf, layout = stream.pack(batches)
    assert buf.dtype == torch.uint8 and buf.dim() == 1
    out = stream.unpack((buf, layout))
    assert_same(out, batches)
    base = buf.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == base for b in out for t in b.values())   # views, no copies
