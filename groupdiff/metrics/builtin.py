"""Metrics on the built-in data in the feature space of the classifier trained on it (DESIGN 1.6).

The space is named ``fmnist``: the Fréchet distance of its penultimate features is reported as
``fd_fmnist`` (never "FID": it is not InceptionV3 and not comparable with published numbers), its
logits give ``is_fmnist``, and its features ``precision_fmnist`` / ``recall_fmnist``. The classifier has
no spatial layer in the sFID sense, so there is no ``sfd_fmnist``.

Images are fed at the classifier's own resolution (its ``arch["image_size"]``); samples of another size
are refused rather than resized, because resizing would change the statistics being compared. The
reference is the Fashion-MNIST test split (padded to that size exactly as the training data), cached by
the digest of its pixels and of the classifier's weights.

The **real-data floor** (:func:`fmnist_floor_images`) is a held-out real set scored exactly like
samples: test images *after* the first ``reference_limit`` (which form the reference), as many per
class as the generated set has, so the floor and the samples are the same size and class balance and the
floor never contains a reference image. Its fd is what a perfect generator would score at that sample
count (finite-sample bias included); a model's numbers are read against it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.digest import file_digest
from .npz import to_uint8_nhwc
from .reference import CallableSpace, ReferenceStats, reference_from_images

SPACE = "fmnist"


def classifier_space_from_callables(
    features: Callable[[torch.Tensor], torch.Tensor], logits: Callable[[torch.Tensor], torch.Tensor],
    image_size: int, digest: str, name: str = SPACE, batch_size: int = 256, device: str = "cpu",
) -> CallableSpace:
    """A feature space from any ``features(x)`` / ``logits(x)`` over images (B, C, S, S) in [-1, 1]."""

    @torch.no_grad()
    def fn(images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        if images.shape[1:3] != (image_size, image_size):
            raise ValueError(
                f"images are {images.shape[1]}x{images.shape[2]} but the {name} classifier takes "
                f"{image_size}x{image_size}; sample at the training resolution (images are not resized)"
            )
        out: dict[str, list[np.ndarray]] = {"pool": [], "logits": []}
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(images[start : start + batch_size]).to(device)
            x = chunk.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            out["pool"].append(features(x).double().cpu().numpy())
            out["logits"].append(logits(x).double().cpu().numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    return CallableSpace(name=name, digest=digest, fn=fn)


def classifier_space(weights: str | Path, device: str = "cpu", batch_size: int = 256) -> CallableSpace:
    """The ``fmnist`` space from a classifier file written by ``groupdiff train-classifier``."""
    from ..encoders.classifier import load_classifier

    model, _ = load_classifier(weights, device)
    return classifier_space_from_callables(
        model.features, model.logits, int(model.arch["image_size"]), file_digest(weights),
        batch_size=batch_size, device=device,
    )


def fmnist_reference_images(image_size: int, split: str = "test", limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Built-in reference images as uint8 NHWC at ``image_size`` (padded as for training) and labels."""
    from ..data.fmnist import load_fmnist

    images, labels = load_fmnist(split, image_size, limit)
    return to_uint8_nhwc(images), labels.numpy()


def fmnist_reference(
    space: CallableSpace, image_size: int, split: str = "test", limit: int = 0, cache_dir: str | Path | None = None,
) -> ReferenceStats:
    """Reference statistics of the built-in data in ``space`` (cached, see the module docstring)."""
    images, _ = fmnist_reference_images(image_size, split, limit)
    return reference_from_images(images, space, cache_dir)  # cache key: digest of the reference pixels


def classifier_record(weights: str | Path) -> dict:
    """What a score reports about the classifier defining the space: its test accuracy (``eval_accuracy``
    measured after training, on ``eval_images`` Fashion-MNIST test images), training size and time, digest."""
    from ..encoders.classifier import load_classifier

    _, extra = load_classifier(weights)
    keys = ("eval_accuracy", "eval_images", "train_images", "train_seconds", "threads")
    return {"test_accuracy": extra.get("eval_accuracy"), **{k: extra[k] for k in keys[1:] if k in extra},
            "digest": file_digest(weights)}


def fmnist_floor_images(
    image_size: int, reference_limit: int, num_images: int, labels: np.ndarray | None = None, split: str = "test",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out real images for the floor, taken from the split's images ``reference_limit, reference_limit
    + 1, ...`` (the reference is the first ``reference_limit``): with the samples' ``labels``, for each class
    ``c`` the first ``(labels == c).sum()`` images of class ``c``; without, the first ``num_images``.
    Returns (uint8 NHWC images, their labels, their indices in the split)."""
    from ..data.fmnist import load_fmnist_uint8

    _, all_labels = load_fmnist_uint8(split)
    if reference_limit <= 0 or reference_limit >= len(all_labels):
        raise ValueError(
            f"reference_limit={reference_limit}: the reference takes the whole {split} split "
            f"({len(all_labels)} images), nothing is left for the real-data floor; use a smaller reference "
            "(--reference-limit) or switch the floor off"
        )
    held_out = np.arange(reference_limit, len(all_labels))
    if labels is None:
        if len(held_out) < num_images:
            raise ValueError(
                f"the real-data floor needs {num_images} held-out {split} images but only {len(held_out)} follow "
                f"the first reference_limit={reference_limit}; use fewer samples or a smaller reference"
            )
        labels = all_labels[held_out[:num_images]]
    labels = np.asarray(labels, np.int64)
    if len(labels) != num_images:
        raise ValueError(f"num_images={num_images} but {len(labels)} labels were given")
    chosen = []
    for c in np.unique(labels):
        need = int((labels == c).sum())
        have = held_out[all_labels[held_out] == c]
        if len(have) < need:
            raise ValueError(
                f"the real-data floor needs {need} held-out {split} images of class {c} but only {len(have)} "
                f"follow the first reference_limit={reference_limit}; use fewer samples or a smaller reference"
            )
        chosen.append(have[:need])
    indices = np.sort(np.concatenate(chosen))
    images, floor_labels = fmnist_reference_images(image_size, split)
    return images[indices], floor_labels[indices], indices
