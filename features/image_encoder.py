"""Transformer image embeddings of the face crops: ViT (Dosovitskiy et al., "An image is worth
16x16 words: Transformers for image recognition at scale", ICLR 2021) or CLIP's vision tower
(Radford et al., "Learning transferable visual models from natural language supervision", ICML
2021), through ``transformers`` (issue 22 item 5). The architecture follows the folder's
``config.json`` ``model_type``: ``"vit"`` → ``ViTModel``; ``"clip"`` (a whole CLIP model, only its
vision tower is loaded) or ``"clip_vision_model"`` → ``CLIPVisionModel``.

Pooling: one vector per crop, the [CLS] token after the final LayerNorm: ViT's
``last_hidden_state[:, 0]`` (ViT §3.1: "the state of the learnable [class] token at the output of
the Transformer encoder serves as the image representation"; ViT's extra ``pooler``, a tanh layer
trained only with some classification heads, is not loaded) and CLIP's ``pooler_output``
(``post_layernorm`` of the [CLS] token). CLIP's ``visual_projection`` into the joint image-text
space (512 / 768-d) is not applied: the vector is the tower's ``hidden_size`` wide (768 for
ViT-B, 1024 for ViT-L).

Input: RGB crops (n, H, W, 3) uint8 (``features.face.crop``), resized on the device to the
model's ``config.image_size`` (square crops, so "shortest edge + centre crop" of CLIP's processor
is the same resize; torch's antialiased bilinear / bicubic by the processor's ``resample``, close
to PIL's but not bit-equal), multiplied by ``rescale_factor`` (1/255) and normalised with the
``image_mean`` / ``image_std`` of the folder's ``preprocessor_config.json``. Without that file the
defaults of the model type's image processor are used: ViT → ``ViTImageProcessor``'s "ImageNet
standard" mean = std = (0.5, 0.5, 0.5), bilinear (what Google's ViT checkpoints were trained
with); CLIP → OpenAI's CLIP mean (0.4815, 0.4578, 0.4082), std (0.2686, 0.2613, 0.2758), bicubic.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from features.errors import ParameterError
from features.hf import from_pretrained, precision_context, require_model_folder

#: defaults by model type when the folder has no preprocessor_config.json:
#: (image_mean, image_std, resample) of transformers' ViTImageProcessor / CLIPImageProcessor
DEFAULTS = {
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 2),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), 3),
}
MODEL_TYPES = {"vit": "vit", "clip": "clip", "clip_vision_model": "clip"}
RESAMPLE = {2: "bilinear", 3: "bicubic"}   # PIL.Image.Resampling codes of the processor configs


@dataclass(frozen=True)
class ImageModel:
    """A loaded image encoder: the ``transformers`` module and its input recipe."""
    model: object
    kind: str                   #: "vit" or "clip"
    image_size: int
    mean: tuple
    std: tuple
    rescale_factor: float
    mode: str                   #: torch interpolation mode of the resize
    folder: str

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def preprocess(self, crops):
        """(B, H, W, 3) uint8 torch tensor → (B, 3, S, S) float pixel values on its device."""
        import torch

        x = crops.permute(0, 3, 1, 2).float()
        size = self.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode=self.mode, align_corners=False,
                                                antialias=True).clamp_(0, 255)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x * self.rescale_factor - mean) / std

    def pooled(self, pixel_values):
        """(B, 3, S, S) → (B, hidden_size): [CLS] after the final LayerNorm (module docstring)."""
        out = self.model(pixel_values=pixel_values)
        return out.last_hidden_state[:, 0] if self.kind == "vit" else out.pooler_output


def _recipe(folder: str, kind: str) -> tuple[tuple, tuple, float, str]:
    mean, std, resample = DEFAULTS[kind]
    rescale = 1 / 255
    path = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        if cfg.get("do_normalize", True):
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        rescale = float(cfg.get("rescale_factor", rescale)) if cfg.get("do_rescale", True) else 1.0
        resample = cfg.get("resample", resample)
    if len(mean) != 3 or len(std) != 3:
        raise ParameterError(f"{path}: image_mean and image_std must have 3 values (RGB), got {mean}, {std}")
    return mean, std, rescale, RESAMPLE.get(resample, "bilinear")


def load_image_model(folder, device: str = "cpu", *, feature: str = "image_encoder", section: str = "ImageEncoder",
                     key: str = "folder") -> ImageModel:
    """ViT or CLIP vision tower of a local Hugging Face folder, on ``device``, eval mode.

    A missing, empty or incomplete folder is a ``FileNotFoundError`` naming it, the workflows.cfg
    key and how to switch the feature off; another ``model_type`` is a ``ParameterError``."""
    from transformers import AutoConfig, CLIPVisionModel, ViTModel

    folder = require_model_folder(folder, feature=feature, section=section, key=key, what="image model folder")
    model_type = AutoConfig.from_pretrained(folder, local_files_only=True).model_type
    if model_type not in MODEL_TYPES:
        raise ParameterError(f"{folder}: model_type {model_type!r} is not supported; the image encoder takes "
                             f"{sorted(MODEL_TYPES)} (ViT, CLIP)")
    kind = MODEL_TYPES[model_type]
    if kind == "vit":
        model = from_pretrained(ViTModel, folder, device, add_pooling_layer=False)
    else:
        model = from_pretrained(CLIPVisionModel, folder, device)
    mean, std, rescale, mode = _recipe(folder, kind)
    return ImageModel(model, kind, int(model.config.image_size), mean, std, rescale, mode, folder)


def image_embeddings(encoder: ImageModel, crops: np.ndarray, *, batch_size: int = 64, device: str = "cpu",
                     precision: str = "fp32") -> np.ndarray:
    """Pooled image vectors of face crops.

    Parameters
    ----------
    encoder : ``load_image_model``'s result
    crops : (n, H, W, 3) uint8 RGB; resized on the device to ``encoder.image_size``
    batch_size : crops per forward pass (only uint8 crosses the bus)
    device : ``"cpu"`` or ``"cuda[:k]"``
    precision : ``"fp32"``; ``"fp16"`` / ``"bf16"`` autocast on a GPU (bf16 also on the CPU)

    Returns
    -------
    (n, hidden_size) float32: the [CLS] token after the final LayerNorm, per crop
    """
    import torch

    from features.embeddings import pick_device

    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ParameterError(f"crops must be (n, H, W, 3) uint8 RGB, got {crops.dtype} {crops.shape}")
    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
    device = pick_device(device)
    context = precision_context(precision, device)
    encoder.model.to(device)
    out = np.zeros((len(crops), encoder.hidden_size), np.float32)
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch_size])).to(device)
            pixels = encoder.preprocess(xb)
            with context:
                out[start:start + len(xb)] = encoder.pooled(pixels).float().cpu().numpy()
    return out


#: the shard features this extractor's stage (``pipeline.embeddings.ImageEncoder``) writes (``features.registry``)
SHARD_FEATURES = (
    dict(name="image_encoder", dataset="video/image_encoder", rows="video frame", dtype="float32", shape="(D,)",
         modality="visual", stage="ImageEncoder",
         switch='[ImageEncoder] weights, "image_encoder" in [Shard] embeddings and --video true', read="window",
         normalise=True, embedding="image_encoder", needs="weights", default=False,
         enable="build the shards with the ImageEncoder stage (docs/embeddings.md)",
         paper="Dosovitskiy et al. 2021 (ViT) / Radford et al. 2021 (CLIP): the pooled face crop"),
)
