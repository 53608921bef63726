"""Pre-encoded latents: the VAE encode stage (``groupdiff encode-latents``) and the dataset reading them.

The VAE is diffusers' ``AutoencoderKL`` with the SD-VAE architecture (``SD_VAE_CONFIG``, the config of
stabilityai/sd-vae-ft-ema / -mse) and weights from a local path: a diffusers folder or one state-dict
file. Latents are stored as ``mean * scaling_factor`` (or a posterior sample) in restartable shards, so
training never runs the VAE per step. Layout of the output folder::

    latents.json        manifest: source dataset digest, VAE digest, scaling factor, shape, artefact digest
    labels.npy          int64 labels
    lat-00000.npy ...   float32 (rows, 4, S/8, S/8) shards, item i in shard i // shard_size
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .config import VaeConfig
from .digest import digest_json, file_digest
from ..atomic import write_json_atomic
from ..safeload import CheckpointError, load_tensor_file, safetensors_problem
from .shards import ShardStageResult, load_shards, missing_shards, run_shards, save_atomic

MANIFEST = "latents.json"
PREFIX = "lat"
WEIGHTS_HINT = (
    "Download the SD-VAE elsewhere (e.g. the folder stabilityai/sd-vae-ft-ema with config.json and "
    "diffusion_pytorch_model.safetensors) and set data.vae.weights=<local folder or weights file>."
)
SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "act_fn": "silu", "sample_size": 256, "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_vae(config: VaeConfig, device: str | torch.device = "cpu"):
    """``AutoencoderKL`` from local weights only (``HF_HUB_OFFLINE=1``), with a digest of its weights."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from diffusers import AutoencoderKL

    if not config.weights:
        raise FileNotFoundError(f"VAE: no weights configured. {WEIGHTS_HINT}")
    path = Path(config.weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"VAE: weights {path} do not exist. {WEIGHTS_HINT}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        for file in files:  # diffusers reads weights-only too; checking first gives one clear error per file
            problem = safetensors_problem(file) if file.suffix == ".safetensors" else None
            if problem:
                raise CheckpointError(f"VAE weights {str(file)!r} are corrupt ({problem}); expected {WEIGHTS_HINT}")
            if file.suffix == ".bin":
                load_tensor_file(file, f"AutoencoderKL weights (a state dict of tensors). {WEIGHTS_HINT}")
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        digest = digest_json([[p.name, file_digest(p)] for p in files])
    else:
        arch = json.loads(Path(config.config_json).read_text()) if config.config_json else SD_VAE_CONFIG
        vae = AutoencoderKL.from_config(arch)
        expected = f"an AutoencoderKL state dict (.safetensors, or .bin/.pt of tensors). {WEIGHTS_HINT}"
        state = load_tensor_file(path, expected)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise CheckpointError(f"VAE weights {str(path)!r} hold a {type(state).__name__}; expected {expected}")
        own = vae.state_dict()
        shapes = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if shapes:
            raise CheckpointError(f"VAE weights {str(path)!r}: wrong shape for {shapes[:3]} (set data.vae.config_json "
                                  f"for another architecture); expected {expected}")
        missing, unexpected = vae.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"VAE weights {path} do not match the AutoencoderKL config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]} (set data.vae.config_json for another architecture)")
        digest = digest_json({"weights": file_digest(path), "arch": arch})
    return vae.to(device, _DTYPES[config.dtype]).eval(), digest


class LatentEncoder:
    """Images -> stored latents (``mean * scaling_factor``, or a posterior sample drawn from a generator
    seeded with ``seed``) with one VAE: the one rule of :func:`encode_latents` and ``groupdiff ingest``."""

    def __init__(self, vae, config: VaeConfig, seed: int | None = None):
        self.vae, self.config = vae, config
        self.dtype = next(vae.parameters()).dtype
        self.device = next(vae.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed if seed is None else seed)

    def latent_shape(self, image_size: int) -> list[int]:
        """(C, S/f, S/f) of an image of side ``image_size``."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return [self.vae.config.latent_channels, image_size // factor, image_size // factor]

    def describe(self, vae_digest: str | None) -> dict:
        """What makes these latents what they are (for manifests and digests)."""
        return {"vae_digest": vae_digest, "scaling_factor": self.config.scaling_factor, "sample": self.config.sample,
                "seed": self.config.seed if self.config.sample else None}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> np.ndarray:
        """float32 latents of images (N, 3, S, S) in [-1, 1]."""
        dist = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        z = dist.sample(generator=self.generator) if self.config.sample else dist.mean
        return (z.float() * self.config.scaling_factor).cpu().numpy()

    def encode_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """float32 latents of uint8 images (N, 3, S, S), mapped to [-1, 1] as the datasets do."""
        return self.encode(torch.from_numpy(pixels.astype(np.float32)).div(127.5).sub(1.0))


def encode_latents(dataset, config: VaeConfig, out_dir: str | Path, rank: int = 0, world_size: int = 1,
                   device: str = "cpu", vae=None, vae_digest: str | None = None, num_workers: int = 0) -> ShardStageResult:
    """Encode this rank's missing latent shards of ``dataset`` (RGB in [-1, 1]) into ``out_dir``."""
    out = Path(out_dir)
    if vae is None:  # before the folder exists: bad VAE weights leave nothing behind
        vae, vae_digest = build_vae(config, device)
    out.mkdir(parents=True, exist_ok=True)
    channels = vae.config.in_channels
    if dataset.channels != channels:
        raise ValueError(f"the VAE expects {channels}-channel images, the dataset has {dataset.channels} "
                         f"(use data.dataset='imagefolder' for RGB images)")
    image, _ = dataset[0]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    manifest = {
        "source_digest": dataset.digest, "vae_digest": vae_digest, "scaling_factor": config.scaling_factor,
        "sample": config.sample, "seed": config.seed if config.sample else None, "num_items": len(dataset),
        "shard_size": config.shard_size, "num_classes": int(getattr(dataset, "num_classes", 0)),
        "latent_shape": [vae.config.latent_channels, image.shape[-2] // factor, image.shape[-1] // factor],
    }
    manifest["digest"] = digest_json({k: v for k, v in manifest.items() if k != "shard_size"})
    path = out / MANIFEST
    if path.exists() and json.loads(path.read_text()).get("digest") != manifest["digest"]:
        raise ValueError(f"{out} already holds latents of another dataset/VAE/config; use another output folder")
    if not path.exists():
        write_json_atomic(path, manifest, sort_keys=True)
    if not (out / "labels.npy").exists():
        save_atomic(out / "labels.npy", np.asarray(dataset.labels, dtype=np.int64))
    def compute(indices: np.ndarray) -> np.ndarray:
        encoder = LatentEncoder(vae, config, seed=config.seed + int(indices[0]) // config.shard_size)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices.tolist()),
                                             batch_size=config.batch_size, shuffle=False, num_workers=num_workers)
        return np.concatenate([encoder.encode(images) for images, _ in loader])

    done = run_shards(len(dataset), config.shard_size, out, PREFIX, compute, rank, world_size, desc="encode latents")
    done["complete"] = not missing_shards(len(dataset), config.shard_size, out, PREFIX)
    done["manifest"] = manifest
    return done


class LatentDataset(torch.utils.data.Dataset):
    """Latents written by :func:`encode_latents` (memory-mapped), with labels and the artefact digest."""

    def __init__(self, root: str | Path, limit: int = 0):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{self.root} holds no {MANIFEST}; run `groupdiff encode-latents --out {self.root}` first")
        self.meta = json.loads(path.read_text())
        self.latents = load_shards(self.meta["num_items"], self.meta["shard_size"], self.root, PREFIX, mmap=True)
        self.labels = np.load(self.root / "labels.npy")
        if limit:
            self.latents, self.labels = self.latents[:limit], self.labels[:limit]
        self.num_classes = self.meta.get("num_classes", int(self.labels.max()) + 1)
        self.channels = self.meta["latent_shape"][0]
        self.digest = self.meta["digest"] if not limit else digest_json([self.meta["digest"], limit])

    def report(self) -> dict:
        """Counts for logging."""
        return {"images": len(self), "skipped": 0, "skipped_files": [], "converted": {}}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.latents[index], dtype=np.float32)), int(self.labels[index])
