"""``clip`` encoder: an open_clip image tower, any architecture, weights from a local file only."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.digest import digest_json, file_digest
from ..safeload import check_weights_file
from .base import require_weights, resize_normalise, to_rgb01

WEIGHTS_HINT = (
    "Download the open_clip checkpoint for the architecture elsewhere (e.g. open_clip_pytorch_model.bin of "
    "laion/CLIP-ViT-L-14-laion2B-s32B-b82K) and set embed.weights=<local path> (embed.clip_arch=<open_clip name>)."
)


class ClipEncoder:
    """Embeddings = ``model.encode_image`` of an open_clip model (its projection output)."""

    name = "clip"

    def __init__(self, model: torch.nn.Module, digest: str, device: str | torch.device = "cpu"):
        self.model, self.digest, self.device = model, digest, device
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", model.visual.image_size)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
        self.std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))

    @classmethod
    def load(cls, arch: str, weights: str, device: str | torch.device = "cpu", config_path: str = "") -> "ClipEncoder":
        """Build ``arch`` (optionally registered from ``config_path``, an open_clip model-config JSON) with local weights."""
        import open_clip

        path = require_weights(weights, f"clip encoder ({arch})", WEIGHTS_HINT)
        if config_path:
            cfg = Path(config_path)
            if not cfg.exists():
                raise FileNotFoundError(f"clip model config {cfg} does not exist (expected an open_clip model-config JSON)")
            open_clip.add_model_config(cfg)
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {arch!r}; e.g. {open_clip.list_models()[:8]} "
                             f"(or give embed.clip_config=<model-config JSON named {arch}.json>)")
        check_weights_file(path, f"open_clip weights of {arch} (a state dict). {WEIGHTS_HINT}")
        model = open_clip.create_model(arch, pretrained=str(path), device=device, weights_only=True)
        model.eval()
        return cls(model, digest_json({"arch": arch, "weights": file_digest(path)}), device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_normalise(to_rgb01(images.to(self.device)), self.size, self.mean, self.std)
        return self.model.encode_image(x).float().cpu()
