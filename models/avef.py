"""AVEF: audio-visual emotion fusion (Ma et al., paper 004, §2.2), window mode.

- audio-net (§2.2.1): AlexNet (Krizhevsky et al.), 5 conv + 3 fc, pool1/pool2/pool5, on the
  64×64×3 log-mel image ``a`` (eq 2.1-2.2), resized bilinearly to ``audio_size`` = 227 (AlexNet's
  input; the paper keeps the architecture, as Zhang et al. [33] who resize to 227); fc8 has C units.
- visual-net (§2.2.2): C3D (Tran et al.), conv1a-conv5b, pool1-pool5, fc6-fc8, on the 16 face
  crops ``v`` of the window (173×173 resized bilinearly to 112×112, "resized ... to suit
  visual-network", §2.1.2).
- segment fusion (§2.2.3): a DBN 8192-4096-2048-C on the fc7 features [f_audio, f_visual] (1:1),
  pre-trained greedily layer by layer as RBMs with CD-1 (Hinton et al.), then trained supervised
  together with both networks (cross-entropy, eq 2.5-2.6).
- video fusion (§2.2.4): the DBN's last hidden layer (2048) averaged over a clip's windows, then a
  multi-class SVM with a polynomial kernel (libsvm through scikit-learn's ``SVC``).
- labels (§4.1, Table 2): ``emotion_model`` "discrete" (the corpus's classes) or the binary
  "arousal" (low: disgust, sadness / high: anger, happiness, fear, surprise) and "valence"
  (negative: anger, fear, disgust, sadness / positive: happiness, surprise).
- training (Table 3): SGD, momentum 0.9, learning rate 0.001, dropout 0.3, batch 30 for the
  separate networks and 10 for the whole model, 500 epochs.

Decisions the paper leaves open: the first RBM has Gaussian visible units (unit variance; the fc7
features are real-valued, so they are centred and scaled with the pre-training statistics, kept
as buffers), the second Bernoulli units (Hinton, "A practical guide to training RBMs", 2010, §13.2);
the CD-1 statistics use hidden probabilities and a sampled hidden state for the reconstruction
(ibid. §3). Transfer learning (§2.2: initialise the three networks on other corpora, "then keep
the shallow layers of each network and train the deep layers from scratch") is the trainer's
``--init CHECKPOINT``: it copies the layers named by :data:`SHALLOW` and leaves the rest as
initialised. The paper does not say where "shallow" ends; here it is the convolutional layers of
both CNNs (AlexNet conv1-conv5, C3D conv1a-conv5b: the generic filters, Yosinski et al., "How
transferable are features in deep neural networks?", 2014) and the DBN's first RBM (8192-4096);
fc6-fc8 of both CNNs, the second RBM (4096-2048), the softmax layer and the DBN's input statistics
start afresh (``--init-layers all`` copies every matching tensor instead). Without the published pre-trained
weights the two CNNs start from He initialisation (He et al., 2015), which trains on small data where
PyTorch's default initialisation stalls on a plateau for many epochs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import as_images

# Table 2: discrete emotion -> binary arousal / valence
TABLE2 = {
    "arousal": {"classes": ("low", "high"),
                "map": {"disgust": 0, "sadness": 0, "anger": 1, "happiness": 1, "fear": 1, "surprise": 1}},
    "valence": {"classes": ("negative", "positive"),
                "map": {"anger": 0, "fear": 0, "disgust": 0, "sadness": 0, "happiness": 1, "surprise": 1}},
}


@dataclass
class AVEFConfig:
    n_classes: int = 6                                   # C (§2.2.1): six discrete emotions
    emotion_model: str = "discrete"                      # "discrete" | "arousal" | "valence" (Table 2)
    audio_size: int = 227                                # AlexNet input side (pixels)
    audio_channels: tuple = (96, 256, 384, 384, 256)     # conv1-conv5
    visual_size: int = 112                               # C3D input side (pixels)
    visual_frames: int = 16                              # §2.1.2
    visual_channels: tuple = (64, 128, 256, 256, 512, 512, 512, 512)  # conv1a, 2a, 3a, 3b, 4a, 4b, 5a, 5b
    small_crops: bool = False                            # use the 72 px crops instead of 173 px
    channels_last: bool = False                          # C3D in channels-last (NDHWC) memory: the same
    #                                                      arithmetic; cuDNN's bf16 tensor-core kernels want it
    fc: int = 4096                                       # fc6 = fc7 of both networks; DBN input 2·fc = 8192
    dbn_hidden: tuple = (4096, 2048)                     # §2.2.3
    dropout: float = 0.3                                 # Table 3
    lr: float = 0.001                                    # Table 3
    momentum: float = 0.9                                # Table 3
    batch_size: int = 10                                 # Table 3, the whole model
    epochs: int = 500                                    # Table 3
    net_epochs: int = 500                                # Table 3: audio- and visual-net trained separately first
    net_batch_size: int = 30                             # Table 3
    rbm_epochs: int = 10                                 # greedy CD-1 pre-training per RBM
    rbm_lr: float = 0.01
    rbm_batch_size: int = 10
    svm_degree: int = 3                                  # polynomial kernel, libsvm's defaults (§3: "the
    svm_coef0: float = 0.0                               # libsvm toolkit [45] using polynomial kernel"):
    svm_C: float = 1.0                                   # (γ·uᵀv + coef0)^degree, C = 1,
    svm_gamma: float | str = "auto"                      # γ = 1 / n_features (scikit-learn's "auto")


def _out(size: int, k: int, s: int, p: int = 0) -> int:
    return (size + 2 * p - k) // s + 1


class AudioNet(nn.Module):
    """AlexNet (§2.2.1) on (B, 3, 64, 64) log-mel images; ``forward`` gives fc7 (B, fc)."""

    def __init__(self, cfg: AVEFConfig):
        super().__init__()
        c1, c2, c3, c4, c5 = cfg.audio_channels
        lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)  # noqa: E731
        self.size = cfg.audio_size
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, stride=4), nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),     # conv1, pool1
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),    # conv2, pool2
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),                              # conv3
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),                              # conv4
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))          # conv5, pool5
        s = _out(_out(_out(_out(cfg.audio_size, 11, 4), 3, 2), 3, 2), 3, 2)
        if s < 1:
            raise ValueError(f"audio_size {cfg.audio_size} is too small for AlexNet (needs >= 67)")
        self.fc6 = nn.Linear(c5 * s * s, cfg.fc)
        self.fc7 = nn.Linear(cfg.fc, cfg.fc)
        self.fc8 = nn.Linear(cfg.fc, cfg.n_classes)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.shape[-1] != self.size or a.shape[-2] != self.size:
            a = F.interpolate(a, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = self.features(a).flatten(1)
        x = self.drop(F.relu(self.fc6(x)))
        return self.drop(F.relu(self.fc7(x)))


class VisualNet(nn.Module):
    """C3D (§2.2.2) on (B, 3, 16, H, W) face crops in [0, 1]; ``forward`` gives fc7 (B, fc)."""

    def __init__(self, cfg: AVEFConfig):
        super().__init__()
        c = cfg.visual_channels
        conv = lambda i, o: [nn.Conv3d(i, o, 3, padding=1), nn.ReLU(inplace=True)]  # noqa: E731
        self.size = cfg.visual_size
        self.features = nn.Sequential(
            *conv(3, c[0]), nn.MaxPool3d((1, 2, 2), (1, 2, 2)),                      # conv1a, pool1
            *conv(c[0], c[1]), nn.MaxPool3d(2, 2),                                   # conv2a, pool2
            *conv(c[1], c[2]), *conv(c[2], c[3]), nn.MaxPool3d(2, 2),                # conv3a/b, pool3
            *conv(c[3], c[4]), *conv(c[4], c[5]), nn.MaxPool3d(2, 2),                # conv4a/b, pool4
            *conv(c[5], c[6]), *conv(c[6], c[7]), nn.MaxPool3d(2, 2, padding=(0, 1, 1)))  # conv5a/b, pool5
        t, s = cfg.visual_frames, cfg.visual_size // 2
        for _ in range(3):
            t, s = t // 2, s // 2
        t, s = t // 2, s // 2 + 1
        if t < 1 or s < 1:
            raise ValueError(f"visual input {cfg.visual_frames}x{cfg.visual_size} is too small for C3D")
        self.fc6 = nn.Linear(c[7] * t * s * s, cfg.fc)
        self.fc7 = nn.Linear(cfg.fc, cfg.fc)
        self.fc8 = nn.Linear(cfg.fc, cfg.n_classes)
        self.drop = nn.Dropout(cfg.dropout)
        self.channels_last = cfg.channels_last
        if cfg.channels_last:
            self.features.to(memory_format=torch.channels_last_3d)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        v = as_images(v)   # uint8 crops (models/data.py): / 255 here, on the device
        if v.shape[-1] != self.size or v.shape[-2] != self.size:
            B, C, T, H, W = v.shape
            v = F.interpolate(v.transpose(1, 2).reshape(B * T, C, H, W), size=(self.size, self.size),
                              mode="bilinear", align_corners=False)
            v = v.reshape(B, T, C, self.size, self.size).transpose(1, 2)
        if self.channels_last:
            v = v.contiguous(memory_format=torch.channels_last_3d)
        x = self.features(v).flatten(1)
        x = self.drop(F.relu(self.fc6(x)))
        return self.drop(F.relu(self.fc7(x)))


class RBM(nn.Module):
    """A restricted Boltzmann machine: p(h=1|v) = σ(vW + c); p(v|h) = σ(hWᵀ + b) (Bernoulli) or
    N(hWᵀ + b, 1) (``gaussian`` visible units)."""

    def __init__(self, n_visible: int, n_hidden: int, *, gaussian: bool = False):
        super().__init__()
        # N(0, 0.01²) in Hinton's guide (§8) for ~10⁴ visible units; 1/√n_visible is the same there
        # (0.011 for 8192) and keeps the hidden input at unit scale for the narrow test widths
        self.W = nn.Parameter(torch.randn(n_visible, n_hidden) / n_visible ** 0.5)
        self.b = nn.Parameter(torch.zeros(n_visible))   # visible bias
        self.c = nn.Parameter(torch.zeros(n_hidden))    # hidden bias
        self.gaussian = gaussian

    def hidden(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v @ self.W + self.c)

    def visible(self, h: torch.Tensor) -> torch.Tensor:
        x = h @ self.W.T + self.b
        return x if self.gaussian else torch.sigmoid(x)

    @torch.no_grad()
    def cd1(self, v0: torch.Tensor, *, lr: float, u: torch.Tensor | None = None) -> torch.Tensor:
        """One contrastive-divergence step (CD-1, Hinton 2002); returns the reconstruction MSE (a 0-d
        tensor on the device: the caller reads it when it needs it, not every step).

        ph0 = σ(v0 W + c); h0 = [u < ph0] (u uniform); v1 = E[v | h0]; ph1 = σ(v1 W + c);
        W += lr (v0ᵀ ph0 − v1ᵀ ph1) / n; b += lr mean(v0 − v1); c += lr mean(ph0 − ph1).
        """
        ph0 = self.hidden(v0)
        u = torch.rand_like(ph0) if u is None else u
        h0 = (u < ph0).to(v0.dtype)
        v1 = self.visible(h0)
        ph1 = self.hidden(v1)
        n = v0.shape[0]
        self.W += lr * (v0.T @ ph0 - v1.T @ ph1) / n
        self.b += lr * (v0 - v1).mean(0)
        self.c += lr * (ph0 - ph1).mean(0)
        return ((v0 - v1) ** 2).mean()


class DBN(nn.Module):
    """8192-4096-2048-C (§2.2.3): stacked RBMs (sigmoid units) and a softmax output layer."""

    def __init__(self, cfg: AVEFConfig):
        super().__init__()
        sizes = (2 * cfg.fc, *cfg.dbn_hidden)
        self.rbms = nn.ModuleList(RBM(a, b, gaussian=i == 0) for i, (a, b) in enumerate(zip(sizes, sizes[1:])))
        self.out = nn.Linear(sizes[-1], cfg.n_classes)
        self.register_buffer("in_mean", torch.zeros(sizes[0]))
        self.register_buffer("in_std", torch.ones(sizes[0]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = (x - self.in_mean) / self.in_std
        for rbm in self.rbms:
            h = rbm.hidden(h)
        return h, self.out(h)


class AVEF(nn.Module):
    def __init__(self, cfg: AVEFConfig):
        super().__init__()
        if cfg.emotion_model not in ("discrete", *TABLE2):
            raise ValueError(f"emotion_model must be discrete, arousal or valence, got {cfg.emotion_model!r}")
        self.cfg = cfg
        self.audio, self.visual, self.dbn = AudioNet(cfg), VisualNet(cfg), DBN(cfg)
        for m in [*self.audio.modules(), *self.visual.modules()]:  # He init for the ReLU networks
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def crop_key(self) -> str:
        return "crop_small" if self.cfg.small_crops else "crop"

    def fc7(self, batch: dict) -> torch.Tensor:
        """[f_audio, f_visual] (B, 2·fc), the DBN input (§2.2.3)."""
        return torch.cat([self.audio(batch["logmel"]), self.visual(batch[self.crop_key])], dim=1)

    def forward(self, batch: dict) -> dict:
        h, logits = self.dbn(self.fc7(batch))
        return {"logits": logits, "embedding": h}

    def loss(self, out: dict, batch: dict) -> torch.Tensor:
        return F.cross_entropy(out["logits"].float(), batch["label"])     # eq 2.5-2.6

    def configure_optimizer(self):
        return torch.optim.SGD(self.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum)  # Table 3

    # -- hooks the trainer calls ------------------------------------------------------------------
    def pretrain(self, loader, device) -> dict:
        """§4.2: audio-net and visual-net trained separately (their own fc8, eq 2.3-2.6), then the
        DBN pre-trained greedily, one RBM at a time with CD-1, on their fc7 features. One progress
        line per epoch of each phase (``audio_net``, ``visual_net``: loss and training accuracy;
        ``rbm-1``, ``rbm-2``: reconstruction error); ``net_epochs`` and ``rbm_epochs`` bound them
        (``python -m models.train --net-epochs N`` sets both)."""
        from models.progress import Progress

        log = {"audio_net": [], "visual_net": [], "rbm": []}
        n_items = len(loader.dataset) if hasattr(loader, "dataset") else None   # (a DataLoader's)
        for name, net, key in (("audio_net", self.audio, "logmel"), ("visual_net", self.visual, self.crop_key)):
            opt = torch.optim.SGD(net.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum)
            net.train()
            progress = Progress(name, self.cfg.net_epochs, n_items, metric="accuracy")
            for _ in range(self.cfg.net_epochs):
                total, n, right = torch.zeros((), dtype=torch.float64, device=device), 0, 0
                for batch in loader:   # loss and hits stay on the device until the epoch ends (no sync per step)
                    x, y = batch[key].to(device, non_blocking=True), batch["label"].to(device)
                    logits = net.fc8(net(x))
                    loss = F.cross_entropy(logits, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total, n = total + loss.detach() * len(y), n + len(y)
                    right = right + (logits.detach().argmax(1) == y).sum()
                log[name].append(float(total) / max(n, 1))
                progress.epoch(loss=log[name][-1], metric=int(right) / max(n, 1), samples=n)
        self.eval()
        progress = Progress("dbn_input", 1, n_items)
        with torch.no_grad():
            x = torch.cat([self.fc7({k: v.to(device) for k, v in b.items()}).float().cpu() for b in loader])
        progress.epoch(samples=len(x))
        self.dbn.in_mean.copy_(x.mean(0))
        # one scale for all units (the root-mean-square of the per-unit stds): a per-unit scale would
        # blow rarely active ReLU units up and saturate the sigmoid layers above them
        self.dbn.in_std.fill_(float(x.var(0).mean().sqrt()) + 1e-6)
        h = ((x - self.dbn.in_mean.cpu()) / self.dbn.in_std.cpu()).to(device)
        g = torch.Generator().manual_seed(0)
        for layer, rbm in enumerate(self.dbn.rbms, 1):
            errs = []
            progress = Progress(f"rbm-{layer}", self.cfg.rbm_epochs, len(h))
            for _ in range(self.cfg.rbm_epochs):
                perm = torch.randperm(len(h), generator=g).to(h.device)
                err = [rbm.cd1(h[perm[i:i + self.cfg.rbm_batch_size]], lr=self.cfg.rbm_lr)
                       for i in range(0, len(h), self.cfg.rbm_batch_size)]
                errs.append(float(torch.stack(err).mean()))   # one read per epoch
                progress.epoch(loss=errs[-1])
            log["rbm"].append(errs)
            with torch.no_grad():
                h = rbm.hidden(h)
        self.train()
        return log

    def clip_classifier(self):
        """§2.2.4: the polynomial-kernel SVM on the clip-averaged last hidden layer of the DBN."""
        from sklearn.svm import SVC

        return SVC(kernel="poly", degree=self.cfg.svm_degree, coef0=self.cfg.svm_coef0, C=self.cfg.svm_C,
                   gamma=self.cfg.svm_gamma)


def label_map(cfg: AVEFConfig, label_set) -> tuple[list, dict]:
    """The classes and {corpus label: class index} of ``cfg.emotion_model`` (§4.1, Table 2);
    corpus labels outside Table 2 (e.g. neutral) are left out of the binary models."""
    if cfg.emotion_model == "discrete":
        return list(label_set), {l: i for i, l in enumerate(label_set)}
    t = TABLE2[cfg.emotion_model]
    return list(t["classes"]), {l: t["map"][l] for l in label_set if l in t["map"]}


def features(cfg: AVEFConfig) -> tuple:
    return ("logmel", "crop_small" if cfg.small_crops else "crop")


CONFIG, MODEL, MODE, FEATURES = AVEFConfig, AVEF, "window", ("logmel", "crop")
#: the layers ``--init`` keeps (parameter-name prefixes): the shallow layers of each network (§2.2)
SHALLOW = ("audio.features.", "visual.features.", "dbn.rbms.0.")
#: model selection (Table 3): a fixed number of epochs, the last one kept, no early stopping
SELECT, PATIENCE = "last", None
