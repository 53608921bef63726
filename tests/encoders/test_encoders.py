"""Encoders: pixels (+PCA), classifier (train, features/logits, save/load), tiny CLIP and DINOv2 from local files."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from groupdiff.data.datasets import fmnist_dataset
from groupdiff.encoders.factory import build_encoder
from groupdiff.encoders.classifier import ClassifierEncoder, load_classifier, train_classifier
from groupdiff.encoders.config import ClassifierConfig
from groupdiff.encoders.pixels import PixelEncoder
from groupdiff.grouping.config import EmbedConfig

torch.set_num_threads(2)


def test_pixels_raw_and_pca_preserves_distances():
    x = torch.randn(40, 1, 8, 8)
    raw = PixelEncoder.create(0, None)
    assert torch.equal(raw.encode(x), x.flatten(1))
    # 40 centred points span 39 dimensions: a 39-component PCA is a rotation of them
    pca = PixelEncoder.create(39, lambda: x)
    z = pca.encode(x)
    assert z.shape == (40, 39)
    assert torch.allclose(torch.cdist(z.double(), z.double()), torch.cdist(x.flatten(1).double(), x.flatten(1).double()), atol=1e-4)
    centred = PixelEncoder.create(0, lambda: x, center=True)
    assert torch.allclose(centred.encode(x), x.flatten(1) - x.flatten(1).mean(0), atol=1e-5)
    assert centred.digest != raw.digest
    with pytest.raises(ValueError, match="pca_dim=100"):
        PixelEncoder.create(100, lambda: x)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "clf.safetensors"
    cfg = ClassifierConfig(width=8, feature_dim=32, epochs=6, batch_size=64, lr=3e-3)
    metrics = train_classifier(fmnist_dataset("train", 32, 1500), fmnist_dataset("test", 32, 500), cfg, path)
    return path, metrics


def test_classifier_learns_and_roundtrips(classifier_file):
    path, metrics = classifier_file
    assert metrics["eval_accuracy"] > 0.5  # chance is 0.1
    assert metrics["final_loss"] < metrics["first_loss"]
    model, extra = load_classifier(path)
    assert extra["eval_accuracy"] == metrics["eval_accuracy"]
    x = fmnist_dataset("test", 32, 16).images
    with torch.no_grad():
        feats = model.features(x)
        assert torch.allclose(model.logits(x), model.head(feats))
    enc = build_encoder(EmbedConfig(encoder="classifier", weights=str(path)))
    assert torch.allclose(torch.relu(enc.encode(x)), feats) and (enc.encode(x) < 0).any()
    assert enc.digest == ClassifierEncoder.load(str(path)).digest
    with pytest.raises(ValueError, match="1-channel images, got 3"):
        enc.encode(torch.zeros(2, 3, 32, 32))


def test_missing_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        build_encoder(EmbedConfig(encoder="classifier", weights=str(tmp_path / "x.safetensors")))
    with pytest.raises(FileNotFoundError, match="embed.weights=<local path>"):
        build_encoder(EmbedConfig(encoder="clip", weights=""))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder(EmbedConfig(encoder="dinov2", weights=str(tmp_path / "dino.pth")))


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}}


def test_tiny_clip_from_local_file(tmp_path):
    import open_clip

    cfg_path = tmp_path / "tiny-clip-test.json"
    cfg_path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    ref = open_clip.create_model("tiny-clip-test").eval()
    torch.save(ref.state_dict(), tmp_path / "tiny.pt")
    enc = build_encoder(EmbedConfig(encoder="clip", clip_arch="tiny-clip-test", clip_config=str(cfg_path),
                                    weights=str(tmp_path / "tiny.pt")))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    mean = torch.tensor(ref.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ref.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.encode_image(((x + 1) / 2).expand(-1, 3, -1, -1).sub(mean).div(std))
    assert torch.allclose(enc.encode(x), expected, atol=1e-5)


def test_tiny_dinov2_from_local_file(tmp_path):
    import timm

    args = {"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch14_dinov2", num_classes=0, **args).eval()
    torch.save(ref.state_dict(), tmp_path / "dino.pth")
    enc = build_encoder(EmbedConfig(encoder="dinov2", dinov2_arch="vit_small_patch14_dinov2",
                                    dinov2_model_args=args, weights=str(tmp_path / "dino.pth")))
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref(((x + 1) / 2 - mean) / std)
    assert torch.allclose(enc.encode(x), expected, atol=1e-5)
    # resized input path: 32x32 images are resized to the model's 28x28
    assert enc.encode(torch.zeros(1, 1, 32, 32)).shape == (1, 32)
