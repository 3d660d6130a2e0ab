"""DLSTMs with embedding attention and bimodal attention fusion (Lucas et al., paper 001, §2.2, §3).

* **DLSTM** (§2.2): two stacked LSTM layers with dropout between them and a dense linear layer
  giving (valence, arousal) at every time step; one per modality, hidden 32 (audio) and 128
  (video) (§3.2).
* **Embedding attention** (§2.2, eq 1-2, §3.1): the video DLSTM's input at step t is the
  general-dot-product attention average of the n = 13 video embeddings V_{t-n/2} … V_{t+n/2}
  around t, scored against the DLSTM's hidden state, score = h_{t-1}ᵀ W_a V_s (the state before
  step t: the attended input is what produces the next state). Bypassed (input = V_t) for the
  first ``bypass_epochs`` = 5 epochs (§3.1), switched by :meth:`DLSTM.on_epoch_start`.
* **Bimodal attention fusion** (eq 3-5): for each output dimension m, scores S_m = Cᵀ W_m over the
  n DLSTMs from the concatenated hidden states C, a softmax, and z_m = Σ_i a_{m,i} y_{m,i}.
  Baselines: OLB Z = Y W (eq 6) and HLB Z = Cᵀ W (eq 7) (``fusion``).
* **Early fusion** (§3.2): a third DLSTM (hidden 128) on the per-step concatenation of the audio
  and video features, fused with the other two.
* Training (§3): MSE, Adam with learning rate 0.01 (``optimizer``, ``lr``); the trainer computes
  the CCC.

**The 13 embeddings.** In Lucas §3 the video embeddings are VGGFace activations of every video
frame (RECOLA, 25 fps), and the attention window is 13 frames ≈ half a second. This store gives,
for each 655 ms audio window, its 16 aligned video frames (AVEF §2.1.2) with a per-frame
embedding (``video_feature``: ``"descriptor"`` = dlib ResNet 128-d, or ``"vggface"`` when the
weights were available at build time). A time step here is one window; its 13 attention
embeddings are the window's 13 central frames (≈ 0.5 s at 25 fps, as in the paper), and V_t,
the bypass input, is its centre frame. The audio input is the window's VGGish embedding
(``"vggish_window"``, 128-d; VGGish itself is Lucas's audio embedding, 960 ms patches).

**Clip-level targets.** RECOLA has a label per frame; the corpora here have one (valence,
arousal) per clip, so the per-step fused outputs are averaged over the clip's real windows and
``out["pred"]`` (B, 2) = (valence, arousal) is trained with MSE. With ``task="classification"``
the same fusion runs over ``n_classes`` output dimensions and gives ``out["logits"]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import GeneralScore, make_optimizer, masked_mean

FUSIONS = ("attention", "olb", "hlb")


@dataclass
class DLSTMConfig:
    n_classes: int = 2  # used when task == "classification"
    task: str = "regression"  # "regression" (valence, arousal) | "classification"
    audio_feature: str = "vggish_window"
    video_feature: str = "descriptor"  # per-frame embeddings (B, T, 16, D); "vggface" likewise
    audio_dim: int = 128
    video_dim: int = 128
    audio_hidden: int = 32  # §3.2
    video_hidden: int = 128  # §3.2
    early_hidden: int = 128  # §3.2, third DLSTM
    early_fusion: bool = True  # §3.2
    embedding_attention: bool = True  # §2.2
    n_embeddings: int = 13  # §3.1: window of 13 frames
    bypass_epochs: int = 5  # §3.1
    fusion: str = "attention"  # "attention" (eq 3-5) | "olb" (eq 6) | "hlb" (eq 7)
    dropout: float = 0.5  # "dropout between the layers" (§2.2; the rate is not given)
    optimizer: str = "adam"  # §3
    lr: float = 0.01  # §3
    weight_decay: float = 0.0

    @property
    def n_outputs(self) -> int:
        return 2 if self.task == "regression" else self.n_classes


class DLSTMNet(nn.Module):
    """Two LSTM layers (dropout between) + linear (Lucas §2.2): (B,T,D) → y (B,T,o), h (B,T,c)."""

    def __init__(self, d_in: int, hidden: int, n_out: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, num_layers=2, dropout=dropout, batch_first=True)
        self.linear = nn.Linear(hidden, n_out)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.linear(h), h


class AttentiveDLSTM(nn.Module):
    """The video DLSTM with embedding attention (Lucas §2.2 eq 1-2): at step t its input is
    Σ_s a_t(s) V_{t,s}, a_t = softmax_s(h_{t-1}ᵀ W_a V_{t,s}), h_{t-1} the top layer's state.

    ``forward(windows, bypass)``: ``windows`` (B, T, n, D) the n embeddings around each step;
    with ``bypass`` the input is the centre embedding V_t. Returns y (B,T,o), h (B,T,c) and the
    attention (B, T, n) (one-hot on the centre when bypassed).
    """

    def __init__(self, d_in: int, hidden: int, n_out: int, dropout: float):
        super().__init__()
        self.hidden = hidden
        self.cell1 = nn.LSTMCell(d_in, hidden)
        self.cell2 = nn.LSTMCell(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.score = GeneralScore(hidden, d_in)
        self.linear = nn.Linear(hidden, n_out)

    def forward(self, windows: torch.Tensor, bypass: bool):
        B, T, n, _ = windows.shape
        z = windows.new_zeros(B, self.hidden)
        s1, s2 = (z, z), (z, z)
        hs, atts = [], []
        for t in range(T):
            V = windows[:, t]
            if bypass:
                a = F.one_hot(torch.full((B,), n // 2, device=V.device), n).to(V.dtype)
            else:
                a = torch.softmax(self.score(s2[0], V), -1)  # eq 1-2
            x = (a.unsqueeze(-1) * V).sum(1)
            s1 = self.cell1(x, s1)
            s2 = self.cell2(self.drop(s1[0]), s2)
            hs.append(s2[0])
            atts.append(a)
        h = torch.stack(hs, 1)
        return self.linear(h), h, torch.stack(atts, 1)


def bimodal_attention_fusion(C: torch.Tensor, Y: torch.Tensor, W: torch.Tensor):
    """Lucas eq 3-5. ``C`` (..., cn) concatenated hidden states, ``Y`` (..., o, n) the outputs of
    the n DLSTMs for each output dimension, ``W`` (o, cn, n) one score map per output dimension.

    Returns z (..., o) and the attention a (..., o, n) (each row sums to 1).
    """
    S = torch.einsum("...c,mcn->...mn", C, W)  # eq 3, separately per output dimension m
    a = torch.softmax(S, -1)  # eq 4
    return (a * Y).sum(-1), a  # eq 5


class DLSTM(nn.Module):
    def __init__(self, config: DLSTMConfig):
        super().__init__()
        if config.fusion not in FUSIONS:
            raise ValueError(f"DLSTMConfig.fusion={config.fusion!r}: use one of {FUSIONS}")
        if config.task not in ("regression", "classification"):
            raise ValueError(f"DLSTMConfig.task={config.task!r}: use 'regression' or 'classification'")
        self.config = c = config
        o = c.n_outputs
        self.audio = DLSTMNet(c.audio_dim, c.audio_hidden, o, c.dropout)
        self.video = AttentiveDLSTM(c.video_dim, c.video_hidden, o, c.dropout)
        hiddens = [c.audio_hidden, c.video_hidden]
        if c.early_fusion:
            self.early = DLSTMNet(c.audio_dim + c.video_dim, c.early_hidden, o, c.dropout)
            hiddens.append(c.early_hidden)
        n, cn = len(hiddens), sum(hiddens)
        if c.fusion == "attention":
            self.W_m = nn.Parameter(torch.randn(o, cn, n) / cn ** 0.5)  # eq 3
        elif c.fusion == "olb":
            self.W = nn.Parameter(torch.full((n, 1), 1.0 / n))  # eq 6
        else:
            self.W = nn.Linear(cn, o, bias=False)  # eq 7
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    @property
    def features(self) -> tuple[str, ...]:
        return (self.config.audio_feature, self.config.video_feature)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The config's optimiser over the trainable parameters (trainer hook)."""
        c = self.config
        return make_optimizer(self.parameters(), name=c.optimizer, lr=c.lr, weight_decay=c.weight_decay)

    @property
    def bypass(self) -> bool:
        """Embedding attention is bypassed for the first ``bypass_epochs`` epochs (§3.1)."""
        c = self.config
        return (not c.embedding_attention) or int(self.epoch) < c.bypass_epochs

    def on_epoch_start(self, epoch: int) -> None:
        """Trainer hook; ``epoch`` counts from 0. Stored in a buffer, so a checkpoint remembers."""
        self.epoch.fill_(int(epoch))

    def forward(self, batch: dict) -> dict:
        c = self.config
        a = batch[c.audio_feature]  # (B, T, Da)
        v = batch[c.video_feature]  # (B, T, F, Dv) frames of each window
        mask = batch["mask"].to(torch.bool)
        n_frames = v.shape[2]
        if n_frames < c.n_embeddings:
            raise ValueError(f"DLSTM: {c.video_feature} has {n_frames} frames per window, fewer than "
                             f"n_embeddings={c.n_embeddings}; lower DLSTMConfig.n_embeddings")
        start = (n_frames - c.n_embeddings) // 2
        windows = v[:, :, start:start + c.n_embeddings]
        y_a, h_a = self.audio(a)
        y_v, h_v, att = self.video(windows, self.bypass)
        ys, hs = [y_a, y_v], [h_a, h_v]
        if c.early_fusion:
            y_e, h_e = self.early(torch.cat([a, v[:, :, n_frames // 2]], -1))
            ys.append(y_e)
            hs.append(h_e)
        Y, C = torch.stack(ys, -1), torch.cat(hs, -1)  # (B,T,o,n), (B,T,cn)
        attention = {"embedding": att}
        if c.fusion == "attention":
            z, fusion_att = bimodal_attention_fusion(C, Y, self.W_m)
            attention["fusion"] = fusion_att
        elif c.fusion == "olb":
            z = (Y @ self.W).squeeze(-1)
        else:
            z = self.W(C)
        clip = masked_mean(z, mask)  # (B, o)
        key = "pred" if c.task == "regression" else "logits"
        return {key: clip, "steps": z, "outputs": Y, "hidden": C, "attention": attention,
                "unimodal": {"audio": masked_mean(y_a, mask), "video": masked_mean(y_v, mask)}}

    def loss(self, out: dict, batch: dict) -> torch.Tensor:
        if self.config.task == "classification":
            return F.cross_entropy(out["logits"], batch["label"])
        if "valence" not in batch or "arousal" not in batch:
            raise KeyError("DLSTM regression needs 'valence' and 'arousal' in the batch: the corpus's "
                           "labels CSV must have valence,arousal columns (or use task='classification')")
        target = torch.stack([batch["valence"], batch["arousal"]], -1).to(out["pred"].dtype)
        return F.mse_loss(out["pred"], target)


def features(cfg: DLSTMConfig) -> tuple[str, ...]:
    """Feature names a configuration reads."""
    return (cfg.audio_feature, cfg.video_feature)


CONFIG = DLSTMConfig
MODEL = DLSTM
MODE = "clip"
FEATURES = ("vggish_window", "descriptor")
# axis names of the attention maps the trainer plots (models.plots.attention_png)
ATTENTION = {"embedding": dict(xlabel="video embedding s (eq 1-2)", ylabel="step (window)"),
             "fusion": dict(xlabel="DLSTM (audio, video, early)", ylabel="step (window)", panel="output")}
