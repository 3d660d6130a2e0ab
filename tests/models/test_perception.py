"""Alignment + perception attention (Chao §2, §4.1): equations, shapes, variants, paper sizes."""
import pytest
import torch

from models import perception as P
from models.layers import last_step
from tests.models.conftest import fit_steps


def tiny(variant="perception", **kw):
    cfg = dict(n_classes=3, variant=variant, n_mels=8, visual_layer=6, hidden=5, hidden_av=4, hidden_sel=3,
               embed_dim=3, dropout=0.0)
    cfg.update(kw)
    return P.PerceptionAttention(P.PerceptionConfig(**cfg))


def make_batch(B=2, T=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"logmel": torch.randn(B, T, 3, 8, 16, generator=g), "pca": torch.randn(B, T, 4, 20, generator=g),
            "descriptor": torch.randn(B, T, 4, 5, generator=g),
            "mask": torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()[:B, :T], "label": torch.tensor([0, 2])[:B]}


def test_coarse_alignment_windows():
    idx, valid = P.coarse_alignment(torch.tensor([8]), torch.tensor([4]), 4, 2)
    # p_t = ⌊(t + ½)·8/4⌋ = 1, 3, 5, 7; window p_t - 2 … p_t + 1
    assert idx[0].tolist() == [[-1, 0, 1, 2], [1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8]]
    assert valid[0].tolist() == [[False, True, True, True], [True] * 4, [True] * 4, [True, True, True, False]]


def test_soft_alignment_eq_4_5_6_by_hand():
    torch.manual_seed(0)
    enc = P.Encoder(P.PerceptionConfig(n_mels=8, dropout=0.0, align_w=2), 3)
    h_a = torch.randn(1, 6, 3)
    v = torch.randn(1, 3, 3)
    am, vm = torch.ones(1, 6, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    x, l, idx, valid = enc.align(h_a, v, am, vm)
    for t in range(3):
        p = int((t + 0.5) * 6 / 3)
        pos = [j for j in range(p - 2, p + 2)]
        s = []
        for i, j in enumerate(pos):
            if 0 <= j < 6:
                s.append(enc.W_i[i] @ torch.tanh(enc.W_a.weight @ h_a[0, j] + enc.W_v.weight @ v[0, t] + enc.W_v.bias))
            else:
                s.append(torch.tensor(float("-inf")))
        lt = torch.softmax(torch.stack(s), 0)  # eq 4
        torch.testing.assert_close(l[0, t], lt)
        xt = sum(lt[i] * h_a[0, j] for i, j in enumerate(pos) if 0 <= j < 6)  # eq 6
        torch.testing.assert_close(x[0, t], xt)


def test_perception_attention_eq_9_10_11_by_hand():
    model = tiny().eval()
    batch = make_batch()
    out = model(batch)
    audio, am, shape, app, vm = model.sequences(batch)
    h_av, _ = model.encoder(audio, am, shape, app, vm)
    h_sel, _ = model.encoder_sel(audio, am, shape, app, vm)
    for b in range(2):
        n_real = int(vm[b].sum())
        for n in range(3):
            scores = model.W_h(h_sel[b, :n_real]) @ model.emotions[n]
            f = torch.softmax(scores, 0)  # eq 9
            torch.testing.assert_close(out["attention"]["perception"][b, :n_real, n], f)
            s_n = model.W_n[n] @ (f.unsqueeze(-1) * h_av[b, :n_real]).sum(0) + model.b_n[n]  # eq 10
            torch.testing.assert_close(out["logits"][b, n], s_n)


@pytest.mark.parametrize("audio_input", ["frames", "windows"])
def test_attention_shapes_and_sums(audio_input):
    model = tiny(audio_input=audio_input).eval()
    out = model(make_batch())
    Ta = 3 * 4 if audio_input == "frames" else 3  # 16 frames / stride 4 per window
    Tv = 3 * 4
    al, pa = out["attention"]["alignment"], out["attention"]["perception"]
    assert al.shape == (2, Ta, Tv) and pa.shape == (2, Tv, 3)
    vm = torch.tensor([[1] * 12, [1] * 4 + [0] * 8]).bool()
    torch.testing.assert_close(al.sum(1), vm.float())  # each real visual step: weights sum to 1
    torch.testing.assert_close(pa.sum(1), torch.ones(2, 3))  # each emotion: softmax over time
    assert pa[1, 4:].abs().sum() == 0  # padded steps get no perception attention
    a_real = 4 if audio_input == "frames" else 1
    assert al[1, a_real:].abs().sum() == 0  # nor does padded audio get alignment weight
    # each visual step attends only inside its window of 2w = 4 audio steps
    assert ((al[0] > 0).sum(0) <= 4).all()


@pytest.mark.parametrize("variant", P.VARIANTS)
def test_forward_backward_every_variant(variant):
    model = tiny(variant, appearance_feature="descriptor", appearance_dim=5)
    batch = make_batch()
    out = model(batch)
    assert out["logits"].shape == (2, 3)
    model.loss(out, batch).backward()
    assert model.encoder.W_i.grad.abs().sum() > 0
    assert model.encoder.appearance_in[0].weight.grad.abs().sum() > 0
    assert ("perception" in out["attention"]) == (variant == "perception")


def test_last_and_average_encodings():
    h = torch.arange(12.0).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
    assert last_step(h, mask).tolist() == [[4.0, 5.0], [8.0, 9.0]]
    model = tiny("last").eval()
    batch = make_batch()
    out = model(batch)
    batch2 = {**batch, "pca": batch["pca"].clone()}
    batch2["pca"][1, 1:] += 50  # padding of clip 2 must not change its last-time encoding
    torch.testing.assert_close(model(batch2)["logits"][1], out["logits"][1])


def test_paper_sizes():
    c = P.PerceptionConfig()
    assert (c.optimizer, c.dropout, c.weight_decay, c.align_w) == ("adadelta", 0.5, 5e-4, 2)
    model = P.PerceptionAttention(c)
    assert model.encoder.audio_lstm.hidden_size == 32 and model.encoder.av_lstm.hidden_size == 32
    assert model.encoder_sel.audio_lstm.hidden_size == 8  # the smaller network for h_sel
    assert model.emotions.shape == (7, 8) and model.W_h.weight.shape == (8, 8)
    assert model.W_n.shape == (7, 32)
    assert model.encoder.shape_in[0].weight.shape == (64, 20)  # 20 PCA dims → 64-node layer
    base = P.PerceptionAttention(P.PerceptionConfig(variant="average"))
    assert base.encoder.audio_lstm.hidden_size == 64 and base.encoder.av_lstm.hidden_size == 64
    assert base.encoder.audio_in[0].weight.shape == (64, 192)
    opt = model.configure_optimizer()  # §4.1: Adadelta, weight decay 5e-4
    assert isinstance(opt, torch.optim.Adadelta) and opt.defaults["weight_decay"] == 5e-4
    assert P.features(P.PerceptionConfig(appearance_feature="descriptor")) == ("logmel", "pca", "descriptor")
    with pytest.raises(ValueError, match="variant"):
        P.PerceptionAttention(P.PerceptionConfig(variant="max"))


@pytest.mark.parametrize("variant", ["perception", "average"])
def test_a_few_steps_reduce_the_loss_on_a_learnable_batch(variant):
    torch.manual_seed(0)
    B, T = 9, 2
    label = torch.arange(B) % 3
    batch = {"logmel": torch.randn(B, T, 3, 8, 16), "pca": torch.randn(B, T, 4, 20) + 2 * label.view(B, 1, 1, 1).float(),
             "mask": torch.ones(B, T, dtype=torch.bool), "label": label}
    model = tiny(variant)
    losses = fit_steps(model, batch, steps=40, lr=0.02)
    assert losses[-1] < 0.5 * losses[0]
