"""DLSTM with embedding and bimodal attention (Lucas §2.2, §3): equations, variants, paper sizes;
the video embeddings: a per-frame CNN on the crops by default (tiny here), or stored ones."""
import pytest
import torch

from models import dlstm as D
from models.layers import GeneralScore
from tests.models.conftest import fit_steps


def tiny(**kw):
    cfg = dict(audio_dim=6, video_cnn=(4, "M", 5), audio_hidden=3, video_hidden=4, early_hidden=5, dropout=0.0)
    if kw.get("video_feature") == "descriptor":
        cfg["video_dim"] = 5
    cfg.update(kw)
    return D.DLSTM(D.DLSTMConfig(**cfg))


def make_batch(B=2, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"vggish_window": torch.randn(B, T, 6, generator=g), "descriptor": torch.randn(B, T, 16, 5, generator=g),
            "crop_small": torch.randint(0, 256, (B, T, 3, 16, 8, 8), generator=g, dtype=torch.uint8),
            "mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()[:B, :T],
            "valence": torch.tensor([0.3, -0.2])[:B], "arousal": torch.tensor([-0.1, 0.5])[:B],
            "label": torch.tensor([0, 1])[:B]}


def test_general_dot_product_score_by_hand():
    score = GeneralScore(2, 3)
    with torch.no_grad():
        score.W_a.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
    h = torch.tensor([[1.0, 2.0]])
    hs = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 2.0, -1.0]]])
    # hᵀ W_a = [1, 2, 2]; · [1,1,1] = 5; · [0,2,-1] = 2
    assert score(h, hs).tolist() == [[5.0, 2.0]]


def test_bimodal_attention_fusion_by_hand_and_weights_sum_to_one_per_output():
    C = torch.tensor([1.0, -1.0])  # cn = 2 (two DLSTMs with hidden 1)
    Y = torch.tensor([[0.2, 0.8], [1.0, -1.0]])  # (o=2, n=2): valence and arousal outputs
    W = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])  # (o, cn, n)
    z, a = D.bimodal_attention_fusion(C, Y, W)
    # valence: S = [1, -1] → a = softmax; arousal: S = [0, 0] → a = [½, ½]
    a_v = torch.softmax(torch.tensor([1.0, -1.0]), 0)
    torch.testing.assert_close(a[0], a_v)
    torch.testing.assert_close(a[1], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(z, torch.stack([(a_v * Y[0]).sum(), torch.tensor(0.0)]))
    z, a = D.bimodal_attention_fusion(torch.randn(3, 7, 10), torch.randn(3, 7, 2, 3), torch.randn(2, 10, 3))
    torch.testing.assert_close(a.sum(-1), torch.ones(3, 7, 2))  # per output dimension
    assert not torch.allclose(a[..., 0, :], a[..., 1, :])  # valence and arousal attend differently


@pytest.mark.parametrize("video", ["crop_small", "descriptor"])
@pytest.mark.parametrize("fusion", D.FUSIONS)
@pytest.mark.parametrize("early", [True, False])
def test_fusion_outputs_follow_eq_5_6_7(fusion, early, video):
    model = tiny(fusion=fusion, early_fusion=early, video_feature=video).eval()
    batch = make_batch()
    out = model(batch)
    Y, C, z = out["outputs"], out["hidden"], out["steps"]
    n = 3 if early else 2
    assert Y.shape == (2, 4, 2, n) and C.shape == (2, 4, 3 + 4 + (5 if early else 0))
    if fusion == "olb":
        torch.testing.assert_close(z, (Y @ model.W).squeeze(-1))  # eq 6
    elif fusion == "hlb":
        torch.testing.assert_close(z, C @ model.W.weight.T)  # eq 7
    else:
        torch.testing.assert_close(z, D.bimodal_attention_fusion(C, Y, model.W_m)[0])
        torch.testing.assert_close(out["attention"]["fusion"].sum(-1), torch.ones(2, 4, 2))
    # the clip prediction is the mean over the clip's real windows
    torch.testing.assert_close(out["pred"][1], z[1, :2].mean(0))
    model.train()
    out = model(batch)
    model.loss(out, batch).backward()
    assert all(p.grad is not None for p in model.audio.lstm.parameters())  # HLB skips the linear layers
    if video == "crop_small":   # the video CNN is trained end to end
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cnn.parameters())


def test_embedding_attention_is_bypassed_for_five_epochs_then_gdp():
    model = tiny().eval()
    batch = make_batch()
    for epoch in range(5):
        model.on_epoch_start(epoch)
        att = model(batch)["attention"]["embedding"]
        assert (att.argmax(-1) == 6).all() and torch.all(att.amax(-1) == 1)  # centre of 13
    model.on_epoch_start(5)
    assert not model.bypass
    att = model(batch)["attention"]["embedding"]
    assert att.shape == (2, 4, 13)
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(att[:, 0], torch.full((2, 13), 1 / 13))  # h_{-1} = 0: all scores 0
    # the epoch is in the state dict, so a checkpoint remembers that the bypass is over
    fresh = tiny()
    fresh.load_state_dict(model.state_dict())
    assert not fresh.bypass


def test_embedding_attention_uses_the_previous_hidden_state_eq_1_2():
    torch.manual_seed(0)
    net = D.AttentiveDLSTM(5, 4, 2, 0.0)
    windows = torch.randn(2, 3, 13, 5)
    y, h, att = net(windows, bypass=False)
    for t in (1, 2):
        expected = torch.softmax(net.score(h[:, t - 1], windows[:, t]), -1)
        torch.testing.assert_close(att[:, t], expected)
    y_b, _, att_b = net(windows, bypass=True)
    assert torch.all(att_b[..., 6] == 1)
    assert not torch.allclose(y, y_b)


@pytest.mark.parametrize("video", ["crop_small", "descriptor"])
def test_thirteen_central_frames_of_each_window(video):
    model = tiny(embedding_attention=False, video_feature=video).eval()
    batch = make_batch()
    out = model(batch)
    axis = 3 if video == "crop_small" else 2   # crops (B, T, 3, 16, H, W), embeddings (B, T, 16, D)

    def changed(frames):
        x = batch[video].clone()
        x.index_fill_(axis, torch.tensor(frames), 7)
        return model({**batch, video: x})["steps"]

    # outside the 13 central frames (1..13), and frame 8: the video DLSTM (bypassed) and early fusion
    # read V_t, the centre of the 13 (frame 7) only → unchanged
    torch.testing.assert_close(changed([0, 14, 15, 8]), out["steps"])
    assert not torch.allclose(changed([7]), out["steps"])
    with pytest.raises(ValueError, match="n_embeddings"):
        model({**batch, video: batch[video].narrow(axis, 0, 8)})


def test_the_default_video_embedding_is_a_cnn_on_the_72px_crops():
    c = D.DLSTMConfig()
    assert c.video_feature == "crop_small" and c.video_cnn == D.VGG16 and c.video_dim is None
    assert D.FEATURES == D.features(c) == ("vggish_window", "crop_small")
    assert tiny(video_feature="descriptor").features == ("vggish_window", "descriptor")
    model = tiny()
    opt = model.configure_optimizer()   # the CNN trains at its own rate, the DLSTMs at §3's 0.01
    assert [g["lr"] for g in opt.param_groups] == [0.01, 1e-4]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in model.cnn.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    batch = make_batch()
    as_float = {**batch, "crop_small": batch["crop_small"].float() / 255}   # uint8 is scaled on the fly
    torch.testing.assert_close(model.eval()(batch)["pred"], model(as_float)["pred"])


def test_the_cnn_sees_the_13_distinct_central_frames_of_the_windows_with_video_only():
    model = tiny().eval()
    batch = make_batch()
    batch["video_ok"] = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]).bool()   # (0, 1) no video; (1, 2-3) padding
    seen = []
    model.cnn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    emb = model.embeddings(batch)
    keep = batch["mask"] & batch["video_ok"]
    assert seen[0].shape == (int(keep.sum()) * 13, 3, 8, 8)
    assert all(len(torch.unique(w, dim=0)) == 13 for w in seen[0].reshape(-1, 13, 3 * 64))
    expected = batch["crop_small"][keep][:, :, 1:14].transpose(1, 2).float() / 255 - 0.5
    torch.testing.assert_close(seen[0], expected.reshape(-1, 3, 8, 8))
    assert emb.shape == (2, 4, 13, 5) and torch.all(emb[~keep] == 0) and torch.all(emb[keep] >= 0)


def test_stored_face_embeddings_need_their_size():
    assert tiny(video_feature="descriptor", video_dim=None).video.score.W_a.shape == (4, 128)
    assert tiny(video_feature="vggface").early.lstm.input_size == 6 + 512   # conv5_3 (features/vggface.py)
    batch = make_batch()
    with pytest.raises(ValueError, match="video_dim=5"):
        tiny(video_feature="descriptor", video_dim=128)(batch)
    with pytest.raises(ValueError, match="video_dim"):
        tiny(video_dim=512)   # the CNN decides
    with pytest.raises(ValueError, match="video_feature"):
        tiny(video_feature="pca")


def test_regression_needs_valence_and_arousal_and_classification_works():
    model = tiny()
    batch = make_batch()
    out = model(batch)
    assert out["pred"].shape == (2, 2)
    with pytest.raises(KeyError, match="valence"):
        model.loss(out, {k: v for k, v in batch.items() if k != "valence"})
    clf = tiny(task="classification", n_classes=3)
    out = clf(batch)
    assert out["logits"].shape == (2, 3) and out["outputs"].shape[-2] == 3
    clf.loss(out, batch).backward()


def test_paper_sizes():
    model = D.DLSTM(D.DLSTMConfig())
    c = model.config
    assert (c.lr, c.optimizer, c.n_embeddings, c.bypass_epochs) == (0.01, "adam", 13, 5)
    assert model.audio.lstm.hidden_size == 32 and model.audio.lstm.num_layers == 2  # §3.2
    assert model.video.cell1.hidden_size == 128 and model.video.cell2.hidden_size == 128
    assert model.early.lstm.hidden_size == 128 and model.early.lstm.input_size == 128 + 512
    assert model.W_m.shape == (2, 32 + 128 + 128, 3)  # W_m ∈ R^{cn×n} per output dimension
    assert model.video.score.W_a.shape == (128, 512)
    # the video embedding: VGGFace's VGG-16 conv stack (13 conv 3×3, 5 pools), last conv averaged
    convs = [m for m in model.cnn[0] if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.cnn[0]) == 5
    assert model.cnn(torch.zeros(1, 3, 72, 72)).shape == (1, 512) and model.video_dim == 512
    assert tiny(fusion="olb").W.shape == (3, 1)  # eq 6: W ∈ R^{n×1}
    assert tiny(fusion="hlb").W.weight.shape == (2, 12)  # eq 7: W ∈ R^{cn×o}
    with pytest.raises(ValueError, match="fusion"):
        D.DLSTM(D.DLSTMConfig(fusion="late"))


@pytest.mark.parametrize("video", ["crop_small", "descriptor"])
def test_a_few_steps_reduce_the_mse_on_a_learnable_batch(video):
    torch.manual_seed(0)
    B, T = 8, 4
    audio = torch.randn(B, T, 6)
    batch = {"vggish_window": audio, "descriptor": torch.randn(B, T, 16, 5),
             "crop_small": torch.rand(B, T, 3, 16, 8, 8), "mask": torch.ones(B, T, dtype=torch.bool),
             "valence": audio[:, :, 0].mean(1), "arousal": -audio[:, :, 1].mean(1)}
    model = tiny(video_feature=video)
    model.on_epoch_start(5)
    losses = fit_steps(model, batch, steps=40, lr=0.01)
    assert losses[-1] < 0.3 * losses[0]


def test_truncated_bptt_cuts_the_gradient_every_k_windows_and_keeps_the_forward_values():
    """Lucas §3: "optimized using truncated backpropagation through time": the state is carried
    across the sequence but detached every ``tbptt`` windows (default 30, a documented choice)."""
    assert D.DLSTMConfig().tbptt == 30
    torch.manual_seed(0)
    full, cut = tiny(tbptt=0), tiny(tbptt=2)
    cut.load_state_dict(full.state_dict())
    for name, x, run in (("audio", torch.randn(1, 5, 6), lambda m, x: m.audio(x)[0]),
                         ("video", torch.randn(1, 5, 3, 5), lambda m, x: m.video(x, bypass=False)[0])):
        grads, outs = [], []
        for model in (full, cut):
            xi = x.clone().requires_grad_(True)
            y = run(model, xi)
            y[:, -1].sum().backward()   # a loss on the last window (t = 4)
            grads.append(xi.grad[0].abs().flatten(1).sum(-1))
            outs.append(y.detach())
        assert torch.allclose(outs[0], outs[1], atol=1e-6), name   # same forward pass
        assert (grads[0][:4] > 0).all(), name                       # full BPTT reaches every window
        assert (grads[1][:4] == 0).all() and grads[1][4] > 0, name  # cut at t = 4 (k = 2: at 2 and 4)
    with pytest.raises(ValueError, match="tbptt"):
        tiny(tbptt=-1)


def test_pretrain_unimodal_trains_audio_and_video_dlstms_apart_then_freezes_them():
    """Lucas §3.1: "two DLSTM networks are pre-trained separately on audio and video, and
    subsequently frozen before training the fusion mechanisms"."""
    assert tiny().pretrain is None   # off by default: the trainer runs no pre-training
    torch.manual_seed(0)
    model = tiny(pretrain_unimodal=True, pretrain_epochs=3, bypass_epochs=1, early_fusion=False)
    batches = [make_batch(seed=s) for s in range(2)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = model.pretrain(batches, "cpu")
    assert len(hist["audio"]) == 3 and len(hist["video"]) == 3
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("audio.") for n in changed) and any(n.startswith("video.") for n in changed)
    assert any(n.startswith("cnn.") for n in changed)
    assert not any(n.startswith("W_m") for n in changed)   # the fusion is not part of the pre-training
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.split(".")[0] in ("audio", "video", "cnn")}
    opt = model.configure_optimizer()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(model.W_m)}
    # the frozen video DLSTM keeps the input mode it was pre-trained in (attention after epoch 1)
    model.on_epoch_start(0)
    assert model.bypass is False
    model(batches[0])["pred"].sum().backward()
    assert model.W_m.grad is not None and all(p.grad is None for p in model.audio.parameters())
