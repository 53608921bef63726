"""Builders shared by the data and training tests: generated image folders (with a corrupt and a non-image file)
and a tiny random SD-VAE-shaped ``AutoencoderKL`` saved to disk."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
            "block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "sample_size": 16}


def write_image_folder(root: Path, classes=("bag", "coat", "shoe"), per_class: int = 6, seed: int = 0,
                       bad: bool = True, sizes=((20, 24), (17, 17), (32, 20))) -> Path:
    """PNG/JPEG images of a few sizes under root/<class>/, plus (``bad``) a truncated PNG and a text file."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = sizes[(c + i) % len(sizes)]
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{seed}-{i}.{ext}")
    if bad:
        good = (root / classes[0] / f"{seed}-0.png").read_bytes()
        (root / classes[0] / "truncated.png").write_bytes(good[: len(good) // 2])
        (root / classes[-1] / "notes.txt").write_text("not an image")
    return root


def save_tiny_vae(root: Path):
    """A random tiny AutoencoderKL written to ``root`` (vae.safetensors + config.json, and a diffusers folder)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE).eval()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(root / "vae.safetensors"))
    (root / "config.json").write_text(json.dumps(TINY_VAE))
    vae.save_pretrained(root / "folder")
    return vae
