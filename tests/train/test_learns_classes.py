"""A class-conditional model's first duty is to draw its class: a short training of the tiny preset on the
built-in data gives samples that the built-in classifier assigns to the conditioned class far above chance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from groupdiff.config import load_preset
from groupdiff.data.datasets import fmnist_dataset
from groupdiff.encoders.classifier import load_classifier, train_classifier
from groupdiff.encoders.config import ClassifierConfig
from groupdiff.metrics.evaluate import class_agreement
from groupdiff.sample.generate import class_balanced_labels, generate
from groupdiff.sample.stage import load_model_and_config
from groupdiff.train.trainer import train

STEPS = 600  # ~1 min at one thread on 2 shared cores (the preset's 2400 take ~4)
SAMPLES = 200  # 20 per class
# Measured here at 600 steps (EMA weights, Heun 12 steps, cfg 1.5, a 1-epoch classifier of ~0.83 accuracy): see
# the assertion's comment; chance is 0.1.
MIN_AGREEMENT = 0.45


@pytest.mark.slow
def test_short_training_draws_the_conditioned_classes(tmp_path, one_torch_thread):
    config = load_preset("tiny-fmnist", [f"train.steps={STEPS}", f"train.checkpoint_every={STEPS}",
                                         "train.log_every=100", "train.probe_every=0", "train.num_threads=1"])
    result = train(config, tmp_path / "run")
    model, config = load_model_and_config(result.checkpoint, weights="ema")
    labels = class_balanced_labels(SAMPLES, config.model.num_classes, 1)
    size = config.data.image_size
    images = generate(model, labels, config.sampler, config.guidance, (1, size, size))

    clf_config = ClassifierConfig(epochs=1, train_limit=20_000, eval_limit=2000)
    metrics = train_classifier(fmnist_dataset("train", size, clf_config.train_limit),
                               fmnist_dataset("test", size, clf_config.eval_limit), clf_config, tmp_path / "clf.st")
    classifier, _ = load_classifier(tmp_path / "clf.st")
    with torch.no_grad():
        logits = classifier.logits(images.clamp(-1, 1)).numpy()
    agreement = class_agreement(logits, labels.numpy())
    shuffled = class_agreement(logits, np.random.default_rng(0).permutation(labels.numpy()))
    print(f"class agreement {agreement:.3f} (shuffled labels {shuffled:.3f}, classifier accuracy "
          f"{metrics['eval_accuracy']:.3f})")
    assert metrics["eval_accuracy"] > 0.75
    assert shuffled < 0.25  # the same images against the wrong classes: chance
    assert agreement >= MIN_AGREEMENT
