"""``dinov2`` encoder: a timm DINOv2 ViT (CLS token after the final norm), weights from a local file only."""
from __future__ import annotations

import torch

from ..data.digest import digest_json, file_digest
from ..safeload import check_weights_file
from .base import require_weights, resize_normalise, to_rgb01

WEIGHTS_HINT = (
    "Download the timm DINOv2 weights elsewhere (e.g. model.safetensors of timm/vit_base_patch14_dinov2.lvd142m) "
    "and set embed.weights=<local path> (embed.dinov2_arch=<timm name>)."
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Dinov2Encoder:
    """Embeddings = the pooled (CLS) output of a timm ViT with its classifier removed."""

    name = "dinov2"

    def __init__(self, model: torch.nn.Module, digest: str, device: str | torch.device = "cpu"):
        self.model, self.digest, self.device = model, digest, device
        self.size = tuple(model.patch_embed.img_size)
        self.mean = model.pretrained_cfg.get("mean", IMAGENET_MEAN)
        self.std = model.pretrained_cfg.get("std", IMAGENET_STD)

    @classmethod
    def load(cls, arch: str, weights: str, device: str | torch.device = "cpu",
             model_args: dict | None = None) -> "Dinov2Encoder":
        """timm ``arch`` with ``model_args`` (e.g. ``img_size``) and the weights at ``weights``.

        Loading goes through timm's pretrained path with a local file overlay, so its checkpoint filter
        (position-embedding resampling for another ``img_size``) applies and nothing touches the hub.
        """
        import timm

        path = require_weights(weights, f"dinov2 encoder ({arch})", WEIGHTS_HINT)
        if arch not in timm.list_models():
            raise ValueError(f"unknown timm architecture {arch!r}; e.g. {timm.list_models('*dinov2*')}")
        check_weights_file(path, f"timm weights of {arch} (a state dict). {WEIGHTS_HINT}")
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                  num_classes=0, **(model_args or {}))
        model.to(device).eval()
        digest = digest_json({"arch": arch, "weights": file_digest(path), "args": model_args})
        return cls(model, digest, device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_normalise(to_rgb01(images.to(self.device)), self.size, self.mean, self.std)
        return self.model(x).float().cpu()
