"""ACLSTM (Hsu & Wu §III): equations against hand computations, every variant, paper sizes."""
import pytest
import torch
import torch.nn.functional as F

from models import aclstm as A
from models.layers import masked_softmax, unit_assignment, unit_mean
from tests.models.conftest import fit_steps


def tiny(variant="aclstm", **kw):
    cfg = dict(n_classes=3, variant=variant, n_mels=8, emotion_kernel=8, emotion_filters=6, sound_kernel=4,
               sound_filters=5, visual_dim=12, visual_hidden=7, hidden=9, pretrain_epochs=1, ntn_epochs=1)
    cfg.update(kw)
    return A.ACLSTM(A.ACLSTMConfig(**cfg))


def make_batch(B=2, T=5, mels=8, frames=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = torch.tensor([[0, 0, 1, 3, 3], [2, 2, 5, -1, -1]])[:B, :T]
    return {"logmel": torch.randn(B, T, 3, mels, frames, generator=g),
            "descriptor": torch.randn(B, T, 16, 12, generator=g), "unit": unit, "mask": unit >= 0,
            "label": torch.tensor([0, 2])[:B]}


def test_coupled_cell_update_eq3_eq5_by_hand():
    i, f, z = torch.tensor([[0.5]]), torch.tensor([[0.8]]), torch.tensor([[0.2]])
    c_own, c_other = torch.tensor([[1.0]]), torch.tensor([[-0.5]])
    # eq 3: 0.5*0.2 + 0.8*0.5*1 + 0.8*0.5*(-0.5) = 0.1 + 0.4 - 0.2
    assert A.coupled_cell_update(i, f, z, c_own, c_other).item() == pytest.approx(0.3)
    # eq 5 with s = 0.6: weight 1/1.6 = 0.625 → 0.1 + 0.5 - 0.25
    s = torch.tensor([0.6])
    assert A.coupled_cell_update(i, f, z, c_own, c_other, s).item() == pytest.approx(0.35)
    # s = 1 gives back eq 3's ½
    assert A.coupled_cell_update(i, f, z, c_own, c_other, torch.tensor([1.0])).item() == pytest.approx(0.3)


def test_coupled_cell_step_matches_manual_lstm_gates():
    torch.manual_seed(0)
    cell = A.CoupledLSTMCell(3, 2, 4)
    xa, xv = torch.randn(1, 3), torch.randn(1, 2)
    h_a, c_a, h_v, c_v = (torch.randn(1, 4) for _ in range(4))
    s = torch.tensor([0.25])
    out = cell(xa, xv, (h_a, c_a, h_v, c_v), s)

    def gates(lin, x, h):
        g = torch.cat([x, h], -1) @ lin.weight.T + lin.bias
        i, f, o, z = g[:, :4], g[:, 4:8], g[:, 8:12], g[:, 12:]
        return torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(z)

    i, f, o, z = gates(cell.gates_a, xa, h_a)
    c_a2 = i * z + f * c_a / 1.25 + f * c_v / 1.25  # eq 5, 1/(1+0.25)
    torch.testing.assert_close(out[1], c_a2)
    torch.testing.assert_close(out[0], o * torch.tanh(c_a2))  # eq 4
    i, f, o, z = gates(cell.gates_v, xv, h_v)
    c_v2 = i * z + f * c_v / 1.25 + f * c_a / 1.25  # the image cell reads the audio cell
    torch.testing.assert_close(out[3], c_v2)
    torch.testing.assert_close(out[2], o * torch.tanh(c_v2))


def test_ntn_eq1_by_hand():
    ntn = A.NTN(2, 2, slices=2)
    with torch.no_grad():
        ntn.M.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]]))
        ntn.V.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]))
        ntn.V.bias.copy_(torch.tensor([0.1, 0.0]))
        ntn.u.copy_(torch.tensor([1.0, 2.0]))
    fa, fv = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    # slice 1: fa·fv = 3 - 2 = 1; V: fa[0] = 1; b 0.1 → tanh(2.1)
    # slice 2: 2·fa[0]·fv[1] = -2; V: -fv[1] = 1 → tanh(-1)
    logit = 1.0 * torch.tanh(torch.tensor(2.1)) + 2.0 * torch.tanh(torch.tensor(-1.0))
    assert ntn.logit(fa, fv).item() == pytest.approx(logit.item(), abs=1e-6)
    assert ntn(fa, fv).item() == pytest.approx(torch.sigmoid(logit).item(), abs=1e-6)


def test_unit_assignment_means_windows_of_each_unit_in_order():
    unit = torch.tensor([[0, 0, 1, 3, 3], [2, 2, 5, -1, -1]])
    x = torch.arange(10.0).reshape(2, 5, 1)
    assign, seg_mask = unit_assignment(unit, unit >= 0)
    assert seg_mask.tolist() == [[True, True, True], [True, True, False]]
    means = unit_mean(x, assign)[..., 0]
    assert means[0].tolist() == [0.5, 2.0, 3.5]  # units 0, 1, 3 (unit 2 owns no window)
    assert means[1, :2].tolist() == [5.5, 7.0]  # units 2, 5
    assert means[1, 2].item() == 0.0


def test_masked_softmax_zero_on_masked_and_sums_to_one():
    p = masked_softmax(torch.randn(2, 4), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]).bool())
    assert p[0, 2:].abs().sum() == 0 and p[0].sum().item() == pytest.approx(1.0)
    assert p[1].abs().sum() == 0  # no real entry: zeros, not NaN


@pytest.mark.parametrize("variant", A.VARIANTS)
def test_forward_backward_every_variant(variant):
    model = tiny(variant)
    batch = make_batch()
    out = model(batch)
    assert out["logits"].shape == (2, 3) and torch.isfinite(out["logits"]).all()
    loss = model.loss(out, batch)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "cnn" in n]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)  # the features are trained through


def test_crop_small_visual_path_with_a_tiny_vgg():
    model = tiny("aclstm", visual_feature="crop_small", vgg_cfg=(4, "M", 4, "M"), crop_size=8)
    batch = make_batch()
    batch["crop_small"] = torch.rand(2, 5, 3, 16, 8, 8)
    out = model(batch)
    model.loss(out, batch).backward()
    assert model.vgg[0].weight.grad.abs().sum() > 0
    assert model.features == A.features(model.config) == ("logmel", "crop_small")


def test_clip_logits_are_the_log_mean_of_segment_posteriors():
    model = tiny("coupled").eval()
    out = model(make_batch())
    prob = out["segment_logits"].softmax(-1)
    torch.testing.assert_close(out["logits"][1].exp(), prob[1, :2].mean(0))  # clip 2: 2 real segments


def test_aclstm_uses_the_ntn_score_and_coupled_does_not():
    torch.manual_seed(0)
    batch = make_batch()
    for variant, changes in (("aclstm", True), ("coupled", False)):
        model = tiny(variant).eval()
        before = model(batch)["logits"]
        with torch.no_grad():
            model.ntn.u.mul_(-5.0)
            model.ntn.V.bias.add_(3.0)
        after = model(batch)["logits"]
        assert (not torch.allclose(before, after)) == changes
    assert model.loss is not None


def test_ntn_gets_no_gradient_from_the_fusion_loss():
    model = tiny("aclstm")
    batch = make_batch()
    model.loss(model(batch), batch).backward()
    assert all(p.grad is None for p in model.ntn.parameters())


def test_pretrain_trains_ntn_on_agreement_and_freezes_extractors():
    model = tiny("aclstm")
    batch = make_batch()
    batch["segment_label_audio"] = torch.tensor([[0, 1, 2], [1, 1, 0]])
    batch["segment_label_visual"] = torch.tensor([[0, 2, 2], [1, 0, 0]])
    seg = model.segment_features(batch)
    assert model.ntn_target(batch, seg).tolist() == [[1, 0, 1], [1, 0, 1]]
    hist = model.pretrain([batch, batch], "cpu")
    assert len(hist["unimodal"]) == 1 and len(hist["ntn"]) == 1
    assert not any(p.requires_grad for p in model.emotion_cnn.parameters())
    assert not any(p.requires_grad for p in model.ntn.parameters())
    assert all(p.requires_grad for p in model.cell.parameters())
    trained = {id(p) for g in model.configure_optimizer().param_groups for p in g["params"]}
    assert trained.isdisjoint(id(p) for p in model.ntn.parameters())  # the trainer leaves them alone
    assert trained.issuperset(id(p) for p in model.cell.parameters())
    # without annotations the target is the agreement of the unimodal classifiers' predictions
    del batch["segment_label_audio"], batch["segment_label_visual"]
    with torch.no_grad():
        seg = model.segment_features(batch)
        ya, yv = model.audio_head(seg["emotion"]).argmax(-1), model.visual_head(seg["visual"]).argmax(-1)
        assert torch.equal(model.ntn_target(batch, seg), (ya == yv).float())


def test_paper_sizes():
    model = A.ACLSTM(A.ACLSTMConfig())
    assert model.emotion_cnn.conv.weight.shape == (300, 192, 64)  # Table 2: kernel 64, 300 filters
    assert model.sound_cnn.conv.weight.shape == (700, 192, 32)  # Table 2: kernel 32, 700 filters
    assert model.ntn.M.shape == (5, 300, 256) and model.ntn.u.shape == (5,)  # tensor dimension 5
    assert model.cell.gates_a.weight.shape == (4 * 128, 1000 + 128)  # hidden 128
    assert model.cell.gates_v.weight.shape == (4 * 128, 256 + 128)
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [128, 7]
    vgg = A.ACLSTM(A.ACLSTMConfig(visual_feature="crop_small"))
    convs = [m for m in vgg.vgg if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 16  # VGG-19: 16 conv + 3 FC (FC replaced by the hidden layer here)
    assert vgg.visual_hidden[1].in_features == 512 * 2 * 2  # 72×72 input after 5 pools
    with pytest.raises(ValueError, match="variant"):
        A.ACLSTM(A.ACLSTMConfig(variant="late"))


@pytest.mark.parametrize("variant", ["aclstm", "feature"])
def test_a_few_steps_reduce_the_loss_on_a_learnable_batch(variant):
    torch.manual_seed(0)
    B, T = 8, 4
    label = torch.arange(B) % 3
    unit = torch.tensor([0, 0, 1, 2]).repeat(B, 1)
    batch = {"logmel": torch.randn(B, T, 3, 8, 16) + label.view(B, 1, 1, 1, 1).float(),
             "descriptor": torch.randn(B, T, 16, 12) + 2 * F.one_hot(label, 12).float().view(B, 1, 1, 12),
             "unit": unit, "mask": torch.ones(B, T, dtype=torch.bool), "label": label}
    model = tiny(variant)
    losses = fit_steps(model, batch, steps=30, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    assert (model.eval()(batch)["logits"].argmax(-1) == label).all()
