import glob
import os

import numpy as np
import pytest
import torch

from features.errors import ParameterError
from features.store import open_file
from models.data import ShardDataset, clip_table, collate, find_shards, fit_norm, loader


@pytest.fixture(scope="module")
def table(demo_store):
    return clip_table(find_shards(demo_store, "demo"))


def test_find_shards_uses_the_build_record(demo_store, table):
    paths = find_shards(demo_store, "demo")
    assert sorted(paths) == sorted(glob.glob(os.path.join(demo_store, "demo", "shards", "*", "shard-*.h5")))
    assert len(table) == 21 and table.usable.sum() == 18
    assert table.manifest["label_set"] == ["anger", "happiness", "sadness"]
    with pytest.raises(ParameterError, match="BuildShards --dataset nope"):
        find_shards(demo_store, "nope")


def test_window_mode_shapes_and_masks(table):
    ds = ShardDataset(table, range(len(table)), features=("logmel", "crop_small", "pca"))
    bad = {r for r in range(len(table)) if table.status[r] != "ok"}
    assert not bad & {r for r, _ in ds.items}                       # failed clips are never items
    b = collate(ds.__getitems__(list(range(5))))
    assert b["logmel"].shape == (5, 3, 64, 64) and b["logmel"].dtype == torch.float32
    assert b["crop_small"].shape == (5, 3, 16, 72, 72)
    assert b["crop_small"].dtype == torch.uint8   # the stored bytes; the models divide by 255 on the device
    r0, i0 = ds.items[0]
    stored = ds.shards[table.shard[r0]].window_video(i0, small=True)   # (16, H, W, 3)
    assert np.array_equal(b["crop_small"][0].numpy(), stored.transpose(3, 0, 1, 2))
    assert b["pca"].shape == (5, 16, 20) and b["label"].dtype == torch.int64 and b["video_ok"].all()
    # the image is the reader's (64 mels, 64 frames, 3) image, channels first
    r, i = ds.items[0]
    s = ds.shards[table.shard[r]]
    np.testing.assert_allclose(b["logmel"][0].numpy(), s.window(i).transpose(2, 0, 1), rtol=1e-6)
    assert int(b["label"][0]) == ["anger", "happiness", "sadness"].index(table.label[r])
    # windows without video are left out for visual features, kept for audio only
    audio = ShardDataset(table, range(len(table)), features=("logmel",))
    n_windows = int(table.n_windows[table.usable].sum())
    assert len(audio) == n_windows
    no_video = sum(int((1 - ds.shards[k].windows["video_ok"][ds.shards[k].windows["clip"] == table.index[r]]).sum())
                   for r in np.flatnonzero(table.usable) for k in [table.shard[r]])
    assert no_video > 0 and len(ds) == n_windows - no_video


def test_nan_pca_is_masked_not_passed(store_copy):
    paths = find_shards(store_copy, "demo")
    with open_file(paths[0], "a") as f:  # a frame whose PCA is NaN (e.g. no basis could be fitted)
        vf = f["windows/video_frames"][0]
        row = f["video/offsets"][f["windows/clip"][0]] + vf[3]
        f["video/pca"][row] = np.nan
    t = clip_table(paths)
    ds = ShardDataset(t, range(len(t)), features=("logmel", "pca"), drop_no_video=False)
    j = next(k for k, (r, i) in enumerate(ds.items) if t.shard[r] == 0 and i == 0)
    item = ds[j]
    assert not item["video_ok"] and np.all(item["pca"] == 0)
    b = collate(ds.__getitems__(list(range(len(ds)))))
    assert torch.isfinite(b["pca"]).all()


def test_clip_mode_pads_with_masks_and_units(table):
    ds = ShardDataset(table, range(len(table)), features=("logmel", "pca"), mode="clip")
    assert len(ds) == 18
    b = collate(ds.__getitems__([0, 1, 2]))
    T = int(table.n_windows[ds.items[:3]].max())
    assert b["logmel"].shape == (3, T, 3, 64, 64) and b["pca"].shape == (3, T, 16, 20)
    assert b["mask"].shape == (3, T) and b["mask"].sum(1).tolist() == table.n_windows[ds.items[:3]].tolist()
    assert (b["unit"][~b["mask"]] == -1).all() and (b["unit"][b["mask"]] >= 0).all()
    assert (b["logmel"][~b["mask"]] == 0).all()


def test_missing_feature_names_it_and_the_fix(table):
    with pytest.raises(ParameterError, match="'vggish'.*docs/embeddings.md"):
        ShardDataset(table, range(len(table)), features=("vggish",), mode="clip")
    with pytest.raises(ParameterError, match="per clip"):
        ShardDataset(table, range(len(table)), features=("glove",), mode="window")


def test_workers_give_the_same_batches(table):
    ds = ShardDataset(table, range(len(table)), features=("logmel", "pca"))
    one = [b for b in loader(ds, batch_size=16, num_workers=0)]
    two = [b for b in loader(ds, batch_size=16, num_workers=2)]
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert torch.equal(a["logmel"], b["logmel"]) and torch.equal(a["clip"], b["clip"])


def test_norm_statistics(table):
    ds = ShardDataset(table, range(len(table)), features=("logmel", "pca"))
    ds.norm = fit_norm(ds)
    b = collate(ds.__getitems__(list(range(len(ds)))))
    x = b["logmel"].numpy()
    np.testing.assert_allclose(x.mean(axis=(0, 3)), 0, atol=1e-3)
    np.testing.assert_allclose(x.std(axis=(0, 3)), 1, atol=1e-3)
    np.testing.assert_allclose(b["pca"].numpy().reshape(-1, 20).mean(0), 0, atol=1e-4)
