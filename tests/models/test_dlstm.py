"""DLSTM with embedding and bimodal attention (Lucas §2.2, §3): equations, variants, paper sizes."""
import pytest
import torch

from models import dlstm as D
from models.layers import GeneralScore
from tests.models.conftest import fit_steps


def tiny(**kw):
    cfg = dict(audio_dim=6, video_dim=5, audio_hidden=3, video_hidden=4, early_hidden=5, dropout=0.0)
    cfg.update(kw)
    return D.DLSTM(D.DLSTMConfig(**cfg))


def make_batch(B=2, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"vggish_window": torch.randn(B, T, 6, generator=g), "descriptor": torch.randn(B, T, 16, 5, generator=g),
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


@pytest.mark.parametrize("fusion", D.FUSIONS)
@pytest.mark.parametrize("early", [True, False])
def test_fusion_outputs_follow_eq_5_6_7(fusion, early):
    model = tiny(fusion=fusion, early_fusion=early).eval()
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


def test_thirteen_central_frames_of_each_window():
    model = tiny(embedding_attention=False).eval()
    batch = make_batch()
    out = model(batch)
    batch2 = dict(batch)
    batch2["descriptor"] = batch["descriptor"].clone()
    batch2["descriptor"][:, :, [0, 14, 15]] += 100.0  # outside the 13 central frames (1..13)
    # the video DLSTM (bypassed: centre frame) and early fusion read frame 8 only → unchanged
    torch.testing.assert_close(model(batch2)["steps"], out["steps"])
    with pytest.raises(ValueError, match="n_embeddings"):
        model({**batch, "descriptor": batch["descriptor"][:, :, :8]})


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
    assert model.early.lstm.hidden_size == 128 and model.early.lstm.input_size == 256
    assert model.W_m.shape == (2, 32 + 128 + 128, 3)  # W_m ∈ R^{cn×n} per output dimension
    assert model.video.score.W_a.shape == (128, 128)
    assert tiny(fusion="olb").W.shape == (3, 1)  # eq 6: W ∈ R^{n×1}
    assert tiny(fusion="hlb").W.weight.shape == (2, 12)  # eq 7: W ∈ R^{cn×o}
    with pytest.raises(ValueError, match="fusion"):
        D.DLSTM(D.DLSTMConfig(fusion="late"))


def test_a_few_steps_reduce_the_mse_on_a_learnable_batch():
    torch.manual_seed(0)
    B, T = 8, 4
    audio = torch.randn(B, T, 6)
    batch = {"vggish_window": audio, "descriptor": torch.randn(B, T, 16, 5), "mask": torch.ones(B, T, dtype=torch.bool),
             "valence": audio[:, :, 0].mean(1), "arousal": -audio[:, :, 1].mean(1)}
    model = tiny()
    model.on_epoch_start(5)
    losses = fit_steps(model, batch, steps=40, lr=0.01)
    assert losses[-1] < 0.3 * losses[0]
