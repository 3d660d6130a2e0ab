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
  the CCC. "The DLSTM architecture ... is optimized using truncated backpropagation through time"
  (§3): the recurrences of every DLSTM carry their state across the whole sequence in the forward
  pass, but the gradient is cut every ``tbptt`` steps (windows): the hidden and cell states are
  detached at steps k·tbptt (``DLSTMNet``, ``AttentiveDLSTM``). The length is not given (Zhao et
  al. and Haifeng et al. [12, 3] are cited for the method); the default ``tbptt`` = 30 windows
  (≈ 10 s of voiced speech at the 34-frame hop) is a documented choice: BAUM-1 / eNTERFACE clips
  (a few seconds, ≤ 30 windows) get full backpropagation, RECOLA's 5 min sequences are cut into
  ~30 pieces. ``tbptt`` = 0 backpropagates through the whole sequence.
* **Pre-trained, frozen unimodal DLSTMs** (§3.1, fusion comparison): "two DLSTM networks are
  pre-trained separately on audio and video, and subsequently frozen before training the fusion
  mechanisms". With ``pretrain_unimodal`` the trainer's ``pretrain`` hook trains the audio DLSTM
  and the video DLSTM (with its embedding attention and, for crops, ``video_cnn``) each on its own
  outputs against the targets (the loss of :meth:`DLSTM.loss` on ``y_a`` / ``y_v``) for
  ``pretrain_epochs`` epochs, then freezes them; the trainer then trains the fusion (W_m, or the
  OLB / HLB weights) and, when ``early_fusion`` is on, the early-fusion DLSTM (§3.2; set
  ``early_fusion=False`` for the two-network comparison of §3.1 / Table 1). The bypass of the
  embedding attention (§3.1) counts the pre-training epochs, and the frozen video DLSTM keeps the
  input mode it ended its pre-training with. Off by default (§3.2's end-to-end model).

**The 13 embeddings.** In Lucas §3 the video embeddings are "activations from the last
convolutional layer of the VGGFace network" for every video frame (RECOLA, 25 fps), and the
attention window is 13 frames ≈ half a second. This store gives, for each 655 ms audio window,
its 16 aligned video frames (AVEF §2.1.2). A time step here is one window; its 13 attention
embeddings are those of the window's 13 central frames (≈ 0.5 s at 25 fps, as in the paper), and
V_t, the bypass input (and the video half of the early-fusion input), is the centre one of the 13.
The audio input is the window's VGGish embedding (``"vggish_window"``, 128-d; VGGish itself is
Lucas's audio embedding, 960 ms patches).

**The video embedding network (a documented choice).** VGGFace weights are not shipped, so by
default (``video_feature="crop_small"``) the per-frame embedding is computed here by a CNN
trained end to end with the DLSTMs (§3.2 trains "in an end-to-end fashion"; Lucas's VGGFace was
fixed): the VGG-16 conv stack of VGGFace (Parkhi et al. 2015; ``video_cnn``, widths 64 | 128 |
256 | 512 | 512, 13 conv 3×3, 5 max pools) on the 72×72 face crops of each of the 13 frames,
its last conv layer's ReLU activations averaged over the spatial grid (as the store's
``vggface`` ``conv5_3`` layer, ``features/vggface.py``): 512 values per frame (``video_dim``).
Crops arrive as uint8 (``models/data.py``; divided by 255 on the device) or in [0, 1]; windows without
usable video and padding windows are not computed (zero embeddings). The CNN is trained from
scratch (torchvision's VGG initialisation) with Adam at ``video_cnn_lr`` = 1e-4 (the DLSTMs'
0.01 of §3 is for recurrent layers on fixed embeddings: on a synthetic 4-class frame task, 72 px,
batches of 16, 60 steps, this stack with a linear classifier went from loss 1.39 to 0.00 at 1e-4
and blew up to 2.8e7, then stayed at chance, at 0.01). Alternatives: ``video_feature="vggface"``, the
per-frame VGGFace activations built into the shards when ``[VGGFace] weights`` is set
(``video/vggface``, Lucas's feature: 512-d at ``conv5_3``), and ``"descriptor"``, dlib's 128-d
ResNet face descriptor: an *identity* embedding computed every 5th frame, so a window's 13
central frames hold 3-6 distinct vectors (demo) against 13 distinct crops. ``video_dim`` is the
embedding size (``None``: the CNN's last width, 128 for the descriptor, 512 for VGGFace).

**Targets.** RECOLA has a label per 40 ms frame. With time-continuous labels in the shards
(issue 18 item 3; ``valence_t``/``arousal_t`` in the batch: each window's mean over its voiced
span, ``features/labels.py``) the loss is the MSE of the per-step outputs ``out["steps"]`` over
the steps in ``target_mask`` (Lucas §3: MSE, a prediction per time step). Without them (one
(valence, arousal) per clip) the per-step fused outputs are averaged over the clip's real
windows and ``out["pred"]`` (B, 2) = (valence, arousal) is trained with MSE. With ``task="classification"``
the same fusion runs over ``n_classes`` output dimensions and gives ``out["logits"]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.aclstm import EMBEDDING_DIMS, frames_through, vgg_stack, vgg_width, video_keep
from models.layers import GeneralScore, make_optimizer, masked_mean

FUSIONS = ("attention", "olb", "hlb")
VIDEO_FEATURES = ("crop_small", "vggface", "descriptor")
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")  # VGGFace's convs


@dataclass
class DLSTMConfig:
    n_classes: int = 2  # used when task == "classification"
    task: str = "regression"  # "regression" (valence, arousal) | "classification"
    audio_feature: str = "vggish_window"
    video_feature: str = "crop_small"  # "crop_small" (video_cnn on the crops) | "vggface" | "descriptor"
    audio_dim: int = 128
    video_dim: int | None = None  # None: video_cnn's last width (crops), else EMBEDDING_DIMS (128 / 512)
    video_cnn: tuple = VGG16  # per-frame CNN on the 72 px crops: VGGFace's conv stack, spatial mean
    video_cnn_lr: float = 1e-4  # Adam rate of video_cnn (a choice; the DLSTMs keep lr)
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
    batch_size: int = 16  # sequences; Lucas et al. give none (a documented choice)
    weight_decay: float = 0.0
    tbptt: int = 30  # truncated BPTT length in windows (§3; length not given: a choice); 0 = full BPTT
    pretrain_unimodal: bool = False  # §3.1: pre-train audio / video DLSTMs separately, freeze, then fuse
    pretrain_epochs: int = 10  # epochs of that pre-training (not given; --net-epochs sets it)

    @property
    def n_outputs(self) -> int:
        return 2 if self.task == "regression" else self.n_classes


def detach_state(state):
    """A recurrent state (a tensor or nested tuples of them) cut from the graph (truncated BPTT)."""
    if torch.is_tensor(state):
        return state.detach()
    return tuple(detach_state(s) for s in state)


class DLSTMNet(nn.Module):
    """Two LSTM layers (dropout between) + linear (Lucas §2.2): (B,T,D) → y (B,T,o), h (B,T,c).

    ``tbptt`` > 0: the sequence runs in pieces of ``tbptt`` steps, the state carried from one to
    the next detached (truncated backpropagation through time, Lucas §3); the forward values are
    those of one pass over the whole sequence."""

    def __init__(self, d_in: int, hidden: int, n_out: int, dropout: float, tbptt: int = 0):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, num_layers=2, dropout=dropout, batch_first=True)
        self.linear = nn.Linear(hidden, n_out)
        self.tbptt = tbptt

    def forward(self, x):
        k = self.tbptt if self.tbptt and self.tbptt > 0 else x.shape[1]
        hs, state = [], None
        for t0 in range(0, x.shape[1], max(k, 1)):
            h, state = self.lstm(x[:, t0:t0 + k], None if state is None else detach_state(state))
            hs.append(h)
        h = torch.cat(hs, 1) if len(hs) != 1 else hs[0]
        return self.linear(h), h


class AttentiveDLSTM(nn.Module):
    """The video DLSTM with embedding attention (Lucas §2.2 eq 1-2): at step t its input is
    Σ_s a_t(s) V_{t,s}, a_t = softmax_s(h_{t-1}ᵀ W_a V_{t,s}), h_{t-1} the top layer's state.

    ``forward(windows, bypass)``: ``windows`` (B, T, n, D) the n embeddings around each step;
    with ``bypass`` the input is the centre embedding V_t. Returns y (B,T,o), h (B,T,c) and the
    attention (B, T, n) (one-hot on the centre when bypassed). ``tbptt`` > 0 detaches both
    layers' states every ``tbptt`` steps (truncated BPTT, Lucas §3).
    """

    def __init__(self, d_in: int, hidden: int, n_out: int, dropout: float, tbptt: int = 0):
        super().__init__()
        self.hidden = hidden
        self.tbptt = tbptt
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
        if bypass:   # the central embedding only (§3.1), made once: one_hot reads its input (a sync)
            central = torch.zeros(B, n, dtype=windows.dtype, device=windows.device)
            central[:, n // 2] = 1
        for t in range(T):
            if self.tbptt and t and t % self.tbptt == 0:   # truncated BPTT (Lucas §3)
                s1, s2 = detach_state(s1), detach_state(s2)
            V = windows[:, t]
            if bypass:
                a = central
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
        if config.video_feature not in VIDEO_FEATURES:
            raise ValueError(f"DLSTMConfig.video_feature={config.video_feature!r}: use one of {VIDEO_FEATURES}")
        self.config = c = config
        o = c.n_outputs
        self.cnn = None
        if c.video_feature == "crop_small":
            if c.video_dim not in (None, vgg_width(c.video_cnn)):
                raise ValueError(f"DLSTMConfig.video_dim={c.video_dim}: the video CNN gives {vgg_width(c.video_cnn)} "
                                 f"values per frame (its last width); leave video_dim unset")
            self.cnn = nn.Sequential(vgg_stack(c.video_cnn), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if c.tbptt < 0:
            raise ValueError(f"DLSTMConfig.tbptt={c.tbptt}: a length in windows >= 1, or 0 for full BPTT")
        d_v = self.video_dim
        self.audio = DLSTMNet(c.audio_dim, c.audio_hidden, o, c.dropout, c.tbptt)
        self.video = AttentiveDLSTM(d_v, c.video_hidden, o, c.dropout, c.tbptt)
        hiddens = [c.audio_hidden, c.video_hidden]
        if c.early_fusion:
            self.early = DLSTMNet(c.audio_dim + d_v, c.early_hidden, o, c.dropout, c.tbptt)
            hiddens.append(c.early_hidden)
        n, cn = len(hiddens), sum(hiddens)
        if c.fusion == "attention":
            self.W_m = nn.Parameter(torch.randn(o, cn, n) / cn ** 0.5)  # eq 3
        elif c.fusion == "olb":
            self.W = nn.Parameter(torch.full((n, 1), 1.0 / n))  # eq 6
        else:
            self.W = nn.Linear(cn, o, bias=False)  # eq 7
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        # -1: not pre-trained; else the bypass state (0/1) the frozen video DLSTM was pre-trained into
        self.register_buffer("frozen_bypass", torch.full((), -1, dtype=torch.long))
        # host copies of the two buffers, so that a training step reads no device value (a sync on
        # a GPU); refreshed when a state_dict is loaded
        self._epoch, self._frozen_bypass = 0, -1
        self.register_load_state_dict_post_hook(_refresh_host_state)

    @property
    def video_dim(self) -> int:
        """Size of a frame's video embedding: the CNN's last width, or ``video_dim`` / ``EMBEDDING_DIMS``."""
        c = self.config
        if c.video_feature == "crop_small":
            return vgg_width(c.video_cnn)
        return c.video_dim if c.video_dim is not None else EMBEDDING_DIMS[c.video_feature]

    @property
    def features(self) -> tuple[str, ...]:
        return (self.config.audio_feature, self.config.video_feature)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The config's optimiser over the trainable parameters (trainer hook); the video CNN's
        parameters form a second group at ``video_cnn_lr``."""
        c = self.config
        cnn = {id(p) for p in self.cnn.parameters()} if self.cnn is not None else set()
        opt = make_optimizer([p for p in self.parameters() if id(p) not in cnn and p.requires_grad],
                             name=c.optimizer, lr=c.lr, weight_decay=c.weight_decay)
        trainable = [p for p in self.cnn.parameters() if p.requires_grad] if cnn else []
        if trainable:   # (frozen after pretrain_unimodal)
            opt.add_param_group({"params": trainable, "lr": c.video_cnn_lr})
        return opt

    def embeddings(self, batch: dict) -> torch.Tensor:
        """(B, T, n_embeddings, video_dim): the video embeddings of each window's central frames
        (the CNN's on the crops, else the stored ones)."""
        c = self.config
        v = batch[c.video_feature]  # crops (B, T, 3, F, H, W) or embeddings (B, T, F, D)
        axis = 3 if self.cnn is not None else 2
        n_frames = v.shape[axis]
        if n_frames < c.n_embeddings:
            raise ValueError(f"DLSTM: {c.video_feature} has {n_frames} frames per window, fewer than "
                             f"n_embeddings={c.n_embeddings}; lower DLSTMConfig.n_embeddings")
        central = v.narrow(axis, (n_frames - c.n_embeddings) // 2, c.n_embeddings)
        if self.cnn is not None:
            return frames_through(self.cnn, central, video_keep(batch))
        if v.shape[-1] != self.video_dim:
            raise ValueError(f"DLSTM: {c.video_feature} has {v.shape[-1]} values per frame, the config expects "
                             f"video_dim={self.video_dim}: set video_dim={v.shape[-1]}")
        return central

    @property
    def bypass(self) -> bool:
        """Embedding attention is bypassed for the first ``bypass_epochs`` epochs (§3.1)."""
        c = self.config
        if self._frozen_bypass >= 0:   # pre-trained and frozen: the input mode it learned (§3.1)
            return bool(self._frozen_bypass)
        return (not c.embedding_attention) or self._epoch < c.bypass_epochs

    def on_epoch_start(self, epoch: int) -> None:
        """Trainer hook; ``epoch`` counts from 0. Stored in a buffer, so a checkpoint remembers."""
        self._epoch = int(epoch)
        self.epoch.fill_(self._epoch)

    def forward(self, batch: dict) -> dict:
        c = self.config
        a = batch[c.audio_feature]  # (B, T, Da)
        mask = batch["mask"].to(torch.bool)
        windows = self.embeddings(batch)   # (B, T, n, Dv)
        y_a, h_a = self.audio(a)
        y_v, h_v, att = self.video(windows, self.bypass)
        ys, hs = [y_a, y_v], [h_a, h_v]
        if c.early_fusion:   # audio and the centre video embedding V_t, per step (§3.2)
            y_e, h_e = self.early(torch.cat([a, windows[:, :, c.n_embeddings // 2].to(a.dtype)], -1))
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
        return self.target_loss(out["steps"], batch)

    def target_loss(self, steps: torch.Tensor, batch: dict) -> torch.Tensor:
        """The training loss of per-step outputs ``steps`` (B, T, o): cross-entropy of their clip
        mean (classification), the MSE per step against ``valence_t``/``arousal_t`` when the batch
        has them, else the MSE of their clip mean against the clip's (valence, arousal)."""
        mask = batch["mask"].to(torch.bool)
        if self.config.task == "classification":
            return F.cross_entropy(masked_mean(steps, mask), batch["label"])
        if "valence" not in batch or "arousal" not in batch:
            raise KeyError("DLSTM regression needs 'valence' and 'arousal' in the batch: the corpus's "
                           "labels CSV must have valence,arousal columns (or use task='classification')")
        if "valence_t" in batch:   # time-continuous labels (issue 18 item 3): MSE per step (window), masked
            steps = steps.float()
            target = torch.stack([batch["valence_t"], batch["arousal_t"]], -1).to(steps.dtype)
            m = batch["target_mask"].to(torch.bool)
            err = torch.where(m.unsqueeze(-1), steps - target, 0)   # the MSE over the steps in m, 0 if none
            return err.square().sum() / (m.sum() * steps.shape[-1]).clamp_min(1)   # (no sync: m.any())
        pred = masked_mean(steps, mask)
        target = torch.stack([batch["valence"], batch["arousal"]], -1).to(pred.dtype)
        return F.mse_loss(pred, target)

    # --- §3.1: unimodal DLSTMs pre-trained separately, then frozen -----------------------------
    @property
    def pretrain(self):
        """The trainer's pre-training hook when ``pretrain_unimodal`` is on (else ``None``, so the
        trainer skips it): :meth:`pretrain_unimodal`."""
        return self.pretrain_unimodal if self.config.pretrain_unimodal else None

    def _audio_loss(self, batch: dict) -> torch.Tensor:
        y_a, _ = self.audio(batch[self.config.audio_feature])
        return self.target_loss(y_a, batch)

    def _video_loss(self, batch: dict) -> torch.Tensor:
        y_v, _, _ = self.video(self.embeddings(batch), self.bypass)
        return self.target_loss(y_v, batch)

    def pretrain_unimodal(self, loader, device) -> dict:
        """Lucas §3.1: train the audio DLSTM and the video DLSTM (embedding attention and, on
        crops, ``video_cnn`` included) separately, each on its own outputs against the targets,
        for ``pretrain_epochs`` epochs (Adam at ``lr``; the video CNN at ``video_cnn_lr``), then
        freeze them; the trainer then trains the fusion. The embedding attention is bypassed for
        the first ``bypass_epochs`` pre-training epochs (§3.1)."""
        from models.layers import fit

        c = self.config
        self.train()
        hist = {"audio": fit(self.audio.parameters(), self._audio_loss, loader, device,
                             epochs=c.pretrain_epochs, lr=c.lr)}
        groups = [{"params": list(self.video.parameters()), "lr": c.lr}]
        if self.cnn is not None:
            groups.append({"params": list(self.cnn.parameters()), "lr": c.video_cnn_lr})
        per_epoch, calls = max(len(loader), 1), [0]

        def video_loss(batch):   # the bypass follows the pre-training epoch (§3.1)
            self.on_epoch_start(calls[0] // per_epoch)
            calls[0] += 1
            return self._video_loss(batch)

        hist["video"] = fit(groups, video_loss, loader, device, epochs=c.pretrain_epochs, lr=c.lr)
        self._frozen_bypass = int(self.bypass)
        self.frozen_bypass.fill_(self._frozen_bypass)
        self.on_epoch_start(0)
        for mod in (self.audio, self.video, self.cnn):
            if mod is not None:
                mod.requires_grad_(False)
        self.zero_grad(set_to_none=True)
        return hist


def _refresh_host_state(model: DLSTM, _keys) -> None:
    """After ``load_state_dict``: the host copies of ``epoch`` and ``frozen_bypass`` (read once here)."""
    model._epoch, model._frozen_bypass = int(model.epoch), int(model.frozen_bypass)


def features(cfg: DLSTMConfig) -> tuple[str, ...]:
    """Feature names a configuration reads."""
    return (cfg.audio_feature, cfg.video_feature)


CONFIG = DLSTMConfig
MODEL = DLSTM
MODE = "clip"
FEATURES = ("vggish_window", "crop_small")
# axis names of the attention maps the trainer plots (models.plots.attention_png)
ATTENTION = {"embedding": dict(xlabel="video embedding s (eq 1-2)", ylabel="step (window)"),
             "fusion": dict(xlabel="DLSTM (audio, video, early)", ylabel="step (window)", panel="output")}
