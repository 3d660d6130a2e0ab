"""SincNet + text (Priyasad §2): filters against eq 2 and a sinusoid, attentions by hand, fusions."""
import math

import numpy as np
import pytest
import torch

from models import sincnet_text as S
from tests.models.conftest import fit_steps


def tiny(fusion="F-III", **kw):
    cfg = dict(n_classes=3, fusion=fusion, chunk_ms=25, sinc_filters=4, sinc_kernel=31, conv_filters=(5, 5),
               conv_kernels=(3, 3), audio_dnn=(16, 8), glove_dim=10, max_words=7, rnn_hidden=4, text_filters=3,
               text_dnn=(12,), segment_dim=4, fusion_hidden=6, pretrain_epochs=1, dropout=0.0)
    cfg.update(kw)
    return S.SincNetText(S.SincNetTextConfig(**cfg))


def make_batch(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(B, 1200, generator=g)
    length = torch.tensor([1200, 700, 300])[:B]
    wav[torch.arange(1200) >= length.unsqueeze(1)] = 0
    return {"waveform": wav, "waveform_length": length, "glove": torch.randn(B, 7, 10, generator=g),
            "glove_length": torch.tensor([7, 3, 1])[:B], "label": torch.tensor([0, 1, 2])[:B]}


def test_sinc_bandpass_matches_eq_2():
    f1, f2 = torch.tensor([0.05, 0.1]), torch.tensor([0.1, 0.3])
    n = torch.arange(-10, 11, dtype=torch.float32)
    g = S.sinc_bandpass(f1, f2, n).numpy()
    # eq 2 with sinc(x) = sin x / x; numpy's sinc is sin(πx)/(πx), so sinc(2π f n) = np.sinc(2 f n)
    ref = 2 * f2.numpy()[:, None] * np.sinc(2 * f2.numpy()[:, None] * n.numpy()) \
        - 2 * f1.numpy()[:, None] * np.sinc(2 * f1.numpy()[:, None] * n.numpy())
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
    assert g[0, 10] == pytest.approx(2 * (0.1 - 0.05))  # n = 0: 2(f2 − f1)


def test_sinc_filter_passes_its_band_and_rejects_outside():
    sr = 16000
    conv = S.SincConv(1, 251, sr)
    with torch.no_grad():  # f1 = 1000 Hz, f2 = 2000 Hz
        conv.low_hz.fill_(1000 - conv.min_low_hz)
        conv.band_hz.fill_(1000 - conv.min_band_hz)
    f1, f2 = conv.cutoffs()
    assert (f1.item(), f2.item()) == pytest.approx((1000.0, 2000.0))
    t = torch.arange(sr // 4) / sr

    def gain(freq):
        x = torch.sin(2 * math.pi * freq * t)
        y = conv(x.view(1, 1, -1))[0, 0]
        return (y ** 2).mean().item() / (x[125:-125] ** 2).mean().item()

    assert gain(1500) == pytest.approx(1.0, abs=0.05)  # inside [f1, f2]: passed with unit gain
    for freq in (200, 500, 3000, 5000):
        assert gain(freq) < 0.01, freq  # outside: rejected (< −20 dB)


def test_sinc_layer_learns_only_its_cutoffs():
    conv = S.SincConv(80, 251, 16000)
    assert {n for n, _ in conv.named_parameters()} == {"low_hz", "band_hz"}
    assert {n for n, _ in conv.named_buffers()} == {"n", "window"}
    conv(torch.randn(2, 1, 600)).pow(2).mean().backward()
    assert conv.low_hz.grad.abs().sum() > 0 and conv.band_hz.grad.abs().sum() > 0
    f1, f2 = conv.cutoffs()
    assert (f1 >= 50).all() and (f2 <= 8000).all() and (f2 > f1).all()


def test_cross_attention_eq_3_4_by_hand():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    b = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    H, alpha = S.cross_attention(a, b, mask)
    # scores bᵀa = 1, 2 (third word is padding) → α = softmax([1, 2])
    e1, e2 = math.exp(1), math.exp(2)
    torch.testing.assert_close(alpha, torch.tensor([[e1 / (e1 + e2), e2 / (e1 + e2), 0.0]]))
    torch.testing.assert_close(H, torch.tensor([[e1 / (e1 + e2), 2 * e2 / (e1 + e2)]]))


def test_segment_attention_eq_5_6_7_by_hand():
    att = S.SegmentAttention(2)
    with torch.no_grad():
        att.W_h.weight.copy_(torch.eye(2))
        att.W_h.bias.zero_()
        att.context.copy_(torch.tensor([1.0, 1.0]))
    x = torch.tensor([[0.5, -0.5, 1.0, 0.0, -2.0]])  # segments [.5,-.5], [1,0], [-2,0(pad)]
    q, beta = att(x)
    h = torch.tanh(torch.tensor([[0.5, -0.5], [1.0, 0.0], [-2.0, 0.0]]))  # eq 5
    b = torch.softmax(h.abs().sum(-1), 0)  # eq 6, |h_t|ᵀ ĥ with ĥ = 1
    torch.testing.assert_close(beta[0], b)
    torch.testing.assert_close(q[0], b[0] * torch.tensor([0.5, -0.5]) + b[1] * torch.tensor([1.0, 0.0])
                               + b[2] * torch.tensor([-2.0, 0.0]))  # eq 7


def test_evaluation_sums_chunk_softmax_and_averages_features():
    model = tiny().eval()
    batch = make_batch()
    K, shift = 400, 160  # 25 ms and 10 ms at 16 kHz
    with torch.no_grad():
        logp, feat = model.audio_forward(batch["waveform"], batch["waveform_length"])
        for b, L in enumerate(batch["waveform_length"].tolist()):
            wav = batch["waveform"][b] / batch["waveform"][b].abs().max()  # amplitude normalisation
            n = max(1, (L - K) // shift + 1)
            chunks = torch.stack([torch.nn.functional.pad(wav, (0, K))[s:s + K] for s in range(0, n * shift, shift)])
            lg, ft = model.audio(chunks)
            torch.testing.assert_close(logp[b].exp(), lg.softmax(-1).mean(0))
            torch.testing.assert_close(feat[b], ft.mean(0))
    assert [max(1, (L - K) // shift + 1) for L in (1200, 700, 300)] == [6, 2, 1]


def test_training_takes_one_random_chunk_inside_the_utterance():
    model = tiny().train()
    seen = []
    model.audio.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    wav = torch.zeros(2, 2000)
    wav[:, :500] = 1.0  # signal only in the real part; the rest is padding
    for _ in range(5):
        model.audio_forward(wav, torch.tensor([500, 500]))
    assert all(s == (2, 400) for s in seen)
    chunk_sum = []
    model.audio.register_forward_hook(lambda m, i, o: chunk_sum.append(i[0].abs().sum(1)))
    for _ in range(5):
        model.audio_forward(wav, torch.tensor([500, 500]))
    assert all((s == 400).all() for s in chunk_sum)  # never reaches into the padding


@pytest.mark.parametrize("fusion", S.FUSIONS)
def test_forward_backward_every_fusion(fusion):
    model = tiny(fusion)
    batch = make_batch()
    out = model(batch)
    assert out["logits"].shape == (3, 3) and out["attention"]["cross"].shape == (3, 3, 7)
    model.loss(out, batch).backward()
    assert model.audio.sinc.low_hz.grad is not None and model.text.right[0].weight.grad is not None
    if fusion == "F-II":
        assert out["attention"]["fusion"].shape == (3, 5)  # (8 + 12) / 4 segments
    if fusion == "F-III":
        assert out["attention"]["fusion_audio"].shape == (3, 2) and out["attention"]["fusion_text"].shape == (3, 3)
    model.eval()
    with torch.no_grad():
        assert model(batch)["logits"].shape == (3, 3)


def test_pretrain_trains_both_networks_separately():
    model = tiny()
    fusion_before = [p.clone() for p in model.fusion.parameters()]
    hist = model.pretrain([make_batch()], "cpu")
    assert set(hist) == {"audio", "text"}
    assert all(torch.equal(a, b) for a, b in zip(fusion_before, model.fusion.parameters()))


def test_paper_sizes():
    model = S.SincNetText(S.SincNetTextConfig())
    assert model.audio.sinc.low_hz.shape == (80,) and model.audio.sinc.n.shape == (251,)
    assert model.audio.classifier.in_features == 2048  # 2048-d audio feature (§2.1)
    assert model.text.classifier.in_features == 4800  # 4800-d text feature (§2.2)
    assert [c.kernel_size[0] for c in model.text.left] == [1, 3, 5]
    assert [c.out_channels for c in model.text.right] == [12, 12, 12]
    assert model.text.dense[0].in_features == 3 * 12 * (1 + 100)
    assert model.chunk == 4000  # 250 ms at 16 kHz
    assert (model.config.lr, model.config.optimizer) == (1e-3, "adam")
    model.eval()
    batch = {"waveform": torch.randn(2, 4000), "waveform_length": torch.tensor([4000, 4000]),
             "glove": torch.randn(2, 100, 300), "glove_length": torch.tensor([12, 100]), "label": torch.tensor([0, 3])}
    with torch.no_grad():
        out = model(batch)
        _, fa = model.audio_forward(batch["waveform"], batch["waveform_length"])
        _, ft, _ = model.text(batch["glove"], batch["glove_length"])
    assert out["logits"].shape == (2, 4) and fa.shape == (2, 2048) and ft.shape == (2, 4800)
    with pytest.raises(ValueError, match="fusion"):
        S.SincNetText(S.SincNetTextConfig(fusion="F-IV"))


def test_a_few_steps_reduce_the_loss_on_a_learnable_batch():
    torch.manual_seed(0)
    B = 9
    label = torch.arange(B) % 3
    glove = torch.randn(B, 7, 10) + 2 * torch.nn.functional.one_hot(label, 10).float().unsqueeze(1)
    t = torch.arange(1200) / 16000
    wav = torch.sin(2 * math.pi * (500 + 1500 * label.view(B, 1).float()) * t) + 0.1 * torch.randn(B, 1200)
    batch = {"waveform": wav, "waveform_length": torch.full((B,), 1200), "glove": glove,
             "glove_length": torch.full((B,), 7), "label": label}
    model = tiny("F-I")
    losses = fit_steps(model, batch, steps=30, lr=0.01)
    assert losses[-1] < 0.5 * losses[0]
