import glob
import os

import numpy as np
import torch

from features import store


class Windows(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.shards = [store.ShardReader(p) for p in paths]
        self.index = [(k, i) for k, s in enumerate(self.shards) for i in range(s.n_windows)]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, j):
        k, i = self.index[j]
        return torch.from_numpy(self.shards[k].window(i)), j


def test_windows_through_a_two_worker_dataloader_equal_direct_reads(demo_store):
    paths = sorted(glob.glob(os.path.join(demo_store, "demo", "shards", "*", "shard-*.h5")))
    data = Windows(paths)
    assert len(data) > 100
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    seen = 0
    for x, j in loader:
        assert x.shape[1:] == (64, 64, 3) and x.dtype == torch.float32
        for row, jj in zip(x[:3], j[:3]):
            k, i = data.index[int(jj)]
            np.testing.assert_array_equal(row.numpy(), store.ShardReader(paths[k]).window(i))
        seen += len(j)
    assert seen == len(data)
