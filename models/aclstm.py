"""Attentively-Coupled LSTM (Hsu & Wu, paper 000, §III) and its Table 3 baselines.

Pipeline of §III (Fig. 1), one clip = a sequence of segments (prosodic units, §II / §III-A):

* **A segment per prosodic unit, silences included** (issue 18 item 7). §III-A: "we need to
  segment the raw audio signal into segments, each of which contains only one emotion ... The
  segmentation points in the audio and visual data are used to divide the signal into segments",
  with "silence detection" among the segmentation steps and "silence" among the sound types
  (§II); so every unit of the segmentation, a silence too, is a segment that the models see. The
  store's 655 ms windows lie over voiced frames only (AVEF), so a silence owns no window; the
  model therefore reads its batches in ``MODE = "segment"`` (``models/data.py``): a unit without a
  window gets windows computed on read from *its own* log-mel frames (the stored frames cover the
  whole clip) and, for the visual input, the 16 face frames of its own time span (AVEF's rule).
  We chose this over requiring ``--Segment-keep-silent``, which lays windows over every frame but
  still gives a unit only the windows whose frames it holds the most of, so a short silence
  (≥ 0.1 s) inside 655 ms windows usually still owns none, and it would also change the windows
  of the voiced units.

* **Audio features** (§III-B, Fig. 3, Table 2): two CNNs over the log-mel frames of a window,
  treating the 64 mel bands × (static, Δ, ΔΔ) as input channels and convolving over time:
  the *audio emotion CNN* (kernel 64 frames, 300 filters) and the *sound-type CNN* (kernel 32,
  700 filters), each followed by ReLU and a max over time. A segment's features are the mean over
  its windows (the batch's ``unit`` index, :func:`models.layers.unit_assignment`). §III-B: "The
  verbal segments are used to train a CNN model with emotions as the target outputs. Then, the
  non-verbal segments and the appropriate verbal segments are used to train another CNN of the
  sound type": in :meth:`ACLSTM.pretrain` the emotion CNN's loss runs over the *verbal* segments
  only (``unit_kind`` = 1; every segment when the batch has no ``unit_kind``), the sound-type CNN's
  over every segment with a known sound type.
* **Visual features** (§III-B): "the VGG is trained to recognize the single facial image
  emotion" on "all image frames in the segment" (segment label as target), then "the hidden layer
  vector is obtained from each image frame; the average of each dimension between vectors is the
  facial emotion feature vector of this segment". Table 2 gives "VGG-19 model, input size =
  72*72" and no widths, so the default is VGG-19 as published (Simonyan & Zisserman, config E:
  16 conv 3×3 of widths 64, 64 | 128, 128 | 256 ×4 | 512 ×4 | 512 ×4, five 2×2 max pools, then
  FC-4096, FC-4096, FC-classes; ``vgg_cfg``, ``visual_hidden`` = 4096, ``visual_layers`` = 2) on
  the 72×72 face crops of each window's 16 frames (``visual_feature="crop_small"``, AVEF §2.1.2
  alignment; 72 / 2⁵ → a 2×2×512 map into fc6). fc7 is "the hidden layer vector" F_V; fc8 is
  ``visual_head``, the frame classifier of the pre-training. The paper does not say whether the
  VGG-19 started from other weights; none are downloaded here: it is trained from scratch in
  :meth:`ACLSTM.pretrain` (torchvision's VGG initialisation), every frame of a window with
  video classified by fc8 against its segment's label (:meth:`ACLSTM.frame_loss`), then frozen.
  The VGG and its FC layers train with Adam at ``vgg_lr`` = 1e-4 (the paper gives no rate). On a
  synthetic 4-class task (a coloured square per class on noise, 72 px, batches of 16, 60 steps)
  this VGG-19 from scratch stayed at chance at ``pretrain_lr`` = 1e-3 (loss 9.2 at first, 1.39 at
  the end) and learned at 1e-4 (1.39 → 0.18).
  Crops arrive as uint8 (``models/data.py``; divided by 255 on the device) or as floats in [0, 1].
  Alternatives (``visual_feature``): ``"vggface"``, per-frame VGGFace activations built into the
  shards when ``[VGGFace] weights`` is set (``video/vggface``; e.g. a VGG-19 face network at
  72 px, ``image_size = 72``), and ``"descriptor"``, dlib's 128-d ResNet face descriptor. Both go
  through the same hidden FC layers; the descriptor is an *identity* embedding, computed every
  5th frame (``[FaceDescriptor] every``): a window's 16 frames hold 4-6 distinct vectors (demo)
  against 16 distinct crops, so it carries little expression. ``visual_dim`` is the per-frame
  embedding size (``None``: 128 for the descriptor, 512 for VGGFace's default ``conv5_3``).
  A window without usable video (``video_ok`` False) or a padding window is not run through the
  VGG; a segment's visual vector is the mean over its windows with video (zeros if none).
* **NTN consistency score** (§III-C eq 1, tensor dimension R = 5), trained separately
  (:meth:`ACLSTM.pretrain`) with target 1 when the audio and visual segment labels agree.
* **Coupled LSTM** (§III-D eq 3-4) and the **attentive update** (eq 5), hidden 128; the two hidden
  states are summed and two linear layers + softmax give each segment's emotion.

Decisions the paper leaves open (stated here so they can be changed in one place):

* The NTN output is squashed with a sigmoid so that s ∈ (0, 1) (a probability of agreement,
  trained with binary cross-entropy against the 0/1 target) and 1/(1+s) in eq 5 stays in
  (0.5, 1]. The paper calls u_R "an activation function"; we read it as the output vector u_R of
  Socher's NTN, f = tanh.
* Per-segment labels: BAUM-1 was re-annotated per segment and modality (§II): "each segment in
  the BAUM-1 database needs to be re-labeled for each modality (Audio or Visual)". A corpus gives
  them in the manifest's ``segment_labels`` file (``pipeline/manifest.py``; stored per unit in
  ``/unit_labels``) and the batch then carries ``segment_label`` (audio-visual),
  ``segment_label_audio``, ``segment_label_visual`` and ``sound_type`` (B, S), −1 where a
  segment is not annotated. Each falls back, per segment, to the clip label when −1 or absent (as
  §III-B gives the frames of a segment its label): the fusion model learns ``segment_label``, the
  audio emotion CNN ``segment_label_audio``, the VGG's frames ``segment_label_visual``. The NTN
  target is the agreement of the audio and visual labels where both are annotated, otherwise that
  of the pre-trained unimodal classifiers' predicted labels (the audio emotion CNN's and the
  visual hidden layer's softmax heads).
* Clip label: §I motivates segments as a way "to improve the accuracy of the entire signal
  identification with segmented emotions" without a formula; we take the mean of the segment
  posteriors (soft vote) and return its log as ``logits``.
* Eq 5 weights both the own and the counterpart cell state by 1/(1+s^{t-1}) while the text says
  the own cell is "completely passed in"; we implement the equation as printed.
* Sound types (laugh / breath / shout / silence / verbal, §II; ``features.labels.SOUND_TYPES``
  order): from ``sound_type`` where annotated; otherwise (``sound_from_kind``) a silence unit is
  "silence" and a verbal unit "verbal", as the segmentation itself decides (§II: "silence
  detection, verbal/non-verbal segment detection"); a non-verbal unit without annotation has no
  target (laugh, breath and shout need a person). The sound-type CNN is pre-trained and frozen
  when any segment has a target, else trained with the fusion model.

Table 3 baselines (``variant``): ``"feature"`` (feature-level fusion: [F_A; F_V] per segment →
attention-based LSTM), ``"decision"`` (an attention-based LSTM per modality, posteriors averaged),
``"coupled"`` (eq 3), ``"aclstm"`` (eq 5, the proposed model).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from features.labels import SOUND_TYPES
from models.layers import as_images, fit, make_optimizer, masked_mean, masked_softmax, unit_assignment, unit_mean

VARIANTS = ("feature", "decision", "coupled", "aclstm")
SILENCE, VERBAL, NONVERBAL = 0, 1, 2  # unit kinds (features.prosody)
SOUND_OF_KIND = {SILENCE: SOUND_TYPES.index("silence"), VERBAL: SOUND_TYPES.index("verbal")}
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M")  # Simonyan & Zisserman Table 1, config E
VISUAL_FEATURES = ("crop_small", "vggface", "descriptor")
# per-frame size of the stored face embeddings: dlib's descriptor; VGGFace's default layer conv5_3
# (``[VGGFace] layer``, features/vggface.py: 512; pool5 / fc6 / fc7 need ``visual_dim``)
EMBEDDING_DIMS = {"descriptor": 128, "vggface": 512}


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
    sound_from_kind: bool = True  # silence / verbal units are sound types "silence" / "verbal" (§II)
    visual_feature: str = "crop_small"  # "crop_small" (VGG-19 on the crops) | "vggface" | "descriptor"
    visual_dim: int | None = None  # per-frame embedding size (vggface/descriptor); None: EMBEDDING_DIMS
    visual_hidden: int = 4096  # VGG-19's fc6/fc7 width; fc7 = the "hidden layer vector" (§III-B)
    visual_layers: int = 2  # hidden FC layers (VGG-19: fc6, fc7)
    vgg_cfg: tuple = VGG19  # conv stack for visual_feature="crop_small" (VGG-19, Table 2)
    crop_size: int = 72  # Table 2: VGG-19 input 72×72
    ntn_slices: int = 5  # tensor dimension R (Table 2)
    hidden: int = 128  # Table 2
    dropout: float = 0.0
    pretrain_epochs: int = 5  # unimodal feature extractors (§III-B)
    ntn_epochs: int = 5  # NTN, trained independently (§III-C)
    pretrain_lr: float = 1e-3
    vgg_lr: float = 1e-4  # Adam rate of the VGG-19 and fc6/fc7/fc8 (not given; 1e-3 diverged from scratch)
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 16  # clips; Hsu & Wu give none (a documented choice, docs/fidelity.md)
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
    """VGG conv stack from a cfg list (Simonyan & Zisserman; "M" = 2×2 max pool), with
    torchvision's VGG initialisation (He normal, fan-out; zero bias) for training from scratch."""
    layers, c = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            conv = nn.Conv2d(c, v, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


def vgg_side(cfg, size: int) -> int:
    """Side of the last feature map of ``vgg_stack(cfg)`` on ``size``×``size`` input."""
    for v in cfg:
        if v == "M":
            size //= 2
    return size


def vgg_width(cfg) -> int:
    """Channels of the last conv of a VGG cfg."""
    return [v for v in cfg if v != "M"][-1]


def frames_through(net, crops: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Run ``net`` ((N, 3, H, W) → (N, D)) on every frame of the windows where ``keep`` is True.

    ``crops`` (B, T, 3, F, H, W) (``models/data.py`` clip mode), ``keep`` (B, T) bool. Returns
    (B, T, F, D), zeros on the other windows (padding, no usable video), which are never computed.
    Inputs are centred (``as_images`` − 0.5).
    """
    B, T, C, n, H, W = crops.shape
    x = crops[keep]                                            # (N, 3, F, H, W)
    x = as_images(x).transpose(1, 2).reshape(-1, C, H, W) - 0.5
    y = net(x)                                                 # (an empty batch passes too)
    out = y.new_zeros(B, T, n, y.shape[-1])
    out[keep] = y.reshape(-1, n, y.shape[-1])
    return out


def video_keep(batch: dict) -> torch.Tensor:
    """(B, T) bool: the real windows (``mask``) whose video is usable (``video_ok`` when present)."""
    keep = batch["mask"].to(torch.bool)
    if "video_ok" in batch:
        keep = keep & batch["video_ok"].to(torch.bool)
    return keep


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
        if config.visual_feature not in VISUAL_FEATURES:
            raise ValueError(f"ACLSTMConfig.visual_feature={config.visual_feature!r}: use one of {VISUAL_FEATURES}")
        if config.visual_layers < 1:
            raise ValueError("ACLSTMConfig.visual_layers must be >= 1 (the hidden layer vector of §III-B)")
        self.config = c = config
        in_ch = c.n_channels * c.n_mels
        self.emotion_cnn = AudioCNN(in_ch, c.emotion_filters, c.emotion_kernel)
        self.sound_cnn = AudioCNN(in_ch, c.sound_filters, c.sound_kernel)
        self.audio_head = nn.Linear(c.emotion_filters, c.n_classes)  # emotion CNN's own softmax
        self.sound_head = nn.Linear(c.sound_filters, c.n_sound_types)
        if c.visual_feature == "crop_small":   # VGG-19 on the 72×72 crops (Table 2)
            self.vgg = vgg_stack(c.vgg_cfg)
            side = vgg_side(c.vgg_cfg, c.crop_size)
            if side < 1:
                raise ValueError(f"ACLSTMConfig.vgg_cfg pools a {c.crop_size} px crop below 1 px: fewer 'M'")
            d_in, first = vgg_width(c.vgg_cfg) * side * side, [nn.Flatten()]
        else:
            self.vgg = None
            d_in, first = self.visual_dim, []
        layers = []
        for _ in range(c.visual_layers):   # fc6, fc7 of VGG-19
            layers += [nn.Linear(d_in, c.visual_hidden), nn.ReLU()]
            d_in = c.visual_hidden
        self.visual_hidden = nn.Sequential(*first, *layers)
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
    def visual_dim(self) -> int:
        """Per-frame size of a stored face embedding (``visual_dim``, else ``EMBEDDING_DIMS``)."""
        c = self.config
        return c.visual_dim if c.visual_dim is not None else EMBEDDING_DIMS.get(c.visual_feature, 0)

    @property
    def features(self) -> tuple[str, ...]:
        """Feature names this configuration reads (FEATURES with the configured visual one)."""
        return ("logmel", self.config.visual_feature)

    def frame_features(self, batch: dict) -> torch.Tensor:
        """(B, T, 16, visual_hidden): the hidden layer vector of every frame of every window
        (§III-B); zeros on padding and on windows without usable video."""
        v, keep = batch[self.config.visual_feature], video_keep(batch)
        if self.vgg is not None:   # (B, T, 3, 16, H, W) crops
            return frames_through(nn.Sequential(self.vgg, self.visual_hidden), v, keep)
        if v.shape[-1] != self.visual_dim:
            raise ValueError(f"ACLSTM: {self.config.visual_feature} has {v.shape[-1]} values per frame, the "
                             f"config expects visual_dim={self.visual_dim}: set visual_dim={v.shape[-1]}")
        return self.visual_hidden(v) * keep[..., None, None].to(v.dtype)   # (B, T, 16, D) embeddings

    def param_groups(self, modules, lr: float) -> list[dict]:
        """Optimiser groups over the trainable parameters of ``modules``: the VGG and its FC layers
        (``visual_feature="crop_small"``) at ``vgg_lr``, the rest at ``lr``."""
        vis = {id(p) for m in (self.vgg, self.visual_hidden, self.visual_head) for p in m.parameters()} \
            if self.vgg is not None else set()
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) not in vis], "lr": lr},
                  {"params": [p for p in params if id(p) in vis], "lr": self.config.vgg_lr}]
        return [g for g in groups if g["params"]]

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The config's optimiser over the trainable parameters (trainer hook); a VGG still
        trainable (no pre-training) is a second group at ``vgg_lr``."""
        c = self.config
        groups = self.param_groups([self], c.lr)
        opt = make_optimizer(groups[0]["params"], name=c.optimizer, lr=groups[0]["lr"], weight_decay=c.weight_decay)
        for g in groups[1:]:
            opt.add_param_group(g)
        return opt

    # --- segment features (§III-B) ----------------------------------------------------------
    def segment_features(self, batch: dict) -> dict:
        """Per-segment audio emotion (B,S,300), sound-type (B,S,700) and visual (B,S,H) features,
        plus the per-frame hidden vectors ``frames`` (B,T,16,H), ``assign`` (B,S,T) and ``keep`` (B,T)."""
        logmel = batch["logmel"]  # (B, T, 3, n_mels, n_frames)
        B, T = logmel.shape[:2]
        mask = batch["mask"].to(torch.bool)
        assign, seg_mask = unit_assignment(batch["unit"], mask)
        windows = logmel.reshape(B * T, *logmel.shape[2:])
        emo = unit_mean(self.emotion_cnn(windows).reshape(B, T, -1), assign)
        snd = unit_mean(self.sound_cnn(windows).reshape(B, T, -1), assign)
        # a segment's visual vector: the mean over the frames of its windows with video (§III-B)
        keep = video_keep(batch)
        has = (assign > 0).to(assign.dtype) * keep.unsqueeze(1).to(assign.dtype)   # (B, S, T)
        frames = self.frame_features(batch)
        vis = unit_mean(frames.mean(2), has / has.sum(-1, keepdim=True).clamp_min(1.0))
        return {"emotion": emo, "sound": snd, "visual": vis, "seg_mask": seg_mask, "frames": frames,
                "assign": assign, "keep": keep}

    def segment_targets(self, batch: dict, seg_mask: torch.Tensor, key: str = "segment_label") -> torch.Tensor:
        """(B, S) class targets of the segments: ``batch[key]`` where annotated (>= 0), else the
        clip label (§III-B gives a segment's frames its label; here a clip's segments its label)."""
        clip = batch["label"].unsqueeze(1).expand(seg_mask.shape)
        if key not in batch:
            return clip
        y = batch[key][:, :seg_mask.shape[1]].to(clip.device)
        return torch.where(y >= 0, y, clip)

    def segment_kinds(self, batch: dict, seg: dict) -> torch.Tensor | None:
        """(B, S) the unit kind of each segment (0 silence, 1 verbal, 2 non-verbal; -1 padding), from
        the batch's per-window ``unit_kind``; ``None`` when the batch has none."""
        if "unit_kind" not in batch:
            return None
        first = (seg["assign"] > 0).float().argmax(-1)                     # a window of each segment
        kind = torch.gather(batch["unit_kind"].long(), 1, first)
        return torch.where(seg["seg_mask"], kind, torch.full_like(kind, -1))

    def sound_targets(self, batch: dict, seg: dict) -> torch.Tensor:
        """(B, S) sound-type targets (index in ``SOUND_TYPES``), -1 where unknown: the annotated
        ``sound_type``, else (``sound_from_kind``) "silence" / "verbal" for silence / verbal units."""
        m = seg["seg_mask"]
        y = torch.full(m.shape, -1, dtype=torch.long, device=m.device)
        kind = self.segment_kinds(batch, seg)
        if kind is not None and self.config.sound_from_kind:
            for k, t in SOUND_OF_KIND.items():
                y = torch.where(kind == k, torch.full_like(y, t), y)
        if "sound_type" in batch:
            given = batch["sound_type"][:, :m.shape[1]].to(y.device).long()
            y = torch.where(given >= 0, given, y)
        return torch.where(m, y, torch.full_like(y, -1))

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
    def frame_loss(self, seg: dict, target: torch.Tensor) -> torch.Tensor:
        """§III-B: "the image segment emotion label is used as the emotion classification target of
        all image frames in the segment, and the VGG is trained to recognize the single facial image
        emotion": cross-entropy of ``visual_head`` on every frame of every window with video, against
        its segment's ``target`` (B, S). 0 when the batch has no such frame."""
        on = seg["assign"] > 0                                   # (B, S, T)
        real = on.any(1) & seg["keep"]                           # windows of a segment, with video
        if not real.any():
            return seg["frames"].sum() * 0.0
        y = torch.gather(target, 1, on.float().argmax(1))        # (B, T): the label of the window's segment
        logits = self.visual_head(seg["frames"][real])           # (N, 16, C)
        return F.cross_entropy(logits.flatten(0, 1), y[real].repeat_interleave(logits.shape[1]))

    def audio_loss(self, batch: dict, seg: dict) -> torch.Tensor:
        """§III-B: "The verbal segments are used to train a CNN model with emotions as the target
        outputs": cross-entropy of the emotion CNN's head on the verbal segments (every segment
        when the batch has no ``unit_kind``) against ``segment_label_audio`` (else the clip label)."""
        m = seg["seg_mask"]
        kind = self.segment_kinds(batch, seg)
        use = m if kind is None else m & (kind == VERBAL)
        if not bool(use.any()):
            return seg["emotion"].sum() * 0.0
        target = self.segment_targets(batch, m, "segment_label_audio")
        return F.cross_entropy(self.audio_head(seg["emotion"])[use], target[use])

    def sound_loss(self, batch: dict, seg: dict) -> torch.Tensor | None:
        """§III-B: the sound-type CNN on every segment with a known sound type (``sound_targets``);
        ``None`` when there is none."""
        y = self.sound_targets(batch, seg)
        use = y >= 0
        if not bool(use.any()):
            return None
        return F.cross_entropy(self.sound_head(seg["sound"])[use], y[use])

    def _unimodal_loss(self, batch):
        seg = self.segment_features(batch)
        visual = self.segment_targets(batch, seg["seg_mask"], "segment_label_visual")
        loss = self.audio_loss(batch, seg) + self.frame_loss(seg, visual)
        sound = self.sound_loss(batch, seg)
        return loss if sound is None else loss + sound

    def ntn_target(self, batch: dict, seg: dict) -> torch.Tensor:
        """1 where the audio and visual segment labels agree, else 0 (§III-C): the annotated labels
        where a segment has both, else the unimodal classifiers' predicted labels."""
        ya = self.audio_head(seg["emotion"]).argmax(-1)
        yv = self.visual_head(seg["visual"]).argmax(-1)
        predicted = (ya == yv).float()
        if "segment_label_audio" in batch and "segment_label_visual" in batch:
            S = predicted.shape[1]
            la, lv = batch["segment_label_audio"][:, :S], batch["segment_label_visual"][:, :S]
            known = (la >= 0) & (lv >= 0)
            return torch.where(known, (la == lv).float(), predicted)
        return predicted

    def _ntn_loss(self, batch):
        with torch.no_grad():
            seg = self.segment_features(batch)
            target = self.ntn_target(batch, seg)
        m = seg["seg_mask"]
        return F.binary_cross_entropy_with_logits(self.ntn.logit(seg["emotion"], seg["visual"])[m], target[m])

    def pretrain(self, loader, device) -> dict:
        """Train the feature extractors (§III-B: the emotion CNN on the verbal segments, the
        sound-type CNN on the segments with a sound type, the VGG on every frame), then the NTN on
        the agreement target (§III-C), then freeze them; the trainer then trains the fusion LSTM."""
        c = self.config
        self.train()
        extractors = [self.emotion_cnn, self.audio_head, self.visual_hidden, self.visual_head]
        if self.vgg is not None:
            extractors.append(self.vgg)
        before = [p.detach().clone() for p in self.sound_cnn.parameters()]
        groups = self.param_groups(extractors + [self.sound_cnn, self.sound_head], c.pretrain_lr)
        hist = {"unimodal": fit(groups, self._unimodal_loss, loader, device, epochs=c.pretrain_epochs,
                                lr=c.pretrain_lr, phase="unimodal")}
        # the sound-type CNN learns here when segments have a sound-type target (``sound_targets``:
        # annotated, or silence / verbal units), and is then frozen with the other extractors;
        # without any it is trained with the fusion model
        if any(not torch.equal(a, p) for a, p in zip(before, self.sound_cnn.parameters())):
            extractors.append(self.sound_cnn)
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
MODE = "segment"  # clip mode with a segment for every prosodic unit, silences included (§III-A)
FEATURES = ("logmel", "crop_small")
# axis names of the attention maps the trainer plots (models.plots.attention_png)
ATTENTION = {"segment": dict(xlabel="segment (aclstm: NTN consistency score s, eq 1; feature: α)"),
             "segment_audio": dict(xlabel="segment (audio attention α)"),
             "segment_visual": dict(xlabel="segment (visual attention α)")}
