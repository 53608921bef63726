"""Inception score and k-NN precision/recall on cases with known answers."""
import numpy as np
import pytest

from groupdiff.metrics.fidelity import inception_score, precision_recall


def test_uniform_classifier_scores_one():
    assert inception_score(np.zeros((50, 10)))[0] == pytest.approx(1.0, abs=1e-12)


def test_confident_classifier_on_balanced_classes_scores_class_count():
    classes = 7
    logits = np.full((classes * 6, classes), -50.0)
    logits[np.arange(classes * 6), np.arange(classes * 6) % classes] = 50.0
    assert inception_score(logits)[0] == pytest.approx(classes, rel=1e-9)
    mean, std = inception_score(logits, splits=6)
    assert mean == pytest.approx(classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_confident_classifier_on_one_class_scores_one():
    logits = np.zeros((20, 5))
    logits[:, 2] = 80.0
    assert inception_score(logits)[0] == pytest.approx(1.0, abs=1e-9)


def test_precision_recall_identical_sets_are_one():
    x = np.random.default_rng(0).normal(size=(64, 8))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_precision_recall_far_apart_sets_are_zero():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(64, 8)), rng.normal(size=(64, 8)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_mode_collapse_keeps_precision_drops_recall():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(200, 2))
    fake = real[:40] * 0.1  # all near the centre of the real distribution
    precision, recall = precision_recall(real, fake)
    assert precision == 1.0
    assert recall < 0.5


def test_bad_shapes():
    with pytest.raises(ValueError, match="one width"):
        precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(np.zeros((3, 3)), np.zeros((10, 3)))
