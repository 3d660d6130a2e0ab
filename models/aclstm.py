"""Attentively-Coupled LSTM (Hsu & Wu, paper 000, §III) and its Table 3 baselines.

Pipeline of §III (Fig. 1), one clip = a sequence of segments (prosodic units, §II / §III-A):

* **Audio features** (§III-B, Fig. 3, Table 2): two CNNs over the log-mel frames of a window,
  treating the 64 mel bands × (static, Δ, ΔΔ) as input channels and convolving over time:
  the *audio emotion CNN* (kernel 64 frames, 300 filters) and the *sound-type CNN* (kernel 32,
  700 filters), each followed by ReLU and a max over time. A segment's features are the mean over
  its windows (the batch's ``unit`` index, :func:`models.layers.unit_assignment`).
* **Visual features** (§III-B): "the hidden layer vector ... from each image frame; the average of
  each dimension between vectors is the facial emotion feature vector of this segment". VGG-19
  weights (Table 2: input 72×72) are not available here, so the default ``visual_feature`` is
  ``"descriptor"`` (dlib ResNet 128-d per frame, or ``"vggface"``), passed through one trainable
  hidden layer that plays the role of the fine-tuned VGG hidden layer; ``"crop_small"`` runs a
  VGG-19 conv stack (``vgg_cfg``) + hidden layer on the 72×72 crops instead, trained from scratch.
* **NTN consistency score** (§III-C eq 1, tensor dimension R = 5), trained separately
  (:meth:`ACLSTM.pretrain`) with target 1 when the audio and visual segment labels agree.
* **Coupled LSTM** (§III-D eq 3-4) and the **attentive update** (eq 5), hidden 128; the two hidden
  states are summed and two linear layers + softmax give each segment's emotion.

Decisions the paper leaves open (stated here so they can be changed in one place):

* The NTN output is squashed with a sigmoid so that s ∈ (0, 1) (a probability of agreement,
  trained with binary cross-entropy against the 0/1 target) and 1/(1+s) in eq 5 stays in
  (0.5, 1]. The paper calls u_R "an activation function"; we read it as the output vector u_R of
  Socher's NTN, f = tanh.
* Per-segment labels: BAUM-1 was re-annotated per segment and modality (§II); corpora in this
  store have a clip label, so every segment gets the clip label (as §III-B does for the frames of
  a segment) unless the batch carries ``"segment_label"`` (B, S). The NTN target uses
  ``"segment_label_audio"``/``"segment_label_visual"`` when present, otherwise the agreement of
  the pre-trained unimodal classifiers' predicted labels (the audio emotion CNN's and the visual
  hidden layer's softmax heads).
* Clip label: §I motivates segments as a way "to improve the accuracy of the entire signal
  identification with segmented emotions" without a formula; we take the mean of the segment
  posteriors (soft vote) and return its log as ``logits``.
* Eq 5 weights both the own and the counterpart cell state by 1/(1+s^{t-1}) while the text says
  the own cell is "completely passed in"; we implement the equation as printed.
* The sound-type CNN has no labels here (laugh / breath / shout / silence / verbal, §II); it is
  trained with the fusion model unless the batch has ``"sound_type"`` (B, S) for pre-training.

Table 3 baselines (``variant``): ``"feature"`` (feature-level fusion: [F_A; F_V] per segment →
attention-based LSTM), ``"decision"`` (an attention-based LSTM per modality, posteriors averaged),
``"coupled"`` (eq 3), ``"aclstm"`` (eq 5, the proposed model).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import fit, make_optimizer, masked_mean, masked_softmax, unit_assignment, unit_mean

VARIANTS = ("feature", "decision", "coupled", "aclstm")
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M")


@dataclass
class ACLSTMConfig:
    n_classes: int = 7  # anger, fear, sadness, surprise, neutral, disgust, happiness (§II)
    variant: str = "aclstm"
    n_mels: int = 64
    n_channels: int = 3  # static, Δ, ΔΔ
    emotion_kernel: int = 64  # Table 2
    emotion_filters: int = 300  # Table 2
    sound_kernel: int = 32  # Table 2
    sound_filters: int = 700  # Table 2
    n_sound_types: int = 5  # laugh, breath, shout, silence, verbal (§II)
    visual_feature: str = "descriptor"  # "descriptor" | "vggface" | "crop_small"
    visual_dim: int = 128  # size of a per-frame embedding (descriptor 128)
    visual_hidden: int = 256  # the "hidden layer vector" per frame (§III-B)
    vgg_cfg: tuple = VGG19  # conv stack for visual_feature="crop_small" (VGG-19, Table 2)
    crop_size: int = 72  # Table 2: VGG-19 input 72×72
    ntn_slices: int = 5  # tensor dimension R (Table 2)
    hidden: int = 128  # Table 2
    dropout: float = 0.0
    pretrain_epochs: int = 5  # unimodal feature extractors (§III-B)
    ntn_epochs: int = 5  # NTN, trained independently (§III-C)
    pretrain_lr: float = 1e-3
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0


def coupled_cell_update(i, f, z, c_own, c_other, s_prev=None):
    """Cell state of the coupled LSTM (Hsu & Wu eq 3) or of the attentive update (eq 5).

    eq 3: c = i⊗z + f⊗½c_own + f⊗½c_other;  eq 5: c = i⊗z + f⊗c_own/(1+s) + f⊗c_other/(1+s),
    with ``s_prev`` (B,) the NTN score of the previous segment; ``None`` gives eq 3.
    """
    w = 0.5 if s_prev is None else 1.0 / (1.0 + s_prev).unsqueeze(-1)
    return i * z + f * w * c_own + f * w * c_other


class CoupledLSTMCell(nn.Module):
    """Two LSTM cells (audio, image) whose cell updates read both previous cell states (eq 3-5).

    Each cell's gates i, f, o and input sum z come from its own input and its own previous hidden
    state (standard LSTM, eq 2); the coupling is in the cell update only (eq 3 / eq 5), and the
    hidden state is h = o ⊗ tanh(c) (eq 4).
    """

    def __init__(self, d_audio: int, d_visual: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gates_a = nn.Linear(d_audio + hidden, 4 * hidden)
        self.gates_v = nn.Linear(d_visual + hidden, 4 * hidden)

    def _gates(self, lin, x, h):
        i, f, o, z = lin(torch.cat([x, h], -1)).chunk(4, -1)
        return torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(z)

    def forward(self, x_a, x_v, state, s_prev=None):
        h_a, c_a, h_v, c_v = state
        i_a, f_a, o_a, z_a = self._gates(self.gates_a, x_a, h_a)
        i_v, f_v, o_v, z_v = self._gates(self.gates_v, x_v, h_v)
        c_a2 = coupled_cell_update(i_a, f_a, z_a, c_a, c_v, s_prev)
        c_v2 = coupled_cell_update(i_v, f_v, z_v, c_v, c_a, s_prev)
        return o_a * torch.tanh(c_a2), c_a2, o_v * torch.tanh(c_v2), c_v2


class NTN(nn.Module):
    """Neural tensor network score (Hsu & Wu eq 1, after Socher/Qiu & Huang [32]).

    s = σ(u_Rᵀ tanh(F_Aᵀ M_R F_V + V_R [F_A; F_V] + b_R)), M_R (R, d_a, d_v), V_R (R, d_a+d_v),
    b_R (R,), u_R (R,); ``forward`` returns s (...,) in (0, 1) and ``logit`` gives the pre-sigmoid.
    """

    def __init__(self, d_audio: int, d_visual: int, slices: int = 5):
        super().__init__()
        self.M = nn.Parameter(torch.randn(slices, d_audio, d_visual) / (d_audio * d_visual) ** 0.5)
        self.V = nn.Linear(d_audio + d_visual, slices)  # V_R and b_R
        self.u = nn.Parameter(torch.randn(slices) / slices ** 0.5)

    def logit(self, fa, fv):
        bilinear = torch.einsum("...a,rav,...v->...r", fa, self.M, fv)
        return torch.tanh(bilinear + self.V(torch.cat([fa, fv], -1))) @ self.u

    def forward(self, fa, fv):
        return torch.sigmoid(self.logit(fa, fv))


class AudioCNN(nn.Module):
    """One of the audio CNNs of Fig. 3: Conv1d over the frames of a window (channels = mel bands
    × (S, Δ, ΔΔ)), ReLU, max over time. (B, 3, n_mels, n_frames) → (B, filters)."""

    def __init__(self, in_channels: int, filters: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, filters, kernel)
        self.pad = ((kernel - 1) // 2, kernel // 2)  # "same" length, also for even kernels

    def forward(self, x):
        x = F.pad(x.reshape(x.shape[0], -1, x.shape[-1]), self.pad)
        return F.relu(self.conv(x)).amax(-1)


def vgg_stack(cfg, in_channels: int = 3) -> nn.Sequential:
    """VGG conv stack from a cfg list (Simonyan & Zisserman; "M" = 2×2 max pool)."""
    layers, c = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


class AttentionLSTM(nn.Module):
    """The "attention-based LSTM" of the Table 3 baselines: LSTM over segments, attention pooling
    α_t = softmax(wᵀ tanh(W h_t)) over real segments, two linear layers."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True)
        self.att = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, n_classes))

    def forward(self, x, mask):
        h, _ = self.lstm(x)
        alpha = masked_softmax(self.att(h).squeeze(-1), mask, -1)
        return self.head((alpha.unsqueeze(-1) * h).sum(1)), alpha


class ACLSTM(nn.Module):
    def __init__(self, config: ACLSTMConfig):
        super().__init__()
        if config.variant not in VARIANTS:
            raise ValueError(f"ACLSTMConfig.variant={config.variant!r}: use one of {VARIANTS}")
        if config.visual_feature not in ("descriptor", "vggface", "crop_small"):
            raise ValueError(f"ACLSTMConfig.visual_feature={config.visual_feature!r}: use "
                             "'descriptor', 'vggface' or 'crop_small'")
        self.config = c = config
        in_ch = c.n_channels * c.n_mels
        self.emotion_cnn = AudioCNN(in_ch, c.emotion_filters, c.emotion_kernel)
        self.sound_cnn = AudioCNN(in_ch, c.sound_filters, c.sound_kernel)
        self.audio_head = nn.Linear(c.emotion_filters, c.n_classes)  # emotion CNN's own softmax
        self.sound_head = nn.Linear(c.sound_filters, c.n_sound_types)
        if c.visual_feature == "crop_small":
            self.vgg = vgg_stack(c.vgg_cfg)
            n_pool = sum(1 for v in c.vgg_cfg if v == "M")
            side = c.crop_size // 2 ** n_pool
            last = [v for v in c.vgg_cfg if v != "M"][-1]
            self.visual_hidden = nn.Sequential(nn.Flatten(), nn.Linear(last * side * side, c.visual_hidden), nn.ReLU())
        else:
            self.vgg = None
            self.visual_hidden = nn.Sequential(nn.Linear(c.visual_dim, c.visual_hidden), nn.ReLU())
        self.visual_head = nn.Linear(c.visual_hidden, c.n_classes)  # the VGG's frame classifier
        self.ntn = NTN(c.emotion_filters, c.visual_hidden, c.ntn_slices)
        d_a, d_v = c.emotion_filters + c.sound_filters, c.visual_hidden
        if c.variant in ("coupled", "aclstm"):
            self.cell = CoupledLSTMCell(d_a, d_v, c.hidden)
            self.head = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.ReLU(), nn.Dropout(c.dropout),
                                      nn.Linear(c.hidden, c.n_classes))
        elif c.variant == "feature":
            self.fused = AttentionLSTM(d_a + d_v, c.hidden, c.n_classes, c.dropout)
        else:
            self.lstm_a = AttentionLSTM(d_a, c.hidden, c.n_classes, c.dropout)
            self.lstm_v = AttentionLSTM(d_v, c.hidden, c.n_classes, c.dropout)

    @property
    def features(self) -> tuple[str, ...]:
        """Feature names this configuration reads (FEATURES with the configured visual one)."""
        return ("logmel", self.config.visual_feature)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The config's optimiser over the trainable parameters (trainer hook)."""
        c = self.config
        return make_optimizer(self.parameters(), name=c.optimizer, lr=c.lr, weight_decay=c.weight_decay)

    # --- segment features (§III-B) ----------------------------------------------------------
    def segment_features(self, batch: dict) -> dict:
        """Per-segment audio emotion (B,S,300), sound-type (B,S,700) and visual (B,S,H) features."""
        logmel = batch["logmel"]  # (B, T, 3, n_mels, n_frames)
        B, T = logmel.shape[:2]
        mask = batch["mask"].to(torch.bool)
        assign, seg_mask = unit_assignment(batch["unit"], mask)
        windows = logmel.reshape(B * T, *logmel.shape[2:])
        emo = unit_mean(self.emotion_cnn(windows).reshape(B, T, -1), assign)
        snd = unit_mean(self.sound_cnn(windows).reshape(B, T, -1), assign)
        v = batch[self.config.visual_feature]
        if self.vgg is not None:  # (B, T, 3, 16, H, W) crops
            frames = v.permute(0, 1, 3, 2, 4, 5).reshape(-1, *v.shape[2:3], *v.shape[4:])
            hv = self.visual_hidden(self.vgg(frames)).reshape(B, T, v.shape[3], -1)
        else:  # (B, T, 16, D) per-frame embeddings
            hv = self.visual_hidden(v)
        vis = unit_mean(hv.mean(2), assign)  # frames of a window, then windows of a unit
        return {"emotion": emo, "sound": snd, "visual": vis, "seg_mask": seg_mask}

    def segment_targets(self, batch: dict, seg_mask: torch.Tensor) -> torch.Tensor:
        if "segment_label" in batch:
            return batch["segment_label"]
        return batch["label"].unsqueeze(1).expand(seg_mask.shape)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        c = self.config
        seg = self.segment_features(batch)
        fa = torch.cat([seg["emotion"], seg["sound"]], -1)
        fv, m = seg["visual"], seg["seg_mask"]
        if c.variant == "feature":
            logits, alpha = self.fused(torch.cat([fa, fv], -1), m)
            return {"logits": logits, "attention": {"segment": alpha}, "seg_mask": m}
        if c.variant == "decision":
            la, aa = self.lstm_a(fa, m)
            lv, av = self.lstm_v(fv, m)
            prob = 0.5 * la.softmax(-1) + 0.5 * lv.softmax(-1)
            return {"logits": prob.clamp_min(1e-12).log(), "logits_audio": la, "logits_visual": lv,
                    "attention": {"segment_audio": aa, "segment_visual": av}, "seg_mask": m}
        s = None
        if c.variant == "aclstm":
            with torch.no_grad():  # the NTN is trained on its own (§III-C), never by this loss
                s = self.ntn(seg["emotion"], fv)
        B, S, _ = fa.shape
        h = fa.new_zeros(B, c.hidden)
        state = (h, h, h, h)
        outs = []
        for t in range(S):
            s_prev = None if s is None else (s[:, t - 1] if t > 0 else torch.zeros_like(s[:, 0]))
            new = self.cell(fa[:, t], fv[:, t], state, s_prev)
            keep = m[:, t].unsqueeze(-1)
            state = tuple(torch.where(keep, n, o) for n, o in zip(new, state))
            outs.append(state[0] + state[2])  # "sums the values of h_cell^t"
        seg_logits = self.head(torch.stack(outs, 1))  # (B, S, C)
        prob = masked_mean(seg_logits.softmax(-1), m)  # soft vote over the clip's segments
        out = {"logits": prob.clamp_min(1e-12).log(), "segment_logits": seg_logits, "seg_mask": m,
               "attention": {}}
        if s is not None:
            out["attention"]["segment"] = s
        return out

    def loss(self, out: dict, batch: dict) -> torch.Tensor:
        c = self.config
        if c.variant == "feature":
            return F.cross_entropy(out["logits"], batch["label"])
        if c.variant == "decision":  # each modality's classifier is trained on its own
            return F.cross_entropy(out["logits_audio"], batch["label"]) + \
                F.cross_entropy(out["logits_visual"], batch["label"])
        m = out["seg_mask"]
        target = self.segment_targets(batch, m)
        return F.cross_entropy(out["segment_logits"][m], target[m])

    # --- separately trained parts (§III-B, §III-C) ----------------------------------------------
    def _unimodal_loss(self, batch):
        seg = self.segment_features(batch)
        m = seg["seg_mask"]
        y = self.segment_targets(batch, m)[m]
        loss = F.cross_entropy(self.audio_head(seg["emotion"])[m], y) + \
            F.cross_entropy(self.visual_head(seg["visual"])[m], y)
        if "sound_type" in batch:
            loss = loss + F.cross_entropy(self.sound_head(seg["sound"])[m], batch["sound_type"][m])
        return loss

    def ntn_target(self, batch: dict, seg: dict) -> torch.Tensor:
        """1 where the audio and visual segment labels agree, else 0 (§III-C)."""
        if "segment_label_audio" in batch and "segment_label_visual" in batch:
            return (batch["segment_label_audio"] == batch["segment_label_visual"]).float()
        ya = self.audio_head(seg["emotion"]).argmax(-1)
        yv = self.visual_head(seg["visual"]).argmax(-1)
        return (ya == yv).float()

    def _ntn_loss(self, batch):
        with torch.no_grad():
            seg = self.segment_features(batch)
            target = self.ntn_target(batch, seg)
        m = seg["seg_mask"]
        return F.binary_cross_entropy_with_logits(self.ntn.logit(seg["emotion"], seg["visual"])[m], target[m])

    def pretrain(self, loader, device) -> dict:
        """Train the feature extractors on segment emotion targets (§III-B), then the NTN on the
        agreement target (§III-C), then freeze both; the trainer then trains the fusion LSTM."""
        c = self.config
        self.train()
        extractors = [self.emotion_cnn, self.audio_head, self.visual_hidden, self.visual_head]
        if self.vgg is not None:
            extractors.append(self.vgg)
        params = [p for mod in extractors for p in mod.parameters()] + list(self.sound_head.parameters())
        hist = {"unimodal": fit(params, self._unimodal_loss, loader, device, epochs=c.pretrain_epochs, lr=c.pretrain_lr)}
        for mod in extractors:
            mod.requires_grad_(False)
        hist["ntn"] = fit(self.ntn.parameters(), self._ntn_loss, loader, device, epochs=c.ntn_epochs, lr=c.pretrain_lr)
        self.ntn.requires_grad_(False)
        return hist


def features(cfg: ACLSTMConfig) -> tuple[str, ...]:
    """Feature names a configuration reads (FEATURES with the configured visual feature)."""
    return ("logmel", cfg.visual_feature)


CONFIG = ACLSTMConfig
MODEL = ACLSTM
MODE = "clip"
FEATURES = ("logmel", "descriptor")
# axis names of the attention maps the trainer plots (models.plots.attention_png)
ATTENTION = {"segment": dict(xlabel="segment (aclstm: NTN consistency score s, eq 1; feature: α)"),
             "segment_audio": dict(xlabel="segment (audio attention α)"),
             "segment_visual": dict(xlabel="segment (visual attention α)")}
