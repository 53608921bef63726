"""The train-classifier, embed (classifier encoder) and encode-latents commands end to end."""
from __future__ import annotations

import json

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import save_file

from groupdiff.cli import main
from groupdiff.data.latents import LatentDataset
from groupdiff.encoders.classifier import load_classifier
from groupdiff.grouping.embed import load_embeddings


def test_train_classifier_then_embed_with_it(tmp_path, capsys):
    clf = tmp_path / "clf.safetensors"
    assert main(["train-classifier", "--set", "embed.classifier.train_limit=512", "--set", "embed.classifier.eval_limit=256",
                 "--set", "embed.classifier.epochs=1", "--set", "embed.classifier.width=8", "--set", "data.image_size=16",
                 "--out", str(clf)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["train_images"] == 512 and metrics["eval_images"] == 256
    assert main(["embed", "--set", "data.split=test", "--set", "data.limit=100", "--set", "data.image_size=16",
                 "--set", "embed.encoder=classifier", "--set", f"embed.weights={clf}", "--out", str(tmp_path / "e")]) == 0
    emb = load_embeddings(tmp_path / "e")
    model, _ = load_classifier(clf)
    from groupdiff.data.datasets import fmnist_dataset

    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.embedding(fmnist_dataset("test", 16, 100).images), dim=1).numpy()
    # fp32 across batch sizes (the stage's batches vs one batch of 100): unit vectors, entries <= 1, where
    # conv kernels blocked differently round at ~1e-7; 1e-5 tolerates that and catches a wrong layer or norm.
    assert np.allclose(emb.vectors, ref, atol=1e-5) and emb.meta["encoder"] == "classifier"
    assert main(["train-classifier", "--set", "data.dataset=imagefolder", "--set", "data.root=/x", "--out", "y"]) == 2


def test_encode_latents_command(tmp_path, capsys):
    tiny = {"block_out_channels": [8], "norm_num_groups": 8, "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"]}
    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    (tmp_path / "vae.json").write_text(json.dumps(tiny))
    rng = np.random.default_rng(0)
    for i in range(5):
        (tmp_path / "imgs" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "a" / f"{i}.png")
    args = ["encode-latents", "--set", "data.dataset=imagefolder", "--set", f"data.root={tmp_path / 'imgs'}",
            "--set", "data.image_size=8", "--set", f"data.vae.weights={tmp_path / 'vae.safetensors'}",
            "--set", f"data.vae.config_json={tmp_path / 'vae.json'}", "--set", "data.vae.shard_size=2",
            "--out", str(tmp_path / "lat")]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["computed"] == [0, 1, 2] and out["complete"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == [0, 1, 2]
    ds = LatentDataset(tmp_path / "lat")
    assert len(ds) == 5 and ds.meta["digest"] == out["digest"] and ds[0][0].shape == (4, 8, 8)
