"""The GPU-resident data path (models/resident.py, issue 23 item 2): every batch equals the streaming
loader's ``collate`` of the same items, in window, clip and segment mode, with normalisation, uint8
crops, padding, masks, time-continuous targets and segment labels; the choice between the two;
the trainer end to end with ``--data resident``. Run on the CPU here (the arrays on the CPU
device), which exercises the same indexing a GPU does."""
import numpy as np
import pytest
import torch

import models
from models.data import ShardDataset, clip_table, collate, find_shards, fit_norm, loader
from models.layers import as_images
from models.resident import ResidentLoader, another, estimate_bytes, feed, materialise
from models.train import main


def _same(a: dict, b: dict):
    assert set(a) == set(b), set(a) ^ set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (k, a[k].dtype, b[k].dtype, a[k].shape, b[k].shape)
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def _check(ds, batch_size=5, seed=0):
    rl = ResidentLoader(ds, batch_size=batch_size, shuffle=True, seed=seed, device="cpu")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    batches = list(rl)
    assert len(batches) == len(rl)
    seen = torch.cat([b["clip"] for b in batches])
    assert len(seen) == len(ds) - (1 if len(ds) % batch_size == 1 else 0)
    for i, b in enumerate(batches):
        ks = order[i * batch_size:(i + 1) * batch_size].tolist()
        _same(b, collate(ds.__getitems__(ks)))
    return batches


def test_window_mode_batches_equal_collate(full_store):
    t = clip_table(find_shards(full_store, "demo"))
    feats = ("logmel", "crop_small", "pca", "vggish_window", "descriptor")
    ds = ShardDataset(t, range(len(t)), features=feats, drop_no_video=False)
    ds.norm = fit_norm(ds)
    assert "pca" in ds.norm and "logmel" in ds.norm
    batches = _check(ds, batch_size=7)
    b = batches[0]
    assert b["crop_small"].dtype == torch.uint8
    assert not b["video_ok"].all() or any(not bb["video_ok"].all() for bb in batches)  # the demo has windows without video
    for bb in batches:   # unusable video: visual features exactly zero after normalisation
        assert not bb["pca"][~bb["video_ok"]].any() and not bb["crop_small"][~bb["video_ok"]].any()


def test_clip_and_segment_mode_batches_equal_collate(full_store, seg_store):
    t = clip_table(find_shards(full_store, "demo"))
    ds = ShardDataset(t, range(len(t)), mode="clip",
                      features=("logmel", "crop_small", "pca", "vggish", "glove", "waveform"))
    ds.norm = fit_norm(ds)
    assert "vggish" in ds.norm
    batches = _check(ds, batch_size=4)
    lengths = torch.cat([b["mask"].sum(1) for b in batches])
    assert len(set(lengths.tolist())) > 1          # clips of different lengths: padding is exercised
    store, _, _ = seg_store
    ts = clip_table(find_shards(store, "demo"))
    seg = ShardDataset(ts, range(len(ts)), mode="segment", features=("logmel", "crop_small", "pca"))
    seg.norm = fit_norm(seg)
    batches = _check(seg, batch_size=4)
    assert "segment_label" in batches[0] and (torch.cat([b["segment_label"].flatten() for b in batches]) == -1).any()


def test_continuous_targets_equal_collate(vat_store):
    store, _ = vat_store
    t = clip_table(find_shards(store, "demo"))
    ds = ShardDataset(t, range(len(t)), mode="clip", features=("logmel", "pca"))
    ds.norm = fit_norm(ds)
    batches = _check(ds, batch_size=6)
    assert all("target_mask" in b and "valence_t" in b for b in batches)


def test_a_training_loader_drops_a_last_batch_of_one_as_the_stream_does(full_store):
    t = clip_table(find_shards(full_store, "demo"))
    ds = ShardDataset(t, range(len(t)), mode="clip", features=("logmel",))
    bs = len(ds) - 1    # leaves one item over
    rl = ResidentLoader(ds, batch_size=bs, shuffle=True, device="cpu")
    stream = loader(ds, batch_size=bs, shuffle=True)
    assert len(rl) == len(stream) == 1 and [len(b["label"]) for b in rl] == [bs]
    eval_ = another(rl, batch_size=bs, shuffle=False)
    assert eval_.arrays is rl.arrays and [len(b["label"]) for b in eval_] == [bs, 1]
    assert torch.equal(torch.cat([b["clip"] for b in eval_]), torch.as_tensor(ds.clips))


def test_the_estimate_is_the_bytes_held_and_auto_streams_on_a_cpu(full_store):
    t = clip_table(find_shards(full_store, "demo"))
    ds = ShardDataset(t, range(len(t)), features=("logmel", "crop_small"))
    held = sum(v.nbytes for v in materialise(ds, "cpu")["fixed"].values())
    assert 0.8 * held <= estimate_bytes(ds) <= 1.25 * held
    dl, mode = feed({"train": ds, "test": ds}, batch_size=8, device="cpu")
    assert mode == "stream" and isinstance(dl["train"], torch.utils.data.DataLoader)
    dl, mode = feed({"train": ds, "test": ds}, batch_size=8, device="cpu", data="resident")
    assert mode == "resident" and dl["train"].arrays is dl["test"].arrays   # one dataset is read once
    with pytest.raises(ValueError, match="--data"):
        feed({"train": ds}, batch_size=8, data="gpu")


def test_a_forced_resident_fold_that_cannot_fit_is_a_clear_error(full_store, monkeypatch):
    """``--data resident`` on a GPU with too little free memory stops before reading, saying what
    to do, instead of a CUDA out-of-memory traceback in the middle of a fold."""
    import models.resident as resident

    t = clip_table(find_shards(full_store, "demo"))
    ds = ShardDataset(t, range(len(t)), features=("logmel",))
    monkeypatch.setattr(resident, "free_bytes", lambda device: 1000)
    with pytest.raises(ValueError, match=r"--data resident: .* GB free; use --data stream"):
        feed({"train": ds}, batch_size=8, device="cuda", data="resident")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dl, mode = feed({"train": ds}, batch_size=8, device="cuda", data="auto")   # auto: streams instead
    assert mode == "stream"


def test_uint8_crops_give_the_models_the_same_input_as_floats():
    x = torch.randint(0, 256, (2, 3, 16, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(as_images(x), x.float() / 255)
    f = torch.rand(2, 3)
    assert as_images(f) is f
    avef = models.load("avef")
    cfg = avef.CONFIG(small_crops=True, audio_size=67, audio_channels=(8, 8, 8, 8, 8), visual_size=32,
                      visual_channels=(4, 4, 4, 4, 4, 4, 4, 4), fc=16, dbn_hidden=(8, 4))
    net = avef.MODEL(cfg).visual.eval()
    torch.testing.assert_close(net(x), net(x.float() / 255))


@pytest.mark.parametrize("model", ["perception", "avef"])
def test_the_trainer_gives_the_same_results_resident_and_streaming_on_one_fold(full_store, tmp_path, model):
    """Same fold, same seed: the two paths draw their batches in different orders (the DataLoader's
    sampler draws a seed from the generator first), so the scores may differ; both complete, record
    which path they took, and the resident run predicts every test clip."""
    extra = ["--set", "small_crops=true", "--set", "net_epochs=1", "--set", "rbm_epochs=1",
             "--set", "audio_size=67", "--set", "visual_size=32", "--set", "fc=16",
             "--set", "audio_channels=[8,8,8,8,8]", "--set", "visual_channels=[4,4,4,4,4,4,4,4]",
             "--set", "dbn_hidden=[8,4]"] if model == "avef" else []
    runs = {}
    for data in ("stream", "resident"):
        r = main(["--model", model, "--dataset", "demo", "--store", str(full_store), "--protocol", "loso",
                  "--fold", "0", "--epochs", "2", "--out", str(tmp_path / data), "--device", "cpu",
                  "--data", data, *extra])
        runs[data] = r["folds"][0]
        assert runs[data]["data"] == data
    assert runs["resident"]["predictions"]["clip_id"] and \
        sorted(runs["resident"]["predictions"]["clip_id"]) == sorted(runs["stream"]["predictions"]["clip_id"])
    assert runs["resident"]["items"] == runs["stream"]["items"]
