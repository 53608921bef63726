"""Feature spaces and reference statistics, computed once per (reference, feature space) and cached.

A *feature space* is any callable ``images uint8 NHWC -> {"pool": (N, D), "logits": (N, K),
"spatial": (N, S) optional}`` with a ``name`` (metric suffix) and a ``digest`` (identifies its weights).
:class:`groupdiff.metrics.inception.InceptionFeatures` wrapped by :func:`inception_space` is the FID
space; :mod:`groupdiff.metrics.builtin` wraps the Fashion-MNIST classifier.

A reference is an ADM reference batch ``.npz``: images in ``arr_0`` and/or precomputed ``mu``, ``sigma``
(pool) and ``mu_s``, ``sigma_s`` (spatial). Precomputed statistics are used as given (they are how
paper numbers are made); images are needed in addition for precision/recall. Statistics computed from
images are cached under ``cache_dir/<space>-<digest>.npz`` where the digest covers the reference file's
bytes and the feature space's digest, so a changed file or changed weights never hits a stale cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..atomic import atomic_write
from ..data.digest import digest_arrays, file_digest
from .frechet import FeatureStats, feature_stats
from .npz import check_images


class FeatureSpace(Protocol):
    """What scoring needs from a feature extractor."""

    name: str
    digest: str

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass
class CallableSpace:
    """A feature space from a function returning the feature dict (see the module docstring)."""

    name: str
    digest: str
    fn: Callable[[np.ndarray], dict[str, np.ndarray]]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.fn(images)


def inception_space(weights: str | Path | None, device: str = "cpu", batch_size: int = 64) -> CallableSpace:
    """The InceptionV3 FID space; the digest covers the weights file's bytes."""
    from .inception import InceptionFeatures, resolve_weights_path

    path = resolve_weights_path(weights)
    extractor = InceptionFeatures(path, device=device, batch_size=batch_size)
    return CallableSpace(name="inception", digest=file_digest(path), fn=lambda x: extractor(x, progress=True))


@dataclass
class ReferenceStats:
    """Pool statistics, optional spatial statistics, and pool features when images were available."""

    pool: FeatureStats
    spatial: FeatureStats | None = None
    pool_features: np.ndarray | None = None
    image_size: tuple[int, int] | None = None

    def save(self, path: Path) -> None:
        """Cache to ``path`` atomically."""
        arrays = {"mu": self.pool.mu, "sigma": self.pool.sigma, "count": np.int64(self.pool.count)}
        if self.spatial is not None:
            arrays.update(mu_s=self.spatial.mu, sigma_s=self.spatial.sigma, count_s=np.int64(self.spatial.count))
        if self.pool_features is not None:
            arrays["pool_features"] = self.pool_features.astype(np.float32)
        if self.image_size is not None:
            arrays["image_size"] = np.asarray(self.image_size, np.int64)
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def from_npz(cls, data) -> "ReferenceStats":
        """Statistics from an open ``.npz`` holding ``mu``/``sigma`` (and maybe the others)."""
        count = int(data["count"]) if "count" in data.files else 0
        pool = FeatureStats(np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64), count)
        spatial = None
        if "mu_s" in data.files and "sigma_s" in data.files:
            count_s = int(data["count_s"]) if "count_s" in data.files else 0
            spatial = FeatureStats(np.asarray(data["mu_s"], np.float64), np.asarray(data["sigma_s"], np.float64), count_s)
        features = np.asarray(data["pool_features"], np.float64) if "pool_features" in data.files else None
        size = tuple(int(v) for v in data["image_size"]) if "image_size" in data.files else None
        return cls(pool=pool, spatial=spatial, pool_features=features, image_size=size)


def stats_from_features(features: dict[str, np.ndarray], image_size: tuple[int, int] | None = None) -> ReferenceStats:
    """Reference statistics from a feature dict of a reference image set."""
    spatial = feature_stats(features["spatial"]) if "spatial" in features else None
    return ReferenceStats(feature_stats(features["pool"]), spatial, np.asarray(features["pool"]), image_size)


def reference_from_images(
    images: np.ndarray, space: FeatureSpace, cache_dir: str | Path | None = None, key: str | None = None
) -> ReferenceStats:
    """Statistics of reference ``images`` (uint8 NHWC) in ``space``, cached by (images or key, space) digest."""
    images = check_images(images, "reference images")
    digest = key or digest_arrays(images)
    cache = Path(cache_dir) / f"{space.name}-{space.digest}-{digest}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            return ReferenceStats.from_npz(data)
    stats = stats_from_features(space(images), image_size=images.shape[1:3])
    if cache is not None:
        stats.save(cache)
    return stats


def load_reference(path: str | Path, space: FeatureSpace, cache_dir: str | Path | None = None) -> ReferenceStats:
    """Statistics of an ADM-style reference ``.npz`` (precomputed ``mu``/``sigma`` win; see module doc), or of
    the images of a pixel dataset version written by ``groupdiff ingest`` (folder or ``s3://``)."""
    from ..data.sharded import is_sharded

    if is_sharded(path):
        return reference_from_version(str(path), space, cache_dir)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference batch {str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as data:
        files = set(data.files)
        if not files & {"arr_0", "mu"}:
            raise ValueError(f"{path}: a reference batch needs 'arr_0' images or 'mu'/'sigma' statistics, found {sorted(files)}")
        # precomputed mu/sigma of an ADM batch are InceptionV3 statistics: only valid in that space
        given = ReferenceStats.from_npz(data) if {"mu", "sigma"} <= files and space.name == "inception" else None
        if "arr_0" not in files:
            if given is None:
                raise ValueError(f"{path}: holds only precomputed Inception statistics; the {space.name!r} "
                                 "feature space needs reference images in 'arr_0'")
            return given
        key = file_digest(path)
        computed = reference_from_images(data["arr_0"], space, cache_dir, key=key)
    if given is None:
        return computed
    # precomputed statistics are authoritative; keep our pool features for precision/recall
    return ReferenceStats(given.pool, given.spatial or None, computed.pool_features, computed.image_size)


def reference_from_version(root: str, space: FeatureSpace, cache_dir: str | Path | None = None) -> ReferenceStats:
    """Statistics of every image of a pixel dataset version (read through the dataset interface, cached by the
    version's content digest)."""
    from ..data.sharded import ShardedDataset

    version = ShardedDataset(root)
    if version.kind != "pixels":
        raise ValueError(f"reference {root!r} holds {version.kind}; a reference needs images (a pixel version: "
                         "`groupdiff ingest` without --encode latents)")
    images = version.rows(np.arange(len(version))).transpose(0, 2, 3, 1)  # uint8 NCHW -> NHWC
    return reference_from_images(np.ascontiguousarray(images), space, cache_dir, key=version.digest)
