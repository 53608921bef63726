"""The score stage: built-in classifier space end to end, reference batches, caching, bad input."""
import json

import numpy as np
import pytest
import torch

from groupdiff.cli import main
from groupdiff.encoders.classifier import SmallCNN, save_classifier
from groupdiff.metrics.builtin import classifier_space, fmnist_reference_images
from groupdiff.metrics.frechet import feature_stats, frechet_distance
from groupdiff.metrics.npz import SampleBatch, read_samples_npz, write_samples_npz
from groupdiff.metrics.reference import CallableSpace, load_reference, reference_from_images
from groupdiff.metrics.score import ScoreConfig, run

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clf") / "classifier.safetensors"
    model = SmallCNN(width=4, feature_dim=8).eval()
    for p in model.parameters():  # spread the random features so distances are far from rounding noise
        torch.nn.init.normal_(p, std=0.5)
    save_classifier(model, path)
    return path


@pytest.fixture(scope="module")
def fmnist_images():
    images, labels = fmnist_reference_images(32, limit=120)
    return images, labels


def _write(path, images, labels=None, **extras):
    return write_samples_npz(path, SampleBatch(images, labels, extras))


def test_builtin_metrics_named_honestly_and_identical_sets(classifier, fmnist_images, tmp_path):
    images, labels = fmnist_images
    samples = _write(tmp_path / "s.npz", images[:60], labels[:60], s_cross=np.full(60, 0.25))
    result = run(ScoreConfig(samples=str(samples), classifier_weights=str(classifier), fmnist_reference_limit=60,
                             cache_dir=str(tmp_path / "cache")))
    m = result["metrics"]
    assert set(m) == {"fd_fmnist", "fd_fmnist_ci_low", "fd_fmnist_ci_high", "is_fmnist", "precision_fmnist",
                      "recall_fmnist", "class_agreement", "s_cross"}
    assert not any("fid" in k for k in m)
    # the samples ARE the reference (first 60 test images): distance 0, precision = recall = 1
    assert abs(m["fd_fmnist"]) < 1e-6
    assert m["precision_fmnist"] == 1.0 and m["recall_fmnist"] == 1.0
    assert m["s_cross"] == 0.25 and 1.0 <= m["is_fmnist"] <= 10.0
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["metrics"] == m and on_disk["num_samples"] == 60
    assert list((tmp_path / "cache").glob("fmnist-*.npz"))


def test_builtin_fd_matches_direct_computation(classifier, fmnist_images, tmp_path):
    images, _ = fmnist_images
    samples = _write(tmp_path / "s.npz", images[60:])
    m = run(ScoreConfig(samples=str(samples), classifier_weights=str(classifier), fmnist_reference_limit=60))["metrics"]
    space = classifier_space(classifier)
    a, b = feature_stats(space(images[60:])["pool"]), feature_stats(space(images[:60])["pool"])
    # the stage extracts in batches of 64, the direct call in one batch of 256: float32 rounding only
    assert m["fd_fmnist"] == pytest.approx(frechet_distance(a.mu, a.sigma, b.mu, b.sigma), rel=1e-5)
    assert m["fd_fmnist"] > 1e-3


def test_wrong_size_dtype_layout_are_refused(classifier, fmnist_images, tmp_path):
    images, _ = fmnist_images
    small = _write(tmp_path / "small.npz", images[:20, ::2, ::2])
    with pytest.raises(ValueError, match="16x16 but the fmnist classifier takes 32x32"):
        run(ScoreConfig(samples=str(small), classifier_weights=str(classifier), fmnist_reference_limit=20))
    np.savez(tmp_path / "float.npz", arr_0=images[:4].astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        read_samples_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "nchw.npz", arr_0=images[:4].transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="looks like NCHW"):
        read_samples_npz(tmp_path / "nchw.npz")
    np.savez(tmp_path / "noarr.npz", images=images[:4])
    with pytest.raises(ValueError, match="arr_0"):
        read_samples_npz(tmp_path / "noarr.npz")
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        run(ScoreConfig(samples=str(_write(tmp_path / "ok.npz", images[:8]))))


def _cheap_inception(calls):
    def fn(images):
        calls.append(len(images))
        x = images.reshape(len(images), -1).astype(np.float64)
        return {"pool": x[:, :6], "spatial": x[:, 6:10], "logits": x[:, :4]}

    return CallableSpace(name="inception", digest="cheap", fn=fn)


def test_a_pixel_dataset_version_is_a_reference_like_the_npz_of_its_images(tmp_path):
    from groupdiff.data.sharded import ShardWriter

    images = np.random.default_rng(2).integers(0, 256, (12, 3, 4, 4), dtype=np.uint8)
    writer = ShardWriter(tmp_path / "version", "pixels", (3, 4, 4), ["a", "b"], shard_size=5)
    writer.add(images, np.arange(12) % 2)
    writer.close({}, {})
    np.savez(tmp_path / "ref.npz", arr_0=images.transpose(0, 2, 3, 1))
    space = _cheap_inception([])
    from_version, from_npz = load_reference(tmp_path / "version", space), load_reference(tmp_path / "ref.npz", space)
    np.testing.assert_array_equal(from_version.pool_features, from_npz.pool_features)
    np.testing.assert_array_equal(from_version.pool.sigma, from_npz.pool.sigma)
    assert from_version.image_size == (4, 4)


def test_adm_reference_batch_precomputed_statistics_win_and_cache(tmp_path):
    rng = np.random.default_rng(0)
    ref_images = rng.integers(0, 256, (30, 4, 4, 1), dtype=np.uint8)
    given_mu, given_sigma = np.arange(6.0), np.eye(6) * 3
    np.savez(tmp_path / "ref.npz", arr_0=ref_images, mu=given_mu, sigma=given_sigma,
             mu_s=np.zeros(4), sigma_s=np.eye(4))
    calls = []
    space = _cheap_inception(calls)
    ref = load_reference(tmp_path / "ref.npz", space, tmp_path / "cache")
    np.testing.assert_array_equal(ref.pool.mu, given_mu)  # ADM statistics used as given
    assert ref.pool_features.shape == (30, 6) and calls == [30]  # images still give P/R features
    load_reference(tmp_path / "ref.npz", space, tmp_path / "cache")
    assert calls == [30]  # second time from the cache
    samples = _write(tmp_path / "s.npz", rng.integers(0, 256, (20, 4, 4, 1), dtype=np.uint8))
    m = run(ScoreConfig(samples=str(samples), spaces=["inception"]), spaces={"inception": (space, ref)})["metrics"]
    feats = space(read_samples_npz(samples).images)
    s = feature_stats(feats["pool"])
    assert m["fid"] == pytest.approx(frechet_distance(s.mu, s.sigma, given_mu, given_sigma))
    assert {"fid", "sfid", "is", "precision", "recall"} <= set(m)
    # statistics only (no images): fid and sfid, no precision/recall
    np.savez(tmp_path / "stats.npz", mu=given_mu, sigma=given_sigma)
    only = load_reference(tmp_path / "stats.npz", space)
    assert only.pool_features is None
    # another feature space cannot use Inception statistics
    with pytest.raises(ValueError, match="needs reference images"):
        load_reference(tmp_path / "stats.npz", CallableSpace("fmnist", "x", space.fn))


def test_reference_resolution_mismatch_is_refused(tmp_path):
    calls = []
    space = _cheap_inception(calls)
    ref = reference_from_images(np.zeros((10, 4, 4, 1), np.uint8) + np.arange(10, dtype=np.uint8)[:, None, None, None], space)
    samples = _write(tmp_path / "s.npz", np.zeros((10, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="8x8 but the inception reference images are 4x4"):
        run(ScoreConfig(samples=str(samples), spaces=["inception"]), spaces={"inception": (space, ref)})


def test_inception_end_to_end_with_random_weights(random_inception_weights, tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    samples = _write(tmp_path / "s.npz", ref.copy())
    code = main(["score", str(samples), "--space", "inception", "--reference", str(tmp_path / "ref.npz"),
                 "--inception-weights", str(random_inception_weights), "--batch-size", "6",
                 "--fd-method", "eigh",  # 2048-dim sqrtm costs tens of seconds on a shared CPU
                 "--fd-bootstrap", "10"])  # each resample is a 2048 x 2048 covariance
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert set(m) == {"fid", "fid_ci_low", "fid_ci_high", "sfid", "is", "precision", "recall"}  # no class_agreement
    assert abs(m["fid"]) < 1e-6 and abs(m["sfid"]) < 1e-6  # same images as the reference
    assert m["precision"] == 1.0 and m["recall"] == 1.0


def test_missing_inception_weights_cli_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GROUPDIFF_INCEPTION_WEIGHTS", raising=False)
    samples = _write(tmp_path / "s.npz", np.zeros((6, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((6, 8, 8, 3), np.uint8))
    code = main(["score", str(samples), "--space", "inception", "--reference", str(tmp_path / "ref.npz")])
    assert code == 2
    assert "weights-inception-2015-12-05" in capsys.readouterr().err


def test_sample_context_read_from_a_sharded_run(tmp_path):
    from groupdiff.metrics.score import sample_context

    samples = _write(tmp_path / "run" / "cfg2.5" / "samples.npz", np.zeros((4, 8, 8, 1), np.uint8))
    assert sample_context(samples) == {}  # no record at all
    record = {"weights": "raw", "config": {"guidance": {"mode": "groupdiff-l", "group_size": 4, "cfg_scale": 1.0,
                                      "interval_low": 0.25, "interval_high": 0.75},
                         "sampler": {"method": "sde-euler", "num_steps": 250, "seed": 3}}}
    (tmp_path / "run" / "sample.rank1.json").write_text(json.dumps(record))  # world_size > 1: one per rank
    context = sample_context(samples)
    assert context["mode"] == "groupdiff-l" and context["group_size"] == 4 and context["num_steps"] == 250
    assert context["cfg_scale"] == 2.5  # from the cfg<s> folder, not the config's default scale
    assert context["interval"] == [0.25, 0.75]
    assert context["weights"] == "raw"  # which checkpoint weights were sampled travels into the score
