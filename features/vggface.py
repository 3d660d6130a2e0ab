"""VGGFace: VGG-16 trained on faces (Parkhi, Vedaldi & Zisserman, "Deep face recognition", BMVC
2015) and the VGG-19 face network of Hsu & Wu §III-B, Table 2 ("VGG-19 model, input size =
72*72"; the hidden vectors of a segment's frames are averaged, ``shared/papers/000``).

Lucas et al. §3 (``shared/papers/001``) use "activations from the last convolutional layer of the
VGGFace network" as frame-level features. ``layer`` picks what is returned per face image:

* ``"conv5_3"`` (``conv5_4`` for VGG-19): the last convolution after its ReLU, averaged over
  its spatial grid (14×14 at 224 px): 512 values. The full map (100,352 values at 224 px) is not
  stored per frame; the average is the usual frame descriptor of that layer.
* ``"pool5"``: the 5th max pool, flattened (C, H, W): 25,088 values at 224 px, 2,048 at 72 px.
* ``"fc6"`` / ``"fc7"``: the hidden fully connected layers after their ReLU: 4,096 values.

Input: RGB face crops (``features.face.crop``), resized bilinearly to ``image_size`` (224 for
VGG-Face, 72 for Hsu & Wu), in 0-255 minus the VGG-Face mean (129.186, 104.762, 93.594), std 1.

Weights (``[VGGFace] weights``): a torch ``state_dict`` with the key names of the common
``vgg_face_dag`` conversion of the published MatConvNet model (``vgg_face_dag.pth``)::

    conv{b}_{i}.weight / .bias     b = 1..5, i = 1..(2, 2, 3, 3, 3) for VGG-16, (2, 2, 4, 4, 4) for VGG-19
    fc6.weight (4096, 512·s·s), fc7.weight (4096, 4096), fc8.weight (n_classes, 4096), + .bias

with s = image_size // 32 (7 at 224 px; the published fc8 has 2,622 identities). torchvision
style keys (``features.N.*``, ``classifier.{0,3,6}.*``) are renamed to these. The widths are read
from the file, so a network trained at another size loads too; the file decides, not a config.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from features.errors import ParameterError

MEAN_RGB = (129.186279296875, 104.76238250732422, 93.59396362304688)  # vgg_face_dag meta
BLOCKS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
LAYERS = ("conv5", "pool5", "fc6", "fc7")
KEYS_DOC = ("vgg_face_dag state_dict: conv{block}_{i}.weight/.bias (blocks of 2, 2, 3, 3, 3 convs for "
            "VGG-16 or 2, 2, 4, 4, 4 for VGG-19), fc6/fc7/fc8.weight/.bias")


@dataclass
class VGGFaceConfig:
    """VGG-16 face network of Parkhi et al. 2015 by default (224 px, 2,622 identities)."""
    depth: int = 16
    image_size: int = 224
    widths: tuple = (64, 128, 256, 512, 512)
    fc: tuple = (4096, 4096)
    n_classes: int = 2622


def layer_name(layer: str, depth: int) -> str:
    """``"conv5_3"`` / ``"conv5_4"`` / ``"conv5"`` → the last conv of the network's block 5."""
    if layer.startswith("conv5"):
        return "conv5"
    if layer not in LAYERS:
        raise ParameterError(f"layer must be conv5_3 (VGG-16) / conv5_4 (VGG-19), pool5, fc6 or fc7, got {layer!r}")
    return layer


class VGGFace(nn.Module):
    """VGG-16/19 with ``vgg_face_dag`` parameter names; ``forward(x, layer="fc7")`` on
    (B, 3, image_size, image_size) mean-subtracted RGB returns the chosen layer (module docstring)."""

    def __init__(self, config: VGGFaceConfig | None = None):
        super().__init__()
        self.config = c = config or VGGFaceConfig()
        if c.depth not in BLOCKS or c.image_size < 32:
            raise ParameterError(f"depth must be 16 or 19 and image_size >= 32, got {c.depth}, {c.image_size}")
        cin = 3
        for b, (n, width) in enumerate(zip(BLOCKS[c.depth], c.widths), start=1):
            for i in range(1, n + 1):
                setattr(self, f"conv{b}_{i}", nn.Conv2d(cin, width, 3, padding=1))
                cin = width
        s = c.image_size // 32
        self.fc6 = nn.Linear(cin * s * s, c.fc[0])
        self.fc7 = nn.Linear(c.fc[0], c.fc[1])
        self.fc8 = nn.Linear(c.fc[1], c.n_classes)
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, layer: str = "fc8") -> torch.Tensor:
        relu, pool = nn.functional.relu, nn.functional.max_pool2d
        for b, n in enumerate(BLOCKS[self.config.depth], start=1):
            for i in range(1, n + 1):
                x = relu(getattr(self, f"conv{b}_{i}")(x))
            if b == 5 and layer.startswith("conv5"):
                return x.mean(dim=(2, 3))
            x = pool(x, 2, 2)
        x = x.flatten(1)
        if layer == "pool5":
            return x
        x = relu(self.fc6(x))
        if layer == "fc6":
            return x
        x = relu(self.fc7(x))
        return x if layer == "fc7" else self.fc8(x)

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB crops → (B, 3, S, S) float, bilinear resize, mean subtracted."""
        x = crops.permute(0, 3, 1, 2).float()
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x - self.mean


def _rename_torchvision(state: dict, depth: int) -> dict:
    """torchvision VGG keys (features.N, classifier.0/3/6) → vgg_face_dag names."""
    convs = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
    names = [f"conv{b}_{i}" for b, n in enumerate(BLOCKS[depth], start=1) for i in range(1, n + 1)]
    if len(convs) != len(names):
        raise ParameterError(f"torchvision-style file has {len(convs)} conv layers, VGG-{depth} has {len(names)}")
    out = {}
    for idx, name in zip(convs, names):
        for p in ("weight", "bias"):
            out[f"{name}.{p}"] = state[f"features.{idx}.{p}"]
    for idx, name in zip((0, 3, 6), ("fc6", "fc7", "fc8")):
        for p in ("weight", "bias"):
            if f"classifier.{idx}.{p}" in state:
                out[f"{name}.{p}"] = state[f"classifier.{idx}.{p}"]
    return out


def config_from_state(state: dict, *, image_size: int) -> VGGFaceConfig:
    """The architecture a state_dict describes: depth (conv5_4 present → 19), conv widths and fc
    sizes from the tensor shapes, ``image_size`` given (it fixes fc6's input, checked on load)."""
    depth = 19 if "conv5_4.weight" in state else 16
    try:
        widths = tuple(int(state[f"conv{b}_1.weight"].shape[0]) for b in range(1, 6))
        fc = (int(state["fc6.weight"].shape[0]), int(state["fc7.weight"].shape[0]))
        n_classes = int(state["fc8.weight"].shape[0])
    except KeyError as err:
        raise ParameterError(f"weights lack {err.args[0]!r}; expected {KEYS_DOC}") from None
    return VGGFaceConfig(depth=depth, image_size=image_size, widths=widths, fc=fc, n_classes=n_classes)


def load_vggface(path: str | os.PathLike, *, image_size: int = 224) -> VGGFace:
    """VGGFace with the weights of ``path`` (``vgg_face_dag`` or torchvision key names), eval mode."""
    from features.embeddings import check_state_dict, load_state_dict

    state = load_state_dict(path)
    if any(k.startswith("features.") for k in state):
        state = _rename_torchvision(state, 19 if len([k for k in state if k.startswith("features.")]) == 32 else 16)
    model = VGGFace(config_from_state(state, image_size=image_size))
    check_state_dict(model, state, path=os.fspath(path), keys_doc=KEYS_DOC)
    return model.eval()


def output_dim(config: VGGFaceConfig, layer: str) -> int:
    """Values per face image returned for ``layer``."""
    layer = layer_name(layer, config.depth)
    s = config.image_size // 32
    return {"conv5": config.widths[4], "pool5": config.widths[4] * s * s, "fc6": config.fc[0],
            "fc7": config.fc[1]}[layer]


def face_embeddings(crops: np.ndarray, *, model: VGGFace, layer: str = "conv5_3", batch_size: int = 32,
                    device: str = "cpu", precision: str = "fp32") -> np.ndarray:
    """(n, H, W, 3) uint8 RGB face crops → (n, output_dim) float32 activations of ``layer``."""
    from features.embeddings import batched_forward

    name = layer_name(layer, model.config.depth)
    model = model.to(device)
    out = batched_forward(lambda x: model(x, name), crops, batch_size=batch_size, device=device,
                          precision=precision, prepare=model.preprocess)
    return out.reshape(len(crops), output_dim(model.config, layer))
