"""The embedding stage (``groupdiff embed``): L2-normalised image embeddings in restartable shards.

Output folder layout::

    embed.json          manifest: dataset digest, encoder name/digest, config, shard size, artefact digest
    labels.npy          int64 labels of the dataset (for class mode and class purity)
    emb-00000.npy ...   float32 (rows, D) shards, L2-normalised, item i in shard i // shard_size

Rank ``r`` of ``world_size`` writes shards ``s % world_size == r`` (disjoint files); a restarted run
skips shards whose file exists (each is written to a temp name and renamed when complete). A folder
holding another configuration's shards is refused rather than mixed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.digest import digest_json
from ..atomic import write_json_atomic
from ..data.shards import ShardStageResult, load_shards, missing_shards, run_shards, save_atomic
from ..encoders.base import Encoder
from ..encoders.factory import build_encoder
from .config import EmbedConfig

MANIFEST = "embed.json"
PREFIX = "emb"


@dataclass
class Embeddings:
    """A finished embedding artefact."""

    vectors: np.ndarray  # (num_items, D) float32, unit norm
    labels: np.ndarray  # (num_items,) int64
    meta: dict  # the manifest

    @property
    def digest(self) -> str:
        return self.meta["digest"]


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("embed.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def _fit_sample(dataset, config: EmbedConfig):
    """Callable giving a seeded sample of images for fitting the pixels PCA."""
    def sample() -> torch.Tensor:
        n = len(dataset)
        rng = np.random.default_rng(config.seed)
        idx = np.sort(rng.choice(n, size=min(config.pca_fit_items, n), replace=False))
        return torch.stack([dataset[int(i)][0] for i in idx])
    return sample


def make_encoder(dataset, config: EmbedConfig) -> Encoder:
    """The encoder ``config`` names on its resolved device (the pixels PCA is fitted on a seeded sample of
    ``dataset``): what :func:`embed_dataset` builds when given none. Build it once and pass it to every call
    that embeds shards of the same dataset (e.g. one call per shard on a worker)."""
    return build_encoder(config, resolve_device(config.device), _fit_sample(dataset, config))


def embed_dataset(dataset, config: EmbedConfig, out_dir: str | Path, rank: int = 0, world_size: int = 1,
                  encoder: Encoder | None = None, num_workers: int = 0) -> ShardStageResult:
    """Compute this rank's missing embedding shards of ``dataset`` into ``out_dir``.

    Returns ``{"computed": [...], "skipped": [...], "manifest": {...}, "complete": bool}``.
    ``encoder`` overrides the one ``config`` names (used by tests to count calls).
    """
    out = Path(out_dir)
    if encoder is None:  # before the folder exists: a bad encoder setting leaves nothing behind
        encoder = make_encoder(dataset, config)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "dataset_digest": dataset.digest, "encoder": encoder.name, "encoder_digest": encoder.digest,
        "num_items": len(dataset), "shard_size": config.shard_size,
        "config": config.model_dump(exclude={"batch_size", "device", "classifier"}),
    }
    manifest["digest"] = digest_json({k: manifest[k] for k in ("dataset_digest", "encoder", "encoder_digest", "num_items")})
    existing = out / MANIFEST
    if existing.exists():
        old = json.loads(existing.read_text())
        if old.get("digest") != manifest["digest"] or old.get("shard_size") != config.shard_size:
            raise ValueError(
                f"{out} already holds embeddings {old.get('digest')} (shard_size {old.get('shard_size')}) of another "
                f"dataset/encoder; this run would write {manifest['digest']} (shard_size {config.shard_size}). "
                f"Use another output folder or delete the old one."
            )
    else:
        write_json_atomic(existing, manifest, sort_keys=True)
    if not (out / "labels.npy").exists():
        save_atomic(out / "labels.npy", np.asarray(dataset.labels, dtype=np.int64))

    def compute(indices: np.ndarray) -> np.ndarray:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices.tolist()),
                                             batch_size=config.batch_size, shuffle=False, num_workers=num_workers)
        parts = []
        for images, _ in loader:
            feats = encoder.encode(images).float()
            if not torch.isfinite(feats).all():
                raise ValueError(f"encoder {encoder.name} produced non-finite features for items "
                                 f"{indices[0]}..{indices[-1]}")
            parts.append(F.normalize(feats, dim=1).numpy())
        return np.concatenate(parts).astype(np.float32)

    done = run_shards(len(dataset), config.shard_size, out, PREFIX, compute, rank, world_size,
                      desc=f"embed {encoder.name}")

    done["complete"] = not missing_shards(len(dataset), config.shard_size, out, PREFIX)
    done["manifest"] = manifest
    return done


def load_embeddings(out_dir: str | Path) -> Embeddings:
    """Load a finished embedding folder; errors name missing shards or a file with NaN / non-unit rows."""
    out = Path(out_dir)
    path = out / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{out} holds no {MANIFEST}; run `groupdiff embed --out {out}` first")
    meta = json.loads(path.read_text())
    vectors = load_shards(meta["num_items"], meta["shard_size"], out, PREFIX)
    check_embeddings(vectors, str(out))
    labels = np.load(out / "labels.npy")
    return Embeddings(np.ascontiguousarray(vectors, dtype=np.float32), labels, meta)


def check_embeddings(vectors: np.ndarray, source: str) -> None:
    """Error naming ``source`` when embeddings hold NaN/inf or are not L2-normalised."""
    if vectors.ndim != 2:
        raise ValueError(f"{source}: embeddings must be 2-D (items, dim), got shape {vectors.shape}")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{source}: {len(rows)} embedding rows hold NaN/inf (first rows {rows[:5].tolist()}); "
                         f"recompute them (delete the affected shard files and rerun `groupdiff embed`)")
    norms = np.linalg.norm(vectors, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"{source}: embeddings are not L2-normalised (norms in [{norms.min():.4f}, {norms.max():.4f}])")


def run_embed(config, out_dir: str | Path, rank: int = 0, world_size: int = 1) -> ShardStageResult:
    """Stage entry: build ``config.data``'s dataset and embed it with ``config.embed`` (a GroupDiffConfig)."""
    from ..data.datasets import build_dataset

    dataset = build_dataset(config.data)
    result = embed_dataset(dataset, config.embed, out_dir, rank, world_size, num_workers=config.data.num_workers)
    result["dataset_report"] = dataset.report()
    return result
