"""ACLSTM (Hsu & Wu §III): equations against hand computations, every variant, paper sizes; the
visual features: a VGG (VGG-19 at 72×72, Table 2) on the crops by default, tiny here."""
import pytest
import torch
import torch.nn.functional as F

from models import aclstm as A
from models.layers import masked_softmax, unit_assignment, unit_mean
from tests.models.conftest import fit_steps


TINY_VGG = dict(vgg_cfg=(4, "M", 4, "M"), crop_size=8)   # 8 px crops → a 2×2×4 map


def tiny(variant="aclstm", **kw):
    cfg = dict(n_classes=3, variant=variant, n_mels=8, emotion_kernel=8, emotion_filters=6, sound_kernel=4,
               sound_filters=5, visual_hidden=7, hidden=9, pretrain_epochs=1, ntn_epochs=1, **TINY_VGG)
    if kw.get("visual_feature") == "descriptor":
        cfg["visual_dim"] = 12
    cfg.update(kw)
    return A.ACLSTM(A.ACLSTMConfig(**cfg))


def make_batch(B=2, T=5, mels=8, frames=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = torch.tensor([[0, 0, 1, 3, 3], [2, 2, 5, -1, -1]])[:B, :T]
    return {"logmel": torch.randn(B, T, 3, mels, frames, generator=g),
            "crop_small": torch.randint(0, 256, (B, T, 3, 16, 8, 8), generator=g, dtype=torch.uint8),
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


@pytest.mark.parametrize("visual", ["crop_small", "descriptor"])
@pytest.mark.parametrize("variant", A.VARIANTS)
def test_forward_backward_every_variant(variant, visual):
    model = tiny(variant, visual_feature=visual)
    batch = make_batch()
    out = model(batch)
    assert out["logits"].shape == (2, 3) and torch.isfinite(out["logits"]).all()
    loss = model.loss(out, batch)
    loss.backward()
    trained = ("cnn", "vgg", "visual_hidden")   # the features are trained through, the VGG included
    grads = [p.grad for n, p in model.named_parameters() if any(t in n for t in trained)]
    assert len(grads) == 8 + (4 if visual == "crop_small" else 0)   # 2 audio CNNs, fc6, fc7, 2 convs
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_the_default_visual_feature_is_a_vgg_on_the_72px_crops():
    cfg = A.ACLSTMConfig()
    assert cfg.visual_feature == "crop_small" and cfg.crop_size == 72 and cfg.vgg_cfg == A.VGG19
    assert A.FEATURES == A.features(cfg) == ("logmel", "crop_small")
    model = tiny()
    assert model.features == ("logmel", "crop_small") and model.vgg is not None
    assert tiny(visual_feature="descriptor").features == ("logmel", "descriptor")


def test_uint8_crops_are_scaled_on_the_fly():
    model = tiny().eval()
    batch = make_batch()
    as_float = {**batch, "crop_small": batch["crop_small"].float() / 255}
    torch.testing.assert_close(model(batch)["logits"], model(as_float)["logits"])


def test_the_vgg_sees_every_frame_of_the_windows_with_video_only():
    """16 distinct frames per window reach the VGG (a descriptor every 5th frame has 4-6); padding
    and windows without usable video are not computed, and a segment averages its windows with video."""
    model = tiny().eval()
    batch = make_batch()
    batch["video_ok"] = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 1, 1]]).bool()   # (1, 3) and (2, 1) no video
    seen = []
    model.vgg.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    feats = model.frame_features(batch)
    keep = batch["mask"] & batch["video_ok"]
    assert seen[0].shape == (int(keep.sum()) * 16, 3, 8, 8)
    per_window = seen[0].reshape(-1, 16, 3 * 8 * 8)
    assert all(len(torch.unique(w, dim=0)) == 16 for w in per_window)
    expected = batch["crop_small"][keep].transpose(1, 2).float() / 255 - 0.5
    torch.testing.assert_close(seen[0], expected.reshape(-1, 3, 8, 8))
    assert torch.all(feats[~keep] == 0) and feats[keep].abs().sum() > 0
    seg = model.segment_features(batch)["visual"]
    # clip 0: units 0 (windows 0, 1), 1 (window 2), 3 (windows 3 no video, 4); clip 1: unit 2 (0, 1 no video)
    f = feats.mean(2)
    torch.testing.assert_close(seg[0], torch.stack([f[0, :2].mean(0), f[0, 2], f[0, 4]]))
    torch.testing.assert_close(seg[1, 0], f[1, 0])


def test_stored_face_embeddings_need_their_size():
    assert tiny(visual_feature="descriptor", visual_dim=None).visual_hidden[0].in_features == 128
    assert tiny(visual_feature="vggface").visual_hidden[0].in_features == 512   # conv5_3 (features/vggface.py)
    model = tiny(visual_feature="vggface", visual_dim=4096)
    batch = make_batch()
    batch["vggface"] = torch.randn(2, 5, 16, 512)
    with pytest.raises(ValueError, match="visual_dim=512"):
        model(batch)
    with pytest.raises(ValueError, match="visual_feature"):
        tiny(visual_feature="pca")


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


@pytest.mark.parametrize("with_sound_types", [True, False])
def test_pretrain_trains_the_sound_type_cnn_on_sound_labels(with_sound_types):
    torch.manual_seed(0)
    model = tiny("aclstm")
    batch = make_batch()
    if with_sound_types:
        batch["sound_type"] = torch.tensor([[0, 1, 4], [3, 4, 4]])    # per segment (B, S)
    before = [p.detach().clone() for p in model.sound_cnn.parameters()]
    model.pretrain([batch, batch], "cpu")
    changed = any(not torch.equal(a, p) for a, p in zip(before, model.sound_cnn.parameters()))
    assert changed == with_sound_types
    # pre-trained: frozen like the other extractors; not pre-trained: left to the fusion training
    assert all(p.requires_grad != with_sound_types for p in model.sound_cnn.parameters())


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
    assert model.ntn.M.shape == (5, 300, 4096) and model.ntn.u.shape == (5,)  # tensor dimension 5
    assert model.cell.gates_a.weight.shape == (4 * 128, 1000 + 128)  # hidden 128
    assert model.cell.gates_v.weight.shape == (4 * 128, 4096 + 128)  # F_V: VGG-19's fc7
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [128, 7]
    # VGG-19 (Simonyan & Zisserman config E) at 72×72 (Table 2): 16 conv + FC-4096, FC-4096, FC-classes
    convs = [m for m in model.vgg if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.vgg) == 5
    fcs = [m for m in model.visual_hidden if isinstance(m, torch.nn.Linear)] + [model.visual_head]
    assert [(m.in_features, m.out_features) for m in fcs] == [(512 * 2 * 2, 4096), (4096, 4096), (4096, 7)]
    assert model.vgg(torch.zeros(1, 3, 72, 72)).shape == (1, 512, 2, 2)  # 72×72 after 5 pools
    with pytest.raises(ValueError, match="variant"):
        A.ACLSTM(A.ACLSTMConfig(variant="late"))


@pytest.mark.parametrize("visual", ["crop_small", "descriptor"])
@pytest.mark.parametrize("variant", ["aclstm", "feature"])
def test_a_few_steps_reduce_the_loss_on_a_learnable_batch(variant, visual):
    torch.manual_seed(0)
    B, T = 8, 4
    label = torch.arange(B) % 3
    unit = torch.tensor([0, 0, 1, 2]).repeat(B, 1)
    crops = torch.rand(B, T, 3, 16, 8, 8) * 0.5
    crops[:, :, :, :, :4] += 0.5 * (label == 1).float().view(B, 1, 1, 1, 1, 1)   # a bright upper half
    batch = {"logmel": torch.randn(B, T, 3, 8, 16) + label.view(B, 1, 1, 1, 1).float(), "crop_small": crops,
             "descriptor": torch.randn(B, T, 16, 12) + 2 * F.one_hot(label, 12).float().view(B, 1, 1, 12),
             "unit": unit, "mask": torch.ones(B, T, dtype=torch.bool), "label": label}
    model = tiny(variant, visual_feature=visual)
    losses = fit_steps(model, batch, steps=30, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    assert (model.eval()(batch)["logits"].argmax(-1) == label).all()


def test_the_vgg_is_pretrained_on_every_frame_with_its_segment_label():
    """§III-B: the segment label is the target of all image frames of the segment."""
    torch.manual_seed(0)
    model = tiny()
    batch = make_batch()
    batch["video_ok"] = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 1, 1]]).bool()
    batch["segment_label"] = torch.tensor([[0, 1, 2], [1, 2, 0]])   # clip 0: units 0, 1, 3; clip 1: 2, 5
    seg = model.segment_features(batch)
    logits = model.visual_head(seg["frames"])                       # (B, T, 16, C)
    # the windows with video of a real segment and their segments' labels
    windows = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 4, 2), (1, 0, 1), (1, 2, 2)]
    expected = torch.stack([F.cross_entropy(logits[b, t], torch.full((16,), y)) for b, t, y in windows]).mean()
    torch.testing.assert_close(model.frame_loss(seg, batch["segment_label"]), expected)
    model.frame_loss(seg, batch["segment_label"]).backward()
    assert model.vgg[0].weight.grad.abs().sum() > 0
    none = model.segment_features({**batch, "video_ok": torch.zeros(2, 5, dtype=torch.bool)})
    assert model.frame_loss(none, batch["segment_label"]).item() == 0


def test_the_vgg_trains_at_its_own_rate():
    model = tiny(vgg_lr=1e-5, pretrain_lr=1e-2, lr=1e-3)
    visual = {id(p) for m in (model.vgg, model.visual_hidden, model.visual_head) for p in m.parameters()}
    groups = model.param_groups([model], 1e-2)
    assert [g["lr"] for g in groups] == [1e-2, 1e-5] and {id(p) for p in groups[1]["params"]} == visual
    opt = model.configure_optimizer()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-5]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    model.pretrain([make_batch()], "cpu")            # frozen afterwards: the fusion optimiser has one group
    assert [g["lr"] for g in model.configure_optimizer().param_groups] == [1e-3]
    desc = tiny(visual_feature="descriptor")          # no VGG: its small FC layers keep the common rate
    assert [g["lr"] for g in desc.param_groups([desc], 1e-2)] == [1e-2]


# -- issue 18 item 7: a segment per unit (silences included), segment labels, verbal-only emotion CNN --
KINDS = torch.tensor([[1, 1, 0, 2, 2], [0, 0, 1, -1, -1]])   # per window: segments [[1, 0, 2], [0, 1, -]]


def test_the_model_reads_a_segment_for_every_unit():
    """§III-A: every unit of the segmentation, a silence too, is a segment: the trainer reads the
    ACLSTM's batches in segment mode (models/data.py gives windowless units windows)."""
    assert A.MODE == "segment"


def test_segment_kinds_come_from_the_windows_unit_kind():
    model = tiny()
    batch = {**make_batch(), "unit_kind": KINDS}
    seg = model.segment_features(batch)
    assert model.segment_kinds(batch, seg).tolist() == [[1, 0, 2], [0, 1, -1]]


def test_the_audio_emotion_cnn_is_trained_on_verbal_segments_only():
    """§III-B: "The verbal segments are used to train a CNN model with emotions as the target outputs"."""
    torch.manual_seed(0)
    model = tiny()
    batch = {**make_batch(), "unit_kind": KINDS}
    seg = model.segment_features(batch)
    loss = model.audio_loss(batch, seg)
    # by hand: batch 0's segment 0 (units 0: windows 0-1) and batch 1's segment 1 (unit 5: window 2)
    logits = model.audio_head(seg["emotion"])
    expected = F.cross_entropy(torch.stack([logits[0, 0], logits[1, 1]]), torch.tensor([0, 2]))
    assert torch.allclose(loss, expected)
    # the silence and non-verbal windows do not reach the emotion CNN's loss
    other = dict(batch, logmel=batch["logmel"].clone())
    other["logmel"][0, 2:] = torch.randn_like(other["logmel"][0, 2:]) * 5
    other["logmel"][1, :2] = 7.0
    assert torch.allclose(model.audio_loss(other, model.segment_features(other)), loss)
    # annotated audio-only labels are its targets; -1 (not annotated) falls back to the clip label
    batch["segment_label_audio"] = torch.tensor([[1, -1, -1], [-1, -1, -1]])
    expected = F.cross_entropy(torch.stack([logits[0, 0], logits[1, 1]]), torch.tensor([1, 2]))
    assert torch.allclose(model.audio_loss(batch, seg), expected)


def test_sound_types_silence_and_verbal_from_the_units_and_annotations_win():
    """§II: sound types laugh, breath, shout, silence, verbal; silence / verbal are what the
    segmentation says; a non-verbal unit needs an annotation."""
    model = tiny()
    batch = {**make_batch(), "unit_kind": KINDS}
    seg = model.segment_features(batch)
    silence, verbal = A.SOUND_TYPES.index("silence"), A.SOUND_TYPES.index("verbal")
    assert model.sound_targets(batch, seg).tolist() == [[verbal, silence, -1], [silence, verbal, -1]]
    batch["sound_type"] = torch.tensor([[-1, -1, 0], [2, -1, -1]])   # laugh; shout over a silence unit
    assert model.sound_targets(batch, seg).tolist() == [[verbal, silence, 0], [2, verbal, -1]]
    assert tiny(sound_from_kind=False).sound_targets({k: v for k, v in batch.items() if k != "sound_type"},
                                                     seg).tolist() == [[-1] * 3] * 2


def test_pretrain_trains_the_sound_type_cnn_on_silence_and_verbal_units_without_annotations():
    torch.manual_seed(0)
    model = tiny()
    batch = {**make_batch(), "unit_kind": KINDS}
    before = [p.detach().clone() for p in model.sound_cnn.parameters()]
    model.pretrain([batch, batch], "cpu")
    assert any(not torch.equal(a, p) for a, p in zip(before, model.sound_cnn.parameters()))
    assert not any(p.requires_grad for p in model.sound_cnn.parameters())


def test_partly_annotated_segment_labels_fall_back_to_the_clip_label():
    model = tiny()
    batch = make_batch()
    seg = model.segment_features(batch)
    batch["segment_label"] = torch.tensor([[1, -1, 2], [-1, 0, -1]])
    assert model.segment_targets(batch, seg["seg_mask"]).tolist() == [[1, 0, 2], [2, 0, 2]]
    # the VGG's frames learn the visual label, the NTN the agreement where both are annotated
    batch["segment_label_audio"] = torch.tensor([[1, -1, 2], [0, 0, -1]])
    batch["segment_label_visual"] = torch.tensor([[1, 2, 0], [0, -1, -1]])
    with torch.no_grad():
        ya, yv = model.audio_head(seg["emotion"]).argmax(-1), model.visual_head(seg["visual"]).argmax(-1)
        predicted = (ya == yv).float()
        target = model.ntn_target(batch, seg)
    assert target[0, 0] == 1 and target[0, 2] == 0 and target[1, 0] == 1
    assert target[0, 1] == predicted[0, 1] and target[1, 1] == predicted[1, 1]
    assert model.segment_targets(batch, seg["seg_mask"], "segment_label_visual").tolist() == [[1, 2, 0], [0, 2, 2]]
