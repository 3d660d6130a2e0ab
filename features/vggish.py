"""VGGish (Hershey et al., "CNN architectures for large-scale audio classification", ICASSP 2017):
the 128-d audio embedding of Lucas et al. §3 ("VGGish is used to extract audio features from a
960ms window", ``shared/papers/001``).

Input recipe (the published ``vggish_input`` / ``mel_features`` of tensorflow/models
research/audioset, reproduced here): 16 kHz mono audio in [−1, 1], **no pre-emphasis** (the
published model was trained on plain waveforms; the AVEF pre-emphasis of ``features.audio`` is
undone with ``features.embeddings.deemphasis``); 25 ms periodic-Hann frames (400 samples), 10 ms
hop (160), 512-point |rfft| magnitude (not power); 64 mel bands over 125-7500 Hz with the HTK
mel scale, triangles linear in mel, DC bin zero; ``log(mel + 0.01)``; 96-frame (0.96 s) patches
with a 0.96 s hop, incomplete patches dropped.

Architecture (``VGGish``): conv64-pool-conv128-pool-conv256×2-pool-conv512×2-pool (3×3 convs,
stride 1, padding 1, ReLU; 2×2 max pools) on a (1, 96, 64) patch → (512, 6, 4), flattened in
TensorFlow's (H, W, C) order → fc4096-fc4096-fc128, ReLU after each (as in the harritaylor/torchvggish
conversion): 72,141,184 parameters.

Weights file (``[VGGish] weights`` in workflows.cfg): a torch ``state_dict`` (.pt/.pth) with the
harritaylor/torchvggish key names (``vggish-10086976.pth``)::

    features.{0,3,6,8,11,13}.weight / .bias   conv layers (64,1,3,3) ... (512,512,3,3)
    embeddings.{0,2,4}.weight / .bias          fc (4096,12288), (4096,4096), (128,4096)

Post-processing (optional, ``[VGGish] pca_params``): the published ``vggish_pca_params.npz``
(arrays ``pca_eigen_vectors`` (128, 128) and ``pca_means`` (128,) or (128, 1)): PCA (with
whitening), clip to [−2, 2], 8-bit quantisation to 0..255, as the AudioSet release embeddings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from features.errors import ParameterError

SR = 16000
N_FRAMES, N_BANDS, EMBEDDING_SIZE = 96, 64, 128
WINDOW_S, HOP_S = 0.025, 0.010
FMIN, FMAX, LOG_OFFSET = 125.0, 7500.0, 0.01
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
KEYS_DOC = ("harritaylor/torchvggish state_dict: features.{0,3,6,8,11,13}.weight/.bias (convs 64, 128, "
            "256, 256, 512, 512 of 3x3) and embeddings.{0,2,4}.weight/.bias (fc 12288->4096->4096->128)")


def hertz_to_mel(f):
    """HTK mel scale, 1127 · ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_matrix(*, sr: int = SR, n_fft: int = 512, n_mels: int = N_BANDS, fmin: float = FMIN,
               fmax: float = FMAX) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) weights: triangles linear on the HTK mel scale between
    n_mels + 2 equally spaced mel edges over [fmin, fmax], DC row zero (``mel_features``)."""
    if not 0.0 <= fmin < fmax <= sr / 2:
        raise ParameterError(f"need 0 <= fmin < fmax <= sr/2, got fmin={fmin}, fmax={fmax}, sr={sr}")
    bins_mel = hertz_to_mel(np.linspace(0.0, sr / 2, n_fft // 2 + 1))
    edges = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), n_mels + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    w = np.maximum(0.0, np.minimum((bins_mel[:, None] - lo) / (mid - lo), (hi - bins_mel[:, None]) / (hi - mid)))
    w[0, :] = 0.0
    return w


def log_mel(*, y: np.ndarray, sr: int = SR) -> np.ndarray:
    """VGGish log-mel frames of a 16 kHz signal.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float, mono, no pre-emphasis
    sr : int, must be 16000 (resample first: ``features.audio.resample``)

    Returns
    -------
    np.ndarray, shape (n_frames, 64), float32: log(mel + 0.01); frame k covers samples
    [160 k, 160 k + 400); n_frames = 1 + (n_samples − 400) // 160, 0 when shorter than 25 ms
    """
    if sr != SR:
        raise ParameterError(f"VGGish needs 16 kHz audio, got sr={sr} (resample first)")
    win, hop = int(round(sr * WINDOW_S)), int(round(sr * HOP_S))
    n_fft = 2 ** int(np.ceil(np.log2(win)))
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ParameterError(f"y must be mono (n_samples,), got shape {y.shape}")
    if len(y) < win:
        return np.zeros((0, N_BANDS), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(y, win)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * window, n_fft))
    return np.log(spec @ mel_matrix(sr=sr, n_fft=n_fft) + LOG_OFFSET).astype(np.float32)


def patches(mel: np.ndarray) -> np.ndarray:
    """(n_patches, 96, 64) non-overlapping 0.96 s patches (the ``vggish_input`` framing, last
    incomplete patch dropped). Patch p starts at p · 0.96 s; its centre is at p · 0.96 + 0.4875 s (frames span 95 · 10 ms + 25 ms)."""
    n = max(0, 1 + (len(mel) - N_FRAMES) // N_FRAMES) if len(mel) >= N_FRAMES else 0
    return np.ascontiguousarray(mel[: n * N_FRAMES].reshape(n, N_FRAMES, mel.shape[1]))


def patch_centers(n_patches: int) -> np.ndarray:
    """Centre time (s) of each patch of ``patches``: start + (95 · 10 ms + 25 ms) / 2."""
    return np.arange(n_patches) * N_FRAMES * HOP_S + ((N_FRAMES - 1) * HOP_S + WINDOW_S) / 2


def centered_patches(mel: np.ndarray, *, t_center: np.ndarray) -> np.ndarray:
    """One 0.96 s patch centred on each time in ``t_center`` (s): for a 655 ms window of
    ``features.segments`` (centre (t_begin + t_end) / 2) the patch (975 ms of audio) reaches 160 ms
    beyond each side. The first frame is round((t − 0.4875) / 0.01); frames outside the clip are filled with
    log(0 + 0.01), the log-mel of digital silence (as if the audio were zero-padded).

    Returns (len(t_center), 96, 64) float32."""
    t_center = np.asarray(t_center, dtype=np.float64).reshape(-1)
    half = ((N_FRAMES - 1) * HOP_S + WINDOW_S) / 2
    start = np.round((t_center - half) / HOP_S).astype(np.int64)
    idx = start[:, None] + np.arange(N_FRAMES)
    out = np.full((len(t_center), N_FRAMES, mel.shape[1]), np.log(LOG_OFFSET), np.float32)
    ok = (idx >= 0) & (idx < len(mel))
    out[ok] = mel[idx[ok]]
    return out


@dataclass
class VGGishConfig:
    """The published sizes (Hershey et al. 2017, configuration "A" of VGG adapted to 96×64)."""
    channels: tuple = (64, 128, 256, 256, 512, 512)
    pools_after: tuple = (0, 1, 3, 5)   # conv indices followed by a 2×2 max pool
    fc: tuple = (4096, 4096, 128)
    input_shape: tuple = (N_FRAMES, N_BANDS)


class VGGish(nn.Module):
    """VGGish; ``forward(x)``: (B, 96, 64) or (B, 1, 96, 64) log-mel patches -> (B, 128)."""

    def __init__(self, config: VGGishConfig | None = None):
        super().__init__()
        self.config = c = config or VGGishConfig()
        layers, cin = [], 1
        for i, cout in enumerate(c.channels):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            if i in c.pools_after:
                layers.append(nn.MaxPool2d(2, 2))
            cin = cout
        self.features = nn.Sequential(*layers)
        h, w = (s // 2 ** len(c.pools_after) for s in c.input_shape)
        fcs, nin = [], cin * h * w
        for nout in c.fc:
            fcs += [nn.Linear(nin, nout), nn.ReLU(inplace=True)]
            nin = nout
        self.embeddings = nn.Sequential(*fcs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.features(x)                          # (B, C, H, W)
        x = x.permute(0, 2, 3, 1).flatten(1)          # TensorFlow's (H, W, C) flatten order
        return self.embeddings(x)


def load_vggish(path: str | os.PathLike, *, config: VGGishConfig | None = None):
    """VGGish with the weights of ``path`` (torchvggish key names, see the module docstring),
    in eval mode on the CPU. A file that does not fit is a ``ParameterError`` naming the key."""
    from features.embeddings import check_state_dict, load_state_dict

    model = VGGish(config)
    check_state_dict(model, load_state_dict(path), path=os.fspath(path), keys_doc=KEYS_DOC)
    return model.eval()


def load_pca_params(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(pca_eigen_vectors (128, 128), pca_means (128,)) of a ``vggish_pca_params.npz`` (no pickle)."""
    with np.load(os.fspath(path), allow_pickle=False) as z:
        missing = {"pca_eigen_vectors", "pca_means"} - set(z.files)
        if missing:
            raise ParameterError(f"{os.fspath(path)}: missing arrays {sorted(missing)} (the published "
                                 f"vggish_pca_params.npz has pca_eigen_vectors and pca_means)")
        vectors, means = z["pca_eigen_vectors"].astype(np.float64), z["pca_means"].astype(np.float64).reshape(-1)
    if vectors.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.shape != (EMBEDDING_SIZE,):
        raise ParameterError(f"{os.fspath(path)}: pca_eigen_vectors must be (128, 128) and pca_means (128,), "
                             f"got {vectors.shape} and {means.shape}")
    return vectors, means


def postprocess(embeddings: np.ndarray, *, pca_eigen_vectors: np.ndarray, pca_means: np.ndarray) -> np.ndarray:
    """The AudioSet release post-processing: (E − means) · Vᵀ, clipped to [−2, 2], quantised to
    round((x + 2) · 255 / 4) ∈ {0..255}. (n, 128) float -> (n, 128) uint8."""
    e = np.asarray(embeddings, dtype=np.float64).reshape(-1, EMBEDDING_SIZE)
    pca = (e - pca_means.reshape(1, -1)) @ pca_eigen_vectors.T
    clipped = np.clip(pca, QUANTIZE_MIN, QUANTIZE_MAX)
    return np.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN))).astype(np.uint8)
