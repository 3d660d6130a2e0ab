"""SincNet audio + GloVe text with cross-attention and attention fusion (Priyasad et al., paper 003, §2).

* **SincNet layer** (§2.1 eq 1-2, after Ravanelli & Bengio [17]): band-pass filters
  g[n, f1, f2] = 2 f2 sinc(2π f2 n) − 2 f1 sinc(2π f1 n) (cut-offs in cycles/sample) with
  learnable f1, f2, a Hamming window, on the amplitude-normalised raw waveform (Fig. 1).
* **A-DCNN** (§2.1): SincNet's conv/pool/batch-norm stack (80 sinc filters of 251 taps, then
  2 × Conv1d 60 × 5, max-pool 3, batch norm, leaky ReLU; [17]'s defaults) and three dense layers of
  2048; the last one is the 2048-d audio feature. Training: one random 250 ms chunk per utterance;
  evaluation (§3.1): all 250 ms chunks with a 10 ms shift, the chunks' softmax outputs summed and
  their 2048-d features averaged.
* **Text network** (§2.2, Fig. 1): GloVe vectors (100 × 300) → Bi-LSTM → Conv1d of widths 1, 3, 5
  (12 filters each) = a_{i,j}; a parallel branch of Conv1d of widths 1, 3, 5 on the GloVe vectors
  = b_{i,j}; cross-attention α_i = softmax_i(b_{i,j}ᵀ a_{i,j}), H_j = Σ_i α_i a_{i,j} (eq 3-4);
  both branches concatenated (H_1, H_3, H_5 and the right branch's feature maps) → T-DNN with a
  4800-d last hidden layer.
* **Fusion** (§2.3, ``fusion``): F-I concatenation [2048; 4800] → DNN; F-II self-attention after
  concatenation; F-III attention on each modality's vector before concatenation. The attention is
  eq 5-7: h_t = tanh(W_h c_t + b_h), β_t = softmax_t(|h_t|ᵀ ĥ), q = Σ_t β_t c_t, with ĥ a learned
  context vector. §2.3 says the attention "identifies informative segments in the feature
  vectors": the c_t are the consecutive ``segment_dim``-long segments of a feature vector
  (F-II: of the concatenation; F-III: of each modality's vector, giving q_audio and q_text that
  are then concatenated).
* Training (§3.1): Adam, learning rate 0.001, batch 64; the acoustic and textual networks are
  first trained separately (:meth:`SincNetText.pretrain`, ``pretrain_epochs``), then the fusion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import fit, make_optimizer, masked_softmax

FUSIONS = ("F-I", "F-II", "F-III")


@dataclass
class SincNetTextConfig:
    n_classes: int = 4  # anger, happiness(+excitement), neutral, sadness (§3.1)
    fusion: str = "F-III"
    sr: int = 16000
    chunk_ms: float = 250.0  # §2.1, §3.1
    eval_shift_ms: float = 10.0  # §3.1
    eval_batch: int = 64  # chunks per forward pass at evaluation (memory only)
    sinc_filters: int = 80  # [17]
    sinc_kernel: int = 251  # [17]
    min_low_hz: float = 50.0  # [17]
    min_band_hz: float = 50.0  # [17]
    conv_filters: tuple = (60, 60)  # [17]
    conv_kernels: tuple = (5, 5)  # [17]
    pool: int = 3  # [17]
    audio_dnn: tuple = (2048, 2048, 2048)  # last = the 2048-d audio feature (§2.1)
    glove_dim: int = 300  # §3.1
    max_words: int = 100  # §3.1
    rnn_hidden: int = 128  # per direction (not given in the paper)
    text_filters: int = 12  # Fig. 1
    text_widths: tuple = (1, 3, 5)  # §2.2
    text_dnn: tuple = (4800,)  # last = the 4800-d text feature (§2.2)
    segment_dim: int = 64  # length of the feature-vector segments attended in F-II / F-III
    fusion_hidden: int = 256
    dropout: float = 0.2
    pretrain_epochs: int = 5  # §3.1: separate initial training of both networks
    aux_weight: float = 0.0  # >0 adds the unimodal losses to the fusion loss
    optimizer: str = "adam"  # §3.1
    lr: float = 1e-3  # §3.1
    batch_size: int = 64  # §3.1: "the batch size in each network [is] fixed at ... 64"
    weight_decay: float = 0.0


def sinc_bandpass(f1: torch.Tensor, f2: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Priyasad eq 2: g[n] = 2 f2 sinc(2π f2 n) − 2 f1 sinc(2π f1 n), sinc(x) = sin x / x.

    ``f1``, ``f2`` (C,) cut-offs in cycles/sample (Hz / sr), ``n`` (K,) integer sample offsets;
    returns (C, K). The value at n = 0 is the limit 2 (f2 − f1).
    """
    def lowpass(f):
        x = 2 * math.pi * f.unsqueeze(-1) * n
        return 2 * f.unsqueeze(-1) * torch.where(n == 0, torch.ones_like(x), torch.sin(x) / torch.where(n == 0, torch.ones_like(x), x))

    return lowpass(f2) - lowpass(f1)


class SincConv(nn.Module):
    """SincNet layer (Priyasad §2.1 eq 1-2, Ravanelli & Bengio [17]) in the torchaudio style: the
    sample offsets and the Hamming window are buffers, the cut-offs f1 = min_low + |low|,
    f2 = min(f1 + min_band + |band|, sr/2) (Hz) are the only parameters (mel-spaced at init)."""

    def __init__(self, out_channels: int, kernel_size: int, sr: int, min_low_hz: float = 50.0,
                 min_band_hz: float = 50.0):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"SincConv: kernel_size={kernel_size} must be odd (symmetric filter)")
        self.sr, self.min_low_hz, self.min_band_hz = sr, min_low_hz, min_band_hz
        mel = torch.linspace(2595 * math.log10(1 + 30 / 700),
                             2595 * math.log10(1 + (sr / 2 - min_low_hz - min_band_hz) / 700), out_channels + 1)
        hz = 700 * (10 ** (mel / 2595) - 1)
        self.low_hz = nn.Parameter(hz[:-1].clone())
        self.band_hz = nn.Parameter(torch.diff(hz))
        half = (kernel_size - 1) // 2
        self.register_buffer("n", torch.arange(-half, half + 1, dtype=torch.float32))
        self.register_buffer("window", torch.hamming_window(kernel_size, periodic=False))

    def cutoffs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(f1, f2) in Hz."""
        f1 = self.min_low_hz + self.low_hz.abs()
        f2 = torch.clamp(f1 + self.min_band_hz + self.band_hz.abs(), self.min_low_hz, self.sr / 2)
        return f1, f2

    def filters(self) -> torch.Tensor:
        f1, f2 = self.cutoffs()
        return sinc_bandpass(f1 / self.sr, f2 / self.sr, self.n) * self.window  # (C, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, N) → (B, C, N − K + 1)."""
        return F.conv1d(x, self.filters().unsqueeze(1))


class ADCNN(nn.Module):
    """SincNet + conv stack + dense layers (Priyasad §2.1): (B, n_samples) → (logits, 2048-d)."""

    def __init__(self, c: SincNetTextConfig):
        super().__init__()
        n = int(round(c.sr * c.chunk_ms / 1000))
        self.sinc = SincConv(c.sinc_filters, c.sinc_kernel, c.sr, c.min_low_hz, c.min_band_hz)
        n = (n - c.sinc_kernel + 1) // c.pool
        self.bn0 = nn.BatchNorm1d(c.sinc_filters)
        convs, ch = [], c.sinc_filters
        for f, k in zip(c.conv_filters, c.conv_kernels):
            convs += [nn.Conv1d(ch, f, k), nn.MaxPool1d(c.pool), nn.BatchNorm1d(f), nn.LeakyReLU(0.2)]
            ch, n = f, (n - k + 1) // c.pool
        self.convs = nn.Sequential(*convs)
        dense, d = [], ch * n
        for h in c.audio_dnn:
            dense += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.2)]
            d = h
        self.dense = nn.Sequential(*dense)
        self.classifier = nn.Linear(d, c.n_classes)
        self.pool = c.pool

    def forward(self, chunks: torch.Tensor):
        x = F.max_pool1d(self.sinc(chunks.unsqueeze(1)).abs(), self.pool)
        x = F.leaky_relu(self.bn0(x), 0.2)
        feat = self.dense(self.convs(x).flatten(1))
        return self.classifier(feat), feat


def cross_attention(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None):
    """Priyasad eq 3-4: α_i = softmax_i(b_{i,j}ᵀ a_{i,j}) over word positions i, H = Σ_i α_i a_{i,j}.

    ``a`` (B, L, F) left-branch (Bi-RNN → conv) maps, ``b`` (B, L, F) right-branch maps of the same
    width j, ``mask`` (B, L) real words. Returns H (B, F) and α (B, L).
    """
    alpha = masked_softmax((a * b).sum(-1), mask, -1)
    return (alpha.unsqueeze(-1) * a).sum(1), alpha


class TextNet(nn.Module):
    """Bi-RNN + convs with cross-attention beside a CNN branch (Priyasad §2.2, eq 3-4, Fig. 1)."""

    def __init__(self, c: SincNetTextConfig):
        super().__init__()
        self.rnn = nn.LSTM(c.glove_dim, c.rnn_hidden, batch_first=True, bidirectional=True)
        pad = lambda k: ((k - 1) // 2, k // 2)
        self.pads = [pad(k) for k in c.text_widths]
        self.left = nn.ModuleList(nn.Conv1d(2 * c.rnn_hidden, c.text_filters, k) for k in c.text_widths)
        self.right = nn.ModuleList(nn.Conv1d(c.glove_dim, c.text_filters, k) for k in c.text_widths)
        d = len(c.text_widths) * c.text_filters * (1 + c.max_words)
        dense = []
        for h in c.text_dnn:
            dense += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(c.dropout)]
            d = h
        self.dense = nn.Sequential(*dense)
        self.classifier = nn.Linear(d, c.n_classes)

    def forward(self, glove: torch.Tensor, length: torch.Tensor):
        B, L, _ = glove.shape
        mask = torch.arange(L, device=glove.device).unsqueeze(0) < length.unsqueeze(1)  # (B, L)
        packed = nn.utils.rnn.pack_padded_sequence(glove, length.clamp_min(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        h, _ = self.rnn(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=L)
        H, maps, alphas = [], [], []
        for pad, left, right in zip(self.pads, self.left, self.right):
            a = F.relu(left(F.pad(h.transpose(1, 2), pad))).transpose(1, 2)  # (B, L, F) a_{i,j}
            b = F.relu(right(F.pad(glove.transpose(1, 2), pad))).transpose(1, 2)  # b_{i,j}
            h_j, alpha = cross_attention(a, b, mask)  # eq 3-4
            H.append(h_j)
            maps.append((b * mask.unsqueeze(-1)).flatten(1))
            alphas.append(alpha)
        feat = self.dense(torch.cat(H + maps, -1))
        return self.classifier(feat), feat, torch.stack(alphas, 1)


class SegmentAttention(nn.Module):
    """Priyasad eq 5-7 over the ``segment_dim``-long segments c_t of a feature vector (zero-padded
    to a whole number of segments): h_t = tanh(W_h c_t + b_h), β = softmax(|h_t|ᵀ ĥ), q = Σ β_t c_t."""

    def __init__(self, segment_dim: int):
        super().__init__()
        self.segment_dim = segment_dim
        self.W_h = nn.Linear(segment_dim, segment_dim)
        self.context = nn.Parameter(torch.randn(segment_dim) / segment_dim ** 0.5)  # ĥ

    def forward(self, x: torch.Tensor):
        pad = (-x.shape[-1]) % self.segment_dim
        c = F.pad(x, (0, pad)).reshape(x.shape[0], -1, self.segment_dim)
        h = torch.tanh(self.W_h(c))  # eq 5
        beta = torch.softmax(h.abs() @ self.context, -1)  # eq 6
        return (beta.unsqueeze(-1) * c).sum(1), beta  # eq 7


class SincNetText(nn.Module):
    def __init__(self, config: SincNetTextConfig):
        super().__init__()
        if config.fusion not in FUSIONS:
            raise ValueError(f"SincNetTextConfig.fusion={config.fusion!r}: use one of {FUSIONS}")
        self.config = c = config
        self.audio = ADCNN(c)
        self.text = TextNet(c)
        d_a, d_t = c.audio_dnn[-1], c.text_dnn[-1]
        if c.fusion == "F-I":
            d = d_a + d_t
        elif c.fusion == "F-II":
            self.att = SegmentAttention(c.segment_dim)
            d = c.segment_dim
        else:
            self.att_audio = SegmentAttention(c.segment_dim)
            self.att_text = SegmentAttention(c.segment_dim)
            d = 2 * c.segment_dim
        self.fusion = nn.Sequential(nn.Linear(d, c.fusion_hidden), nn.ReLU(), nn.Dropout(c.dropout),
                                    nn.Linear(c.fusion_hidden, c.n_classes))

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The config's optimiser over the trainable parameters (trainer hook)."""
        c = self.config
        return make_optimizer(self.parameters(), name=c.optimizer, lr=c.lr, weight_decay=c.weight_decay)

    @property
    def chunk(self) -> int:
        return int(round(self.config.sr * self.config.chunk_ms / 1000))

    def audio_forward(self, wav: torch.Tensor, length: torch.Tensor):
        """Utterance-level audio (logits, 2048-d feature): one random chunk while training,
        all chunks with a ``eval_shift_ms`` shift (summed softmax, mean feature) otherwise."""
        c, K = self.config, self.chunk
        B = wav.shape[0]
        length = length.clamp(1, wav.shape[1])
        peak = wav.abs().amax(1, keepdim=True).clamp_min(1e-8)
        wav = F.pad(wav / peak, (0, max(0, K - wav.shape[1])))  # amplitude normalisation (Fig. 1)
        if self.training:
            start = (torch.rand(B, device=wav.device) * (length - K + 1).clamp_min(1)).long()
            idx = start.unsqueeze(1) + torch.arange(K, device=wav.device)
            return self.audio(wav.gather(1, idx))
        shift = max(1, int(round(c.sr * c.eval_shift_ms / 1000)))
        chunks, owner = [], []
        for b, n_samples in enumerate(length.tolist()):   # one read of the lengths, not one per clip
            n = max(1, (n_samples - K) // shift + 1)
            chunks.append(wav[b, : (n - 1) * shift + K].unfold(0, K, shift))
            owner.append(torch.full((n,), b, device=wav.device))
        chunks, owner = torch.cat(chunks), torch.cat(owner)
        outs = [self.audio(chunks[i:i + c.eval_batch]) for i in range(0, len(chunks), c.eval_batch)]
        logits, feat = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        # sums in fp32 whatever the autocast dtype of the chunks (bf16 on a GPU): index_add_ needs one dtype
        logits, feat = logits.float(), feat.float()
        count = torch.bincount(owner, minlength=B).unsqueeze(1).to(feat.dtype)
        prob = torch.zeros(B, logits.shape[1], device=wav.device).index_add_(0, owner, logits.softmax(-1))
        feat = torch.zeros(B, feat.shape[1], device=wav.device).index_add_(0, owner, feat) / count
        return (prob / count).clamp_min(1e-12).log(), feat

    def forward(self, batch: dict) -> dict:
        c = self.config
        la, fa = self.audio_forward(batch["waveform"], batch["waveform_length"])
        lt, ft, alpha = self.text(batch["glove"], batch["glove_length"])
        attention = {"cross": alpha}
        if c.fusion == "F-I":
            z = torch.cat([fa, ft], -1)
        elif c.fusion == "F-II":
            z, attention["fusion"] = self.att(torch.cat([fa, ft], -1))
        else:
            qa, attention["fusion_audio"] = self.att_audio(fa)
            qt, attention["fusion_text"] = self.att_text(ft)
            z = torch.cat([qa, qt], -1)
        return {"logits": self.fusion(z), "logits_audio": la, "logits_text": lt, "attention": attention}

    def loss(self, out: dict, batch: dict) -> torch.Tensor:
        y = batch["label"]
        loss = F.cross_entropy(out["logits"], y)
        if self.config.aux_weight > 0:
            loss = loss + self.config.aux_weight * (F.cross_entropy(out["logits_audio"], y) +
                                                    F.cross_entropy(out["logits_text"], y))
        return loss

    def pretrain(self, loader, device) -> dict:
        """§3.1: "Initial training is carried out on both acoustic and textual networks separately
        before the fusion" (each on its own classifier, Adam at ``lr``)."""
        c = self.config
        self.train()

        def audio_loss(batch):
            return F.cross_entropy(self.audio_forward(batch["waveform"], batch["waveform_length"])[0], batch["label"])

        def text_loss(batch):
            return F.cross_entropy(self.text(batch["glove"], batch["glove_length"])[0], batch["label"])

        return {"audio": fit(self.audio.parameters(), audio_loss, loader, device, epochs=c.pretrain_epochs, lr=c.lr),
                "text": fit(self.text.parameters(), text_loss, loader, device, epochs=c.pretrain_epochs, lr=c.lr)}


def features(cfg: SincNetTextConfig) -> tuple[str, ...]:
    """Feature names a configuration reads."""
    return FEATURES


CONFIG = SincNetTextConfig
MODEL = SincNetText
MODE = "clip"
FEATURES = ("waveform", "glove")
# axis names of the attention maps the trainer plots (models.plots.attention_png)
ATTENTION = {"cross": dict(xlabel="word i (eq 3-4)", ylabel="conv width j (text_widths)"),
             "fusion": dict(xlabel="segment t of [audio; text] (eq 5-7)"),
             "fusion_audio": dict(xlabel="segment t of the audio feature (eq 5-7)"),
             "fusion_text": dict(xlabel="segment t of the text feature (eq 5-7)")}
