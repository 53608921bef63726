"""``classifier`` encoder: a small CNN trained on the built-in data (``groupdiff train-classifier``).

Its penultimate layer is an embedding for group mining, and the same ``features`` / ``logits`` API
serves evaluation on the built-in data (DESIGN 1.6: metrics "in the feature space of a classifier we
train on it", named honestly, e.g. ``fd_fmnist``). Weights are one safetensors file whose metadata
holds the architecture, so loading needs nothing else.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..atomic import atomic_path
from ..data.digest import digest_arrays
from ..safeload import CheckpointError, load_tensor_file, safetensors_problem
from .base import require_weights
from .config import ClassifierConfig

WEIGHTS_HINT = "Train it first: `groupdiff train-classifier --out <path>.safetensors`, then set embed.weights=<path>."


POOLINGS = ("flatten", "mean")


class SmallCNN(nn.Module):
    """Three conv stages (width, 2*width, 4*width; BatchNorm, ReLU, 2x max-pool), then the last stage's
    map flattened (``pooling='flatten'``) or averaged (``'mean'``), dropout (training only), a
    ``feature_dim`` hidden layer (the features) and a linear classification head.

    The keyword defaults are those of classifier files written before ``pooling`` / ``dropout`` existed
    (global average pool, no dropout); new classifiers take every value from :class:`ClassifierConfig`.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 128,
                 image_size: int = 32, pooling: str = "mean", dropout: float = 0.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
        if pooling == "flatten" and image_size % 8:
            raise ValueError(f"pooling='flatten' needs an image size divisible by 8 (three 2x pools), got {image_size}")
        self.arch = {"in_channels": in_channels, "num_classes": num_classes, "width": width,
                     "feature_dim": feature_dim, "image_size": image_size, "pooling": pooling, "dropout": dropout}
        layers: list[nn.Module] = []
        c_in = in_channels
        for mult in (1, 2, 4):
            layers += [nn.Conv2d(c_in, width * mult, 3, padding=1, bias=False), nn.BatchNorm2d(width * mult),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = width * mult
        self.body = nn.Sequential(*layers)
        self.pooling = pooling
        self.drop = nn.Dropout(dropout)
        pooled = c_in * (image_size // 8) ** 2 if pooling == "flatten" else c_in
        self.hidden = nn.Linear(pooled, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate pre-activations (B, feature_dim): signed, so their cosine separates images well
        (post-ReLU features are non-negative and every pair has cosine near 1)."""
        h = self.body(images)
        h = h.flatten(1) if self.pooling == "flatten" else h.mean(dim=(2, 3))
        return self.hidden(self.drop(h))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, feature_dim) of images (B, C, S, S) in [-1, 1] (evaluation features)."""
        return F.relu(self.embedding(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)


def save_classifier(model: SmallCNN, path: Path, extra: dict | None = None) -> None:
    """Weights + architecture (and ``extra`` metrics) in one safetensors file, written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"arch": json.dumps(model.arch), "extra": json.dumps(extra or {})})


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[SmallCNN, dict]:
    """The classifier saved at ``path`` (eval mode) and its metadata."""
    p = require_weights(str(path), "classifier encoder", WEIGHTS_HINT)
    expected = f"a groupdiff classifier (.safetensors with 'arch' metadata). {WEIGHTS_HINT}"
    problem = safetensors_problem(p)
    if problem:
        raise CheckpointError(f"classifier weights file {str(p)!r} is corrupt or not safetensors ({problem}); expected {expected}")
    state = load_tensor_file(p, expected)  # validated first: a corrupt file is one clear error
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    if "arch" not in meta:
        raise CheckpointError(f"classifier weights {str(p)!r} have no 'arch' metadata; expected {expected}")
    model = SmallCNN(**json.loads(meta["arch"]))
    result = model.load_state_dict(state, strict=False) if _shapes_match(model, state) else None
    if result is None or result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"classifier weights {str(p)!r} do not match the architecture in their metadata "
                              f"({meta['arch']}); expected {expected}")
    return model.to(device).eval(), json.loads(meta.get("extra", "{}"))


def _shapes_match(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(tuple(v.shape) == tuple(own[k].shape) for k, v in state.items() if k in own)


class ClassifierEncoder:
    """Embeddings = the classifier's penultimate pre-activations (:meth:`SmallCNN.embedding`)."""

    name = "classifier"

    def __init__(self, model: SmallCNN, digest: str, device: str | torch.device = "cpu"):
        self.model, self.digest, self.device = model, digest, device

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> "ClassifierEncoder":
        model, _ = load_classifier(path, device)
        digest = digest_arrays(*[v.cpu().numpy() for v in model.state_dict().values()])
        return cls(model, digest, device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        expected = self.model.arch["in_channels"]
        if images.shape[1] != expected:
            raise ValueError(f"the classifier was trained on {expected}-channel images, got {images.shape[1]} channels "
                             f"(train one on this data with `groupdiff train-classifier`)")
        return self.model.embedding(images.to(self.device).float()).cpu()


@torch.no_grad()
def accuracy(model: SmallCNN, dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    correct = total = 0
    for x, y in loader:
        correct += (model.logits(x.float()).argmax(1) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


def augment_batch(x: torch.Tensor, gen: torch.Generator, flip: bool, shift: int) -> torch.Tensor:
    """Training augmentation of a batch (B, C, S, S): each image mirrored left-right with probability 1/2
    (``flip``), then the batch rolled by one draw of (dy, dx) in ``[-shift, shift]`` pixels."""
    if flip:
        mirrored = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)
    if shift:
        dy, dx = torch.randint(-shift, shift + 1, (2,), generator=gen).tolist()
        x = torch.roll(x, (dy, dx), (2, 3))
    return x


def train_classifier(train_set, eval_set, config: ClassifierConfig, out_path: Path) -> dict:
    """Train a :class:`SmallCNN` on ``train_set`` (an in-memory dataset with ``images`` and ``labels``),
    report its accuracy on ``eval_set`` (``eval_accuracy``: with the defaults, the whole Fashion-MNIST test
    split) and the training time, save both with the weights to ``out_path``."""
    for name, data in (("train_set", train_set), ("eval_set", eval_set)):
        if not hasattr(data, "images") or not hasattr(data, "labels"):
            raise TypeError(f"{name} must hold its images and labels in memory (.images, .labels), got {type(data).__name__}")
    torch.manual_seed(config.seed)
    images, labels = train_set.images.float(), torch.as_tensor(train_set.labels)
    model = SmallCNN(images.shape[1], train_set.num_classes, config.width, config.feature_dim, images.shape[-1],
                     config.pooling, config.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    per_epoch = max(1, len(images) // config.batch_size)  # drop the last partial batch (BatchNorm statistics)
    total = config.epochs * per_epoch
    losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for i in tqdm(range(per_epoch), desc=f"classifier epoch {epoch + 1}/{config.epochs}", unit="batch"):
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            x = augment_batch(images[idx], gen, config.augment_flip, config.augment_shift)
            step = epoch * per_epoch + i
            for group in opt.param_groups:
                group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    seconds = time.perf_counter() - started
    metrics = {"eval_accuracy": accuracy(model, eval_set), "final_loss": float(np.mean(losses[-20:])),
               "first_loss": float(np.mean(losses[:5])), "train_images": len(train_set),
               "eval_images": len(eval_set), "train_seconds": seconds, "threads": torch.get_num_threads(),
               "train_digest": train_set.digest, "config": config.model_dump()}
    save_classifier(model, out_path, metrics)
    return metrics
