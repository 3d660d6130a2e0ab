"""No device reads inside a training step (issue 23 item 3): on a GPU, reading a value back (``.item()``,
``float(t)``, ``bool(t)``, ``nonzero``, ``x[mask]``) waits until the device has run every queued
kernel, so the host cannot queue the next step while this one computes. Counted on the CPU with
``models.syncs.StepCounter``, where the same calls reach the dispatcher."""
import numpy as np
import pytest
import torch

import models
from models import avef, train
from models.data import ShardDataset, clip_table, find_shards, fit_norm
from models.resident import ResidentLoader
from models.syncs import StepCounter
from tests.models import test_avef, test_dlstm, test_perception, test_sincnet_text


def _avef():
    return avef.AVEF(avef.AVEFConfig(**test_avef.TINY)), {
        "logmel": torch.randn(4, 3, 64, 64), "crop_small": torch.randint(0, 256, (4, 3, 16, 72, 72), dtype=torch.uint8),
        "label": torch.tensor([0, 1, 2, 0])}


def _dlstm_continuous():
    """DLSTM regression on time-continuous targets, some steps without one (its masked MSE)."""
    b = test_dlstm.make_batch()
    b["valence_t"], b["arousal_t"] = torch.randn(2, 4), torch.randn(2, 4)
    b["target_mask"] = b["mask"] & torch.tensor([[True, False, True, True], [True, True, False, False]])
    return test_dlstm.tiny(video_feature="descriptor"), b


CASES = {
    "avef": _avef,
    "perception": lambda: (test_perception.tiny(), test_perception.make_batch()),
    # the bypass epochs (§3.1) and after them; stored descriptors (the end-to-end CNN runs only the
    # frames of windows with a face: a boolean selection, one read by design)
    "dlstm-bypass": lambda: (test_dlstm.tiny(video_feature="descriptor", task="classification"),
                             test_dlstm.make_batch()),
    "dlstm-attention": lambda: (test_dlstm.tiny(video_feature="descriptor", task="classification",
                                                bypass_epochs=0), test_dlstm.make_batch()),
    "dlstm-continuous": _dlstm_continuous,
    **{f"sincnet_text-{f}": (lambda f=f: (test_sincnet_text.tiny(f), test_sincnet_text.make_batch()))
       for f in test_sincnet_text.S.FUSIONS},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_training_step_reads_nothing_back(name):
    torch.manual_seed(0)
    model, batch = CASES[name]()
    opt = model.configure_optimizer() if hasattr(model, "configure_optimizer") else torch.optim.Adam(model.parameters())

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
        loss = model.loss(out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()   # warm-up: the optimiser's state is made
    with StepCounter() as reads:
        step()
    assert not reads.reads, dict(reads.reads)


def test_the_counter_sees_a_read():
    """The mode is not blind: ``.item()``, ``bool(t)`` and a mask selection are counted."""
    x = torch.randn(5)
    with StepCounter() as reads:
        x.sum().item()
        bool((x > 0).any())
        x[x > 0]
        x.nonzero()
        x[x > 0] = 0
    assert dict(reads.reads) == {"_local_scalar_dense": 2, "nonzero": 1, "boolean mask": 2}
    assert reads.ops >= 10   # every operator: sum, item, gt, any, ...


def test_an_epoch_on_resident_clips_reads_once(full_store):
    """``train_epoch`` over resident clip batches (perception, several step keys of unequal length):
    one read for the whole epoch, the mean loss at its end. Forming a batch takes each sequence's
    padded length from host copies of the lengths; the loss is summed on the device."""
    t = clip_table(find_shards(full_store, "demo"))
    module = models.load("perception")
    cfg = module.CONFIG()
    classes, label_map = train.classes_of(module, cfg, t.manifest.get("label_set", sorted(set(t.label))))
    cfg.n_classes = len(classes)
    ds = ShardDataset(t, range(len(t)), features=module.features(cfg), mode="clip", label_map=label_map or None)
    ds.norm = fit_norm(ds)
    dl = ResidentLoader(ds, batch_size=4, shuffle=True, device="cpu")
    assert len(dl) >= 3
    model = module.MODEL(cfg)
    opt = model.configure_optimizer()
    train.train_epoch(model, module, dl, opt, "cpu")   # optimiser state made
    stats = {}
    with StepCounter() as reads:
        loss = train.train_epoch(model, module, dl, opt, "cpu", stats=stats)
    assert reads.reads == {"_local_scalar_dense": 1}, dict(reads.reads)
    assert stats["samples"] == len(ds) - (len(ds) % 4 == 1) and loss > 0
    # prediction (validation every epoch, the test part): outputs read after the loop, so its reads
    # (the loss, the first batch's attention maps) do not grow with the batches
    counts, preds = [], []
    for bs in (2, 6):
        with StepCounter() as reads:
            preds.append(train.predict(model, module, ResidentLoader(ds, batch_size=bs, device="cpu"), "cpu"))
        counts.append(dict(reads.reads))
    assert counts[0] == counts[1], counts
    np.testing.assert_array_equal(preds[0]["clip"], preds[1]["clip"])
    np.testing.assert_allclose(preds[0]["logits"], preds[1]["logits"], rtol=1e-4, atol=1e-5)


def _reads(run) -> dict:
    with StepCounter() as reads:
        run()
    return dict(reads.reads)


@pytest.mark.parametrize("name", ["avef", "sincnet_text"])
def test_pre_training_reads_per_epoch_not_per_step(name):
    """AVEF's audio/visual nets and RBMs (§4.2, 500 epochs in the paper) and the ``fit`` loop of the
    other models' pre-training phases (SincNet+text's audio and text branches) read their loss and
    hits once per epoch: three times as many batches give the same count."""
    def run(n_batches):
        torch.manual_seed(0)
        if name == "avef":
            model, batch = _avef()
            model.cfg.net_epochs = model.cfg.rbm_epochs = 2
        else:
            model, batch = test_sincnet_text.tiny(pretrain_epochs=2), test_sincnet_text.make_batch()
        return _reads(lambda: model.pretrain([batch] * n_batches, "cpu"))

    few, many = run(2), run(6)
    assert few == many and sum(few.values()) > 0, (few, many)


def test_dlstm_host_copies_follow_a_loaded_checkpoint():
    """DLSTM reads its epoch and frozen bypass state from host copies; loading a state_dict (``--resume``,
    ``load_checkpoint``) refreshes them from the buffers, so a resumed fold bypasses as the original."""
    model = test_dlstm.tiny(video_feature="descriptor", bypass_epochs=3)
    model.on_epoch_start(5)
    assert not model.bypass
    model.frozen_bypass.fill_(1)   # as pretrain_unimodal leaves it when frozen in the bypass mode
    fresh = test_dlstm.tiny(video_feature="descriptor", bypass_epochs=3)
    assert fresh._epoch == 0 and fresh._frozen_bypass == -1
    fresh.load_state_dict(model.state_dict())
    assert (fresh._epoch, fresh._frozen_bypass) == (5, 1) and fresh.bypass
