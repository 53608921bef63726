"""The built-in classifier's recipe: pooling, dropout, augmentation and learning-rate schedule fields."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from groupdiff.data.datasets import fmnist_dataset
from groupdiff.encoders.classifier import SmallCNN, augment_batch, load_classifier, save_classifier, train_classifier
from groupdiff.encoders.config import ClassifierConfig

TINY = dict(width=4, feature_dim=8, epochs=1, batch_size=32, train_limit=128, eval_limit=64)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread."""


@pytest.fixture(scope="module")
def data():
    return fmnist_dataset("train", 32, TINY["train_limit"]), fmnist_dataset("test", 32, TINY["eval_limit"])


def test_augmentation_is_a_mirror_and_a_batch_shift():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(0), flip=False, shift=0), x)
    flipped = [augment_batch(x, torch.Generator().manual_seed(s), flip=True, shift=0) for s in range(8)]
    for out in flipped:  # each image is itself or its left-right mirror
        assert all(torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1)) for i in range(2))
    assert any(not torch.equal(out, x) for out in flipped)
    shifted = [augment_batch(x, torch.Generator().manual_seed(s), flip=False, shift=1) for s in range(8)]
    rolls = [torch.roll(x, (dy, dx), (2, 3)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert all(any(torch.equal(out, r) for r in rolls) for out in shifted)  # one roll for the whole batch
    assert any(not torch.equal(out, x) for out in shifted)


def test_pooling_sets_the_feature_layer_and_old_files_load_as_mean_pooling(tmp_path):
    flat, mean = SmallCNN(width=4, image_size=32, pooling="flatten"), SmallCNN(width=4, image_size=32, pooling="mean")
    assert flat.hidden.in_features == 16 * 4 * 4 and mean.hidden.in_features == 16
    x = torch.randn(3, 1, 32, 32)
    assert flat.eval().features(x).shape == mean.eval().features(x).shape == (3, 128)
    with pytest.raises(ValueError, match="pooling='max'"):
        SmallCNN(pooling="max")
    with pytest.raises(ValueError, match="divisible by 8.*got 20"):
        SmallCNN(image_size=20, pooling="flatten")
    # a file written before pooling/dropout existed: arch without them = global average pool
    path = tmp_path / "old.safetensors"
    save_classifier(mean, path)
    state = load_file(str(path))
    old_arch = {k: v for k, v in mean.arch.items() if k not in ("pooling", "dropout")}
    save_file(state, str(path), metadata={"arch": json.dumps(old_arch), "extra": "{}"})
    loaded, _ = load_classifier(path)
    assert loaded.pooling == "mean"
    torch.testing.assert_close(loaded.features(x), mean.features(x))


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = SmallCNN(width=4, dropout=0.5, pooling="flatten")
    x = torch.randn(4, 1, 32, 32)
    model.train()
    assert not torch.equal(model.embedding(x), model.embedding(x))
    model.eval()
    assert torch.equal(model.embedding(x), model.embedding(x))


@pytest.mark.parametrize("field,value", [("augment_flip", True), ("augment_shift", 2), ("dropout", 0.0),
                                         ("pooling", "mean"), ("lr", 1e-3), ("epochs", 2)])
def test_every_recipe_field_changes_the_trained_weights(field, value, data, tmp_path):
    train, test = data
    base = ClassifierConfig(**TINY)
    assert getattr(base, field) != value
    weights = []
    for i, cfg in enumerate((base, base.model_copy(update={field: value}))):
        metrics = train_classifier(train, test, cfg, tmp_path / f"{i}.safetensors")
        assert metrics["train_seconds"] > 0 and metrics["eval_images"] == TINY["eval_limit"]
        weights.append(load_file(str(tmp_path / f"{i}.safetensors")))
    shared = [k for k in weights[0] if k in weights[1] and weights[0][k].shape == weights[1][k].shape]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in shared) or weights[0].keys() != weights[1].keys() \
        or any(weights[0][k].shape != weights[1][k].shape for k in weights[0])


def test_learning_rate_decays_to_zero_by_cosine(data, tmp_path, monkeypatch):
    """The schedule: lr_step = lr * (1 + cos(pi * step / total)) / 2 over every step of every epoch."""
    import math

    seen = []
    original = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    train, test = data
    cfg = ClassifierConfig(**{**TINY, "epochs": 2})
    train_classifier(train, test, cfg, tmp_path / "c.safetensors")
    total = 2 * (TINY["train_limit"] // TINY["batch_size"])
    assert seen == pytest.approx([cfg.lr * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)])
