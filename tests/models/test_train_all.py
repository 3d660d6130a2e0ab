"""Every registered model (and its main variants) trains end to end through ``models.train`` on
the real demo shards (``full_store``: logmel, crops, PCA, descriptor, waveform, VGGish, GloVe;
``va_store``: the same clips with continuous valence/arousal), at tiny widths for 2 epochs of one
LOSO fold: results.json with metrics in range, a checkpoint that rebuilds the same class from the
file alone and reproduces the stored test predictions, and the pictures."""
import json

import matplotlib.image
import numpy as np
import pytest
import torch

import models
from models.data import clip_table, collate, find_shards
from models.train import checkpoint_dataset, cli, clip_outputs, load_checkpoint, main, parse_args, predict

AVEF = ["small_crops=true", "audio_size=67", "audio_channels=[8,16,16,16,16]", "visual_size=32",
        "visual_channels=[4,8,8,8,16,16,16,16]", "fc=32", "dbn_hidden=[16,8]", "net_epochs=1", "rbm_epochs=1"]
# ACLSTM's and DLSTM's default visual input is the 72 px crops through a CNN (VGG-19 / VGGFace's
# VGG-16 convs at paper size): here one conv of 4 filters between pools (18×18 input, 9×9 out)
ACLSTM = ["emotion_filters=8", "sound_filters=8", "visual_hidden=8", "hidden=8", "pretrain_epochs=1", "ntn_epochs=1",
          'vgg_cfg=["M",4,"M","M"]']
DLSTM = ["audio_hidden=8", "video_hidden=8", "early_hidden=8", "bypass_epochs=1", 'video_cnn=["M",4,"M"]']
PERCEPTION = ["hidden=8", "hidden_av=8", "hidden_sel=4", "embed_dim=4", "visual_layer=8"]
SINCNET = ["sinc_filters=8", "sinc_kernel=31", "conv_filters=[8,8]", "audio_dnn=[32,32]", "rnn_hidden=8",
           "text_filters=4", "text_dnn=[32]", "segment_dim=8", "fusion_hidden=16", "pretrain_epochs=1",
           "eval_shift_ms=100"]

# (test id, model, store, --set overrides, the attention maps the model returns)
CASES = [
    ("avef", "avef", "full", AVEF, set()),
    ("aclstm", "aclstm", "full", ACLSTM, {"segment"}),
    ("aclstm-coupled", "aclstm", "full", ACLSTM + ["variant=coupled"], set()),
    ("aclstm-feature", "aclstm", "full", ACLSTM + ["variant=feature"], {"segment"}),
    ("aclstm-decision", "aclstm", "full", ACLSTM + ["variant=decision"], {"segment_audio", "segment_visual"}),
    ("aclstm-descriptor", "aclstm", "full", ACLSTM + ["visual_feature=descriptor"], {"segment"}),
    ("dlstm-classification", "dlstm", "full", DLSTM + ["task=classification"], {"embedding", "fusion"}),
    ("dlstm-descriptor", "dlstm", "full", DLSTM + ["task=classification", "video_feature=descriptor"],
     {"embedding", "fusion"}),
    ("dlstm-hlb", "dlstm", "full", DLSTM + ["task=classification", "fusion=hlb"], {"embedding"}),
    ("dlstm-regression", "dlstm", "va", DLSTM, {"embedding", "fusion"}),
    ("dlstm-regression-olb", "dlstm", "va", DLSTM + ["fusion=olb", "early_fusion=false"], {"embedding"}),
    ("perception", "perception", "full", PERCEPTION, {"alignment", "perception"}),
    ("perception-average", "perception", "full", PERCEPTION + ["variant=average"], {"alignment"}),
    ("perception-last", "perception", "full", PERCEPTION + ["variant=last"], {"alignment"}),
    ("sincnet_text-F-I", "sincnet_text", "full", SINCNET + ["fusion=F-I"], {"cross"}),
    ("sincnet_text-F-II", "sincnet_text", "full", SINCNET + ["fusion=F-II"], {"cross", "fusion"}),
    ("sincnet_text-F-III", "sincnet_text", "full", SINCNET + ["fusion=F-III"], {"cross", "fusion_audio", "fusion_text"}),
]


def test_every_registered_model_is_covered():
    assert {c[1] for c in CASES} == set(models.MODELS)


def train(store, model, sets, out, *extra):
    argv = ["--model", model, "--dataset", "demo", "--protocol", "loso", "--fold", "0", "--epochs", "2",
            "--store", str(store), "--out", str(out), "--threads", "1"]
    for s in sets:
        argv += ["--set", s]
    return main(argv + list(extra))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trains_end_to_end(case, full_store, va_store, tmp_path):
    name, model, which, sets, attention = case
    store = full_store if which == "full" else va_store
    res = train(store, model, sets, tmp_path)
    r = res["folds"][0]
    fold = tmp_path / model / "demo" / "loso" / r["fold"]

    # results.json: what main returned, metrics in range, 2 epochs of finite losses
    stored = json.load(open(fold / "results.json"))
    assert stored["fold"] == r["fold"] == "loso-s1" and stored["epochs_run"] == 2
    assert all(np.isfinite(h["train_loss"]) for h in stored["history"])
    # AVEF keeps its last epoch (Table 3) and trains on every training speaker: no validation part
    assert all(np.isfinite(h["val_loss"]) != (model == "avef") for h in stored["history"])
    assert stored["items"]["train"] > 0 and stored["items"]["test"] > 0
    assert set(stored["speakers"]["test"]) == {"s1"}
    assert set(stored["speakers"]["test"]).isdisjoint(stored["speakers"]["train"] + stored["speakers"]["val"])
    preds = stored["predictions"]
    if which == "full":
        assert {"WA", "UA", "F1"} <= set(stored) and not any(k.startswith("CCC") for k in stored)
        assert all(0 <= stored[k] <= 1 for k in ("WA", "UA", "F1"))
        cm = np.array(stored["confusion"])
        # s1 has six ok clips; AVEF's window mode leaves out windows without video (AVEF §4.3.1), so
        # the audio-only s1_sadness_02.wav is not scored there
        n = 5 if model == "avef" else 6
        assert cm.shape == (3, 3) and cm.sum() == stored["n"] == len(preds["clip_id"]) == n
        assert ("s1_sadness_02" in preds["clip_id"]) == (model != "avef")
        assert np.isclose(stored["WA"], np.trace(cm) / cm.sum())
        assert np.isclose(stored["UA"], np.mean(np.diag(cm) / cm.sum(1)))
        assert stored["classes"] == ["anger", "happiness", "sadness"]
    else:
        assert "WA" not in stored and {"CCC_valence", "CCC_arousal"} <= set(stored)
        assert all(-1 <= stored[k] <= 1 for k in ("CCC_valence", "CCC_arousal"))
        pred = np.array(preds["pred"])
        assert pred.shape == (6, 2) and np.all(np.isfinite(pred))
        from models.metrics import ccc
        assert np.isclose(stored["CCC_valence"], ccc(pred[:, 0], preds["valence"]))
        # the targets are the labels CSV's (tests/models/conftest.py: sadness = low arousal)
        for cid, a in zip(preds["clip_id"], preds["arousal"]):
            assert (a < 0) == ("sadness" in cid)

    # the checkpoint rebuilds the same class from the file alone and reproduces the test outputs
    net, ckpt = load_checkpoint(fold / "checkpoint.pt")
    module = models.load(model)
    assert type(net) is module.MODEL and json.loads(json.dumps(ckpt["config"])) == stored["config"]
    for key, value in parse_args(["--model", model, "--dataset", "demo", *sum((["--set", s] for s in sets), [])]).set:
        got = ckpt["config"][key]
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    table = clip_table(find_shards(store, "demo"))
    rows = [int(np.flatnonzero(table.id == cid)[0]) for cid in preds["clip_id"]]
    ds = checkpoint_dataset(ckpt, table, rows)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    p = predict(net, module, dl, "cpu")
    clf = None
    if "clip_train" in ckpt:   # AVEF: the polynomial SVM refitted on the stored training embeddings
        clf = net.clip_classifier().fit(ckpt["clip_train"]["X"].numpy(), ckpt["clip_train"]["y"].numpy())
    o = clip_outputs(p, clf=clf)
    assert [str(table.id[c]) for c in o["clip"]] == preds["clip_id"]
    for k in ("prob", "pred"):
        if k in preds:
            np.testing.assert_allclose(o[k], preds[k], rtol=1e-4, atol=1e-5)
    if "pred_class" in preds:
        assert o["pred_class"].tolist() == preds["pred_class"]

    # pictures: curves, the confusion matrix of a classifier, one heatmap per attention map
    pics = {p.rsplit("/", 1)[-1] for p in stored["pictures"]}
    expected = {"curves.png"} | ({"confusion.png"} if which == "full" else set())
    assert pics == expected | {f"attention-{a}.png" for a in attention}
    for png in pics:
        assert matplotlib.image.imread(fold / png).ndim == 3
    assert (tmp_path / model / "demo" / "loso" / "summary.json").is_file()


def test_the_visual_cnns_see_distinct_frames_where_the_descriptor_repeats(full_store):
    """On the demo shards, ACLSTM's VGG gets the 16 frames of each window with video and DLSTM's CNN
    the 13 central ones, (almost) all distinct; the dlib descriptor, computed every 5th frame, has
    a handful of distinct vectors per window (issue 18 item 6)."""
    from models import aclstm, dlstm
    from models.data import ShardDataset

    table = clip_table(find_shards(full_store, "demo"))
    ds = ShardDataset(table, range(len(table)), features=("logmel", "crop_small", "descriptor", "vggish_window"),
                      mode="clip")
    batch = collate(ds.__getitems__(range(len(ds))))
    keep = batch["mask"] & batch["video_ok"]
    seen = []
    hook = lambda mod, inp, out: seen.append(inp[0].detach().flatten(1))   # noqa: E731
    a = aclstm.ACLSTM(aclstm.ACLSTMConfig(n_classes=3, emotion_filters=4, sound_filters=4, visual_hidden=4, hidden=4,
                                          vgg_cfg=("M", 2, "M", "M")))
    d = dlstm.DLSTM(dlstm.DLSTMConfig(task="classification", n_classes=3, audio_hidden=4, video_hidden=4,
                                      early_hidden=4, video_cnn=("M", 2, "M")))
    a.vgg.register_forward_hook(hook)
    d.cnn.register_forward_hook(hook)
    with torch.no_grad():
        a.segment_features(batch)
        d(batch)
    n = int(keep.sum())
    assert n > 50 and seen[0].shape[0] == 16 * n and seen[1].shape[0] == 13 * n
    distinct = {k: np.array([len(torch.unique(w, dim=0)) for w in x.reshape(n, f, -1)])
                for k, x, f in (("vgg", seen[0], 16), ("cnn", seen[1], 13),
                                ("descriptor", batch["descriptor"][keep], 16),
                                ("descriptor13", batch["descriptor"][keep][:, 1:14], 13))}
    # a window whose clip repeats a video frame may show 15 (12) distinct crops
    assert distinct["vgg"].min() >= 15 and distinct["vgg"].mean() > 15.9
    assert distinct["cnn"].min() >= 12 and distinct["cnn"].mean() > 12.9
    assert distinct["descriptor"].max() <= 6 and distinct["descriptor13"].mean() < 5


def test_targets_are_checked_before_training(full_store, va_store, tmp_path):
    with pytest.raises(ValueError, match="valence,arousal columns"):
        train(full_store, "dlstm", DLSTM, tmp_path)            # the demo labels are discrete
    with pytest.raises(ValueError, match=r"label set is \[continuous\]"):
        train(va_store, "perception", PERCEPTION, tmp_path)


def test_the_command_line_reports_a_mistake_without_a_traceback(full_store, tmp_path, capsys):
    assert cli(["--model", "dlstm", "--dataset", "demo", "--store", str(full_store), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("models.train: error: dlstm: task='regression'") and "Traceback" not in err
    assert cli(["--model", "avef", "--dataset", "demo", "--store", str(tmp_path / "none")]) == 2
    assert "no shards of dataset 'demo'" in capsys.readouterr().err


def test_a_training_part_of_one_more_than_the_batch_size(full_store, tmp_path):
    """SincNet's BatchNorm cannot train on a batch of one: the shuffled loader drops such a last
    batch (6 training clips, batch 5)."""
    r = train(full_store, "sincnet_text", SINCNET, tmp_path, "--batch-size", "5")["folds"][0]
    assert r["items"]["train"] == 6 and r["epochs_run"] == 2 and 0 <= r["UA"] <= 1


def test_normalised_clip_batches_keep_zeros_where_the_video_is_unusable(full_store):
    """The audio-only clip (s1_sadness_02.wav) has no usable window: its visual features are zeros
    after normalisation too (models/data.py), and the other clips' are normalised."""
    from models.data import ShardDataset, fit_norm

    table = clip_table(find_shards(full_store, "demo"))
    ds = ShardDataset(table, range(len(table)), features=("logmel", "descriptor", "pca"), mode="clip")
    ds.norm = fit_norm(ds)
    batch = collate(ds.__getitems__(range(len(ds))))
    ok = batch["video_ok"] & batch["mask"]
    wav = int(np.flatnonzero(table.id[batch["clip"].numpy()] == "s1_sadness_02")[0])
    assert not ok[wav].any() and batch["mask"][wav].any()
    for name in ("descriptor", "pca"):
        x = batch[name]
        assert torch.all(x[~batch["video_ok"]] == 0)
        mean = x[ok].double().mean(dim=tuple(range(x[ok].ndim - 1)))
        assert torch.allclose(mean, torch.zeros_like(mean), atol=0.05)   # per dimension, the usable rows


def test_the_clip_level_vggish_sequence_is_normalised(full_store):
    from models.data import ShardDataset, fit_norm

    table = clip_table(find_shards(full_store, "demo"))
    ds = ShardDataset(table, range(len(table)), features=("vggish",), mode="clip")
    raw = np.concatenate([it["vggish"] for it in ds.__getitems__(range(len(ds)))])
    ds.norm = fit_norm(ds)
    x = np.concatenate([it["vggish"] for it in ds.__getitems__(range(len(ds)))])
    assert len(x) == len(raw) > 10 and np.abs(raw.mean(0)).max() > 1e-3
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    live = raw.std(0) > 1e-4          # (random weights: some ReLU outputs are (almost) always 0)
    assert live.sum() > 32
    np.testing.assert_allclose(x.std(0)[live], 1, atol=1e-2)
