"""class_agreement, the real-data floor and the bootstrap fd interval, on the built-in data."""
import json

import numpy as np
import pytest
import torch

from groupdiff.cli import main
from groupdiff.data.datasets import fmnist_dataset
from groupdiff.encoders.classifier import accuracy, load_classifier, train_classifier
from groupdiff.encoders.config import ClassifierConfig
from groupdiff.metrics.builtin import classifier_space, fmnist_floor_images, fmnist_reference, fmnist_reference_images
from groupdiff.metrics.evaluate import class_agreement
from groupdiff.metrics.frechet import FeatureStats, bootstrap_interval, features_distance
from groupdiff.metrics.npz import SampleBatch, write_samples_npz
from groupdiff.metrics.score import ScoreConfig, run

REFERENCE = 600  # the first 600 test images are the reference in these tests
SHRUNK = ClassifierConfig(width=8, feature_dim=32, epochs=1, train_limit=3000, eval_limit=500, batch_size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained briefly (shrunk config: seconds) and its training metrics."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("clf") / "clf.safetensors"
    metrics = train_classifier(fmnist_dataset("train", 32, SHRUNK.train_limit),
                               fmnist_dataset("test", 32, SHRUNK.eval_limit), SHRUNK, path)
    return path, metrics


def _real_samples(path, start, count, shuffle_seed=None):
    images, labels = fmnist_reference_images(32)
    images, labels = images[start : start + count], labels[start : start + count].copy()
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(labels)
    return write_samples_npz(path, SampleBatch(images, labels, {}))


def test_class_agreement_of_real_images_is_the_classifier_accuracy_and_chance_when_shuffled(trained, tmp_path):
    path, metrics = trained
    assert metrics["eval_accuracy"] > 0.6  # far above chance, so the shuffled case is a real contrast
    start, count = 5000, 500
    config = dict(classifier_weights=str(path), fmnist_reference_limit=REFERENCE, fd_bootstrap=0, batch_size=512)
    own = run(ScoreConfig(samples=str(_real_samples(tmp_path / "own.npz", start, count)), **config))
    model, _ = load_classifier(path)
    test = fmnist_dataset("test", 32)
    subset = torch.utils.data.Subset(test, range(start, start + count))
    assert own["metrics"]["class_agreement"] == accuracy(model, subset)  # identical: same images, one batch
    shuffled = run(ScoreConfig(samples=str(_real_samples(tmp_path / "shuf.npz", start, count, shuffle_seed=0)),
                               **config))
    assert 0.05 <= shuffled["metrics"]["class_agreement"] <= 0.16  # chance 0.1, +-0.013 std at 500 images
    # the classifier's own test accuracy travels with every score
    assert own["metrics"]["classifier_test_accuracy"] == metrics["eval_accuracy"]
    assert own["classifier"]["test_accuracy"] == metrics["eval_accuracy"]
    assert own["classifier"]["eval_images"] == SHRUNK.eval_limit


def test_class_agreement_closed_cases():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    assert class_agreement(logits, np.array([0, 1, 2, 0])) == 1.0
    assert class_agreement(logits, np.array([1, 1, 0, 0])) == 0.5
    with pytest.raises(ValueError, match="labels span \\[0, 3\\] but the classifier has 3 classes"):
        class_agreement(logits, np.array([0, 1, 2, 3]))


def test_floor_is_disjoint_from_the_reference_and_matches_the_samples(trained, tmp_path):
    path, _ = trained
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 12)  # class-balanced like the sampler, 120 images
    noise = rng.integers(0, 256, (120, 32, 32, 1), dtype=np.uint8)
    samples = write_samples_npz(tmp_path / "noise.npz", SampleBatch(noise, labels, {}))
    result = run(ScoreConfig(samples=str(samples), classifier_weights=str(path), fmnist_reference_limit=REFERENCE))
    info, floor = result["floor_info"], result["floor"]
    assert info["num_images"] == 120 and info["first_index"] >= REFERENCE and info["reference_images"] == REFERENCE
    images, floor_labels, indices = fmnist_floor_images(32, REFERENCE, 120, labels)
    assert indices.min() >= REFERENCE and len(set(indices)) == 120
    assert np.bincount(floor_labels, minlength=10).tolist() == [12] * 10  # the samples' class balance
    reference_images, _ = fmnist_reference_images(32, limit=REFERENCE)
    as_bytes = {im.tobytes() for im in reference_images}
    assert not any(im.tobytes() in as_bytes for im in images)  # no reference image in the floor
    # the floor's fd is that of those images, computed directly, and real images beat noise by far
    space = classifier_space(path)
    reference = fmnist_reference(space, 32, limit=REFERENCE)
    assert floor["fd_fmnist"] == pytest.approx(features_distance(space(images)["pool"], reference.pool), rel=1e-9)
    assert floor["fd_fmnist"] < 0.5 * result["metrics"]["fd_fmnist"]
    assert floor["class_agreement"] > 0.6 and set(floor) >= {"fd_fmnist", "precision_fmnist", "recall_fmnist"}
    # the CLI prints the floor beside the samples' numbers
    assert main(["score", str(samples), "--classifier-weights", str(path), "--reference-limit", str(REFERENCE),
                 "--fd-bootstrap", "0", "--out", str(tmp_path / "cli.json")]) == 0
    assert json.loads((tmp_path / "cli.json").read_text())["floor"]["fd_fmnist"] == pytest.approx(floor["fd_fmnist"])


def test_floor_needs_held_out_images(trained, tmp_path):
    path, _ = trained
    samples = _real_samples(tmp_path / "s.npz", 0, 20)
    with pytest.raises(ValueError, match="reference_limit=0: the reference takes the whole test split"):
        run(ScoreConfig(samples=str(samples), classifier_weights=str(path), fmnist_reference_limit=0))
    with pytest.raises(ValueError, match="needs 2 held-out test images of class"):
        fmnist_floor_images(32, 9999, 2, np.array([3, 3]))
    no_floor = run(ScoreConfig(samples=str(samples), classifier_weights=str(path), fmnist_reference_limit=REFERENCE,
                               real_floor=False, fd_bootstrap=0))
    assert no_floor["floor"] == {}


def _gaussian(n, dim, seed):
    return np.random.default_rng(seed).normal(size=(n, dim))


def test_bootstrap_interval_brackets_fd_and_shrinks_with_more_samples():
    dim = 4
    reference = FeatureStats(np.full(dim, 0.5), np.eye(dim), 10**6)  # N(0.5, I): true fd to N(0, I) is 4 * 0.25 = 1
    widths = []
    for n in (200, 800):
        x = _gaussian(n, dim, seed=n)
        fd = features_distance(x, reference)
        low, high = bootstrap_interval(x, reference, 300, 0.95, seed=0)
        assert low < fd < high
        assert low < 1.0 < high + 0.2  # near the true value
        widths.append(high - low)
        assert bootstrap_interval(x, reference, 300, 0.95, seed=0) == (low, high)  # seeded
    # the spread of a mean-based statistic shrinks like 1 / sqrt(n): 4x the samples, about half the width
    assert 0.35 < widths[1] / widths[0] < 0.7
    narrow = bootstrap_interval(_gaussian(200, dim, 200), reference, 300, 0.5, seed=0)
    assert narrow[1] - narrow[0] < widths[0]  # lower coverage, narrower interval
    with pytest.raises(ValueError, match="level=1.5"):
        bootstrap_interval(_gaussian(10, dim, 0), reference, 10, 1.5)


@pytest.mark.slow
def test_default_classifier_reaches_90_percent_test_accuracy_and_score_reports_it(tmp_path):
    """The default config (all 60k training images) on the whole test split: >= 0.90, recorded in the file
    and in every score made with it. Minutes on 2 CPU cores."""
    torch.set_num_threads(2)
    config = ClassifierConfig()
    path = tmp_path / "default.safetensors"
    metrics = train_classifier(fmnist_dataset("train", 32), fmnist_dataset("test", 32), config, path)
    assert metrics["eval_images"] == 10_000 and metrics["train_images"] == 60_000
    assert metrics["eval_accuracy"] >= 0.90, metrics["eval_accuracy"]
    samples = _real_samples(tmp_path / "s.npz", 9000, 100)
    scored = run(ScoreConfig(samples=str(samples), classifier_weights=str(path), fd_bootstrap=0))
    assert scored["metrics"]["classifier_test_accuracy"] == metrics["eval_accuracy"]
