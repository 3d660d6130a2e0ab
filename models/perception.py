"""Audio-visual alignment and perception attention (Chao et al., paper 002, §2, §4.1).

* **Audio LSTM** (§2.1): a hidden layer then an LSTM over the audio frame sequence a → h_a.
* **Soft alignment** (eq 4-6): for visual step t, the coarse alignment p_t (the audio step at the
  same relative time, "given T_a and T") and a window of 2w audio states around it,
  h_att = h_{a, p_t-w} … h_{a, p_t+w-1}; s_{t,i} = W_iᵀ tanh(W^a h_att,i + W^v v_t) with one
  W_i per window position, l_t = softmax(s_t) and x_t = Σ_i l_{t,i} h_att,i. w = 2 (four
  window positions, Fig. 2). Positions outside the clip are masked out of the softmax.
* **Audio-visual LSTM** (§2.1) on [x_t; v_t] → h_av.
* **Perception attention** (§2.3, eq 9-11): one embedding vector e_n per emotion,
  f^n = softmax_t((W^h h_sel,t)ᵀ e_n), s^n = W^n Σ_t f^n_t h_av,t + b^n, softmax over n. As in the
  end of §2.3, f^n comes from a second, smaller encoder of (a, v) (h_sel), h_av from the first.
* **Baselines** (§2.1 eq 7-8, §4.1): last-time encoding and average encoding (``variant``).

Sizes (§4.1): 64 memory cells for both LSTMs of the baselines, hidden layers before the LSTMs of
the same size; the proposed model's two encoders have 32 (h_av: "works best when ... h_av equals
32") and 8 (h_sel, the smaller network) cells; emotion embeddings of dimension 8. Visual input:
the face shape (PCA-whitened landmarks, 20-d, §3.1; the store's ``"pca"``) through a 64-node hidden
layer, optionally the appearance feature (``appearance_feature``, e.g. ``"descriptor"`` in place
of the pool5 CNN features of §3.2) through its own 64-node layer, concatenated, then another hidden
layer. Dropout 0.5 in all layers except the LSTMs, weight decay 5e-4, Adadelta (§4.1).

**Sequences from the store.** Chao's audio frames are YAAFE features of 1024-sample frames
(§3.3); here the audio steps are the log-mel frames (64 mels × S/Δ/ΔΔ = 192-d) of the clip's
655 ms windows, averaged over ``audio_stride`` consecutive frames (default 4 → 40 ms steps,
16 per window), or one mean vector per window (``audio_input="windows"``). The visual steps are
the 16 aligned frames of each window. Both sequences are the clip's windows in time order;
windows overlap by 30 of 64 frames (AVEF §2.1.1), so overlapping parts appear twice in both
streams, at matching relative times, which keeps the coarse alignment p_t meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import last_step, make_optimizer, masked_mean, masked_softmax

VARIANTS = ("perception", "average", "last")


@dataclass
class PerceptionConfig:
    n_classes: int = 7  # §3: the seven AFEW emotions
    variant: str = "perception"  # "perception" (eq 9-11) | "average" (eq 8) | "last" (eq 7)
    audio_feature: str = "logmel"
    audio_input: str = "frames"  # "frames" | "windows"
    audio_stride: int = 4
    n_mels: int = 64
    n_channels: int = 3
    video_feature: str = "pca"  # §3.1
    video_dim: int = 20
    appearance_feature: str | None = None  # §3.2 stand-in, e.g. "descriptor"
    appearance_dim: int = 128
    visual_layer: int = 64  # §4.1: each visual feature set → 64-node hidden layer
    hidden: int = 64  # §4.1 baselines
    hidden_av: int = 32  # §4.1 proposed model, h_av
    hidden_sel: int = 8  # §4.1 proposed model, h_sel (smaller encoder)
    embed_dim: int = 8  # §4.1
    align_w: int = 2  # window of 2w positions (Fig. 2: four)
    dropout: float = 0.5  # §4.1
    optimizer: str = "adadelta"  # §4.1
    lr: float = 1.0
    batch_size: int = 16  # clips; Chao et al. give none (a documented choice)
    weight_decay: float = 5e-4  # §4.1


def coarse_alignment(len_audio: torch.Tensor, len_video: torch.Tensor, T_video: int, w: int):
    """Window indices around the coarse alignment p_t (Chao §2.1).

    p_t = ⌊(t + ½)·T_a / T⌋ (the audio step at the same relative time as visual step t); the
    window is p_t - w … p_t + w - 1 (2w positions, eq 4). Returns ``idx`` (B, T, 2w) long and
    ``valid`` (B, T, 2w) bool (inside the clip's real audio steps).
    """
    t = torch.arange(T_video, device=len_audio.device, dtype=torch.float64)
    ratio = len_audio.double() / len_video.double().clamp_min(1)
    p = torch.floor((t.unsqueeze(0) + 0.5) * ratio.unsqueeze(1)).long()  # (B, T)
    offs = torch.arange(-w, w, device=len_audio.device)
    idx = p.unsqueeze(-1) + offs
    valid = (idx >= 0) & (idx < len_audio.view(-1, 1, 1))
    return idx, valid


class Encoder(nn.Module):
    """Audio LSTM + soft alignment + audio-visual LSTM (Chao §2.1, Fig. 1a) of width ``d``."""

    def __init__(self, c: PerceptionConfig, d: int):
        super().__init__()
        self.w = c.align_w
        d_audio = c.n_channels * c.n_mels
        self.audio_in = nn.Sequential(nn.Linear(d_audio, d), nn.Tanh(), nn.Dropout(c.dropout))
        self.shape_in = nn.Sequential(nn.Linear(c.video_dim, c.visual_layer), nn.Tanh(), nn.Dropout(c.dropout))
        n_vis = c.visual_layer
        self.appearance_in = None
        if c.appearance_feature:
            self.appearance_in = nn.Sequential(nn.Linear(c.appearance_dim, c.visual_layer), nn.Tanh(),
                                               nn.Dropout(c.dropout))
            n_vis += c.visual_layer
        self.visual_in = nn.Sequential(nn.Linear(n_vis, d), nn.Tanh(), nn.Dropout(c.dropout))
        self.audio_lstm = nn.LSTM(d, d, batch_first=True)
        self.W_a = nn.Linear(d, d, bias=False)  # eq 5, W^a
        self.W_v = nn.Linear(d, d)  # eq 5, W^v (with the bias of the tanh layer)
        self.W_i = nn.Parameter(torch.randn(2 * c.align_w, d) / d ** 0.5)  # eq 5, one per position
        self.av_lstm = nn.LSTM(2 * d, d, batch_first=True)

    def align(self, h_a, v, audio_mask, video_mask):
        """Eq 4-6: returns x (B,T,d), l (B,T,2w), idx (B,T,2w), valid (B,T,2w)."""
        B, Ta, d = h_a.shape
        T = v.shape[1]
        idx, valid = coarse_alignment(audio_mask.sum(1), video_mask.sum(1), T, self.w)
        valid = valid & video_mask.unsqueeze(-1)  # padded visual steps attend to nothing
        gather = idx.clamp(0, Ta - 1).reshape(B, -1, 1).expand(-1, -1, d)
        h_att = h_a.gather(1, gather).reshape(B, T, 2 * self.w, d)
        keys = self.W_a(h_a).gather(1, gather).reshape(B, T, 2 * self.w, d)
        s = (torch.tanh(keys + self.W_v(v).unsqueeze(2)) * self.W_i).sum(-1)  # eq 5
        l = masked_softmax(s, valid, -1)  # eq 4
        return (l.unsqueeze(-1) * h_att).sum(2), l, idx, valid  # eq 6

    def forward(self, audio, audio_mask, shape, appearance, video_mask):
        h_a, _ = self.audio_lstm(self.audio_in(audio))
        vis = self.shape_in(shape)
        if self.appearance_in is not None:
            vis = torch.cat([vis, self.appearance_in(appearance)], -1)
        v = self.visual_in(vis)
        x, l, idx, valid = self.align(h_a, v, audio_mask, video_mask)
        h_av, _ = self.av_lstm(torch.cat([x, v], -1))
        return h_av, (l, idx, valid)


def alignment_matrix(l, idx, valid, T_audio: int) -> torch.Tensor:
    """Scatter the window weights l (B,T,2w) onto the audio axis: (B, T_audio, T_video)."""
    B, T, _ = l.shape
    out = l.new_zeros(B, T, T_audio)
    out.scatter_add_(2, idx.clamp(0, T_audio - 1), l * valid.to(l.dtype))
    return out.transpose(1, 2)


class PerceptionAttention(nn.Module):
    def __init__(self, config: PerceptionConfig):
        super().__init__()
        if config.variant not in VARIANTS:
            raise ValueError(f"PerceptionConfig.variant={config.variant!r}: use one of {VARIANTS}")
        if config.audio_input not in ("frames", "windows"):
            raise ValueError(f"PerceptionConfig.audio_input={config.audio_input!r}: use 'frames' or 'windows'")
        self.config = c = config
        self.drop = nn.Dropout(c.dropout)
        if c.variant == "perception":
            self.encoder = Encoder(c, c.hidden_av)
            self.encoder_sel = Encoder(c, c.hidden_sel)
            self.W_h = nn.Linear(c.hidden_sel, c.embed_dim, bias=False)  # eq 9
            self.emotions = nn.Parameter(torch.randn(c.n_classes, c.embed_dim))  # e_1 … e_N
            self.W_n = nn.Parameter(torch.randn(c.n_classes, c.hidden_av) / c.hidden_av ** 0.5)  # eq 10
            self.b_n = nn.Parameter(torch.zeros(c.n_classes))
        else:
            self.encoder = Encoder(c, c.hidden)
            self.classifier = nn.Linear(c.hidden, c.n_classes)

    @property
    def features(self) -> tuple[str, ...]:
        c = self.config
        return (c.audio_feature, c.video_feature) + ((c.appearance_feature,) if c.appearance_feature else ())

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The config's optimiser over the trainable parameters (trainer hook)."""
        c = self.config
        return make_optimizer(self.parameters(), name=c.optimizer, lr=c.lr, weight_decay=c.weight_decay)

    def sequences(self, batch: dict):
        """Audio (B,Ta,192) + mask and visual (B,Tv,20) [+ appearance] + mask from the windows."""
        c = self.config
        lm = batch[c.audio_feature]  # (B, T, 3, n_mels, n_frames)
        mask = batch["mask"].to(torch.bool)
        B, T = lm.shape[:2]
        frames = lm.permute(0, 1, 4, 2, 3).reshape(B, T, lm.shape[-1], -1)  # (B,T,F,192)
        if c.audio_input == "windows":
            audio, a_mask = frames.mean(2), mask
        else:
            k = c.audio_stride
            n = frames.shape[2] // k
            audio = frames[:, :, : n * k].reshape(B, T, n, k, -1).mean(3).reshape(B, T * n, -1)
            a_mask = mask.repeat_interleave(n, 1)
        shape = batch[c.video_feature]  # (B, T, 16, 20)
        nf = shape.shape[2]
        shape = shape.reshape(B, T * nf, -1)
        app = None
        if c.appearance_feature:
            app = batch[c.appearance_feature].reshape(B, T * nf, -1)
        return audio, a_mask, shape, app, mask.repeat_interleave(nf, 1)

    def forward(self, batch: dict) -> dict:
        c = self.config
        audio, a_mask, shape, app, v_mask = self.sequences(batch)
        h_av, (l, idx, valid) = self.encoder(audio, a_mask, shape, app, v_mask)
        attention = {"alignment": alignment_matrix(l, idx, valid, audio.shape[1])}
        if c.variant == "average":
            logits = self.classifier(self.drop(masked_mean(h_av, v_mask)))
        elif c.variant == "last":
            logits = self.classifier(self.drop(last_step(h_av, v_mask)))
        else:
            h_sel, _ = self.encoder_sel(audio, a_mask, shape, app, v_mask)
            scores = self.W_h(h_sel) @ self.emotions.T  # (B, T, N): (W^h h_sel,t)ᵀ e_n
            f = masked_softmax(scores, v_mask.unsqueeze(-1), 1)  # eq 9, softmax over time
            rep = self.drop(torch.einsum("btn,btd->bnd", f, h_av))  # Σ_t f^n_t h_av,t
            logits = (rep * self.W_n).sum(-1) + self.b_n  # eq 10; eq 11 is the softmax in the loss
            attention["perception"] = f
        return {"logits": logits, "attention": attention}

    def loss(self, out: dict, batch: dict) -> torch.Tensor:
        return F.cross_entropy(out["logits"], batch["label"])


def features(cfg: PerceptionConfig) -> tuple[str, ...]:
    """Feature names a configuration reads."""
    return (cfg.audio_feature, cfg.video_feature) + ((cfg.appearance_feature,) if cfg.appearance_feature else ())


CONFIG = PerceptionConfig
MODEL = PerceptionAttention
MODE = "clip"
FEATURES = ("logmel", "pca")
#: §4.1: early stopping; "the best results ... are chosen by the best prediction accuracy in the validation set"
SELECT = "WA"
# axis names of the attention maps the trainer plots (models.plots.attention_png)
ATTENTION = {"alignment": dict(xlabel="video frame", ylabel="audio step (eq 4-6)"),
             "perception": dict(xlabel="emotion embedding n (eq 9)", ylabel="video frame t")}
