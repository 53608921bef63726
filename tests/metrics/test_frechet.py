"""Fréchet distance against closed forms and a direct scipy computation."""
import numpy as np
import pytest
from scipy import linalg

from groupdiff.metrics.frechet import FeatureStats, feature_stats, features_distance, frechet_distance, stats_distance


def _random_spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_one_dimensional_closed_form():
    # d^2 = (m1 - m2)^2 + (sd1 - sd2)^2 in one dimension
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_full_covariances_match_direct_scipy():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = _random_spd(rng, 8), _random_spd(rng, 8)
    # direct: Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), an equivalent but differently computed form
    r1 = linalg.sqrtm(s1).real
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(r1 @ s2 @ r1).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8)


def test_self_distance_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 5)), rng.normal(loc=0.5, size=(150, 5)) * 2
    a, b = feature_stats(x), feature_stats(y)
    assert abs(frechet_distance(a.mu, a.sigma, a.mu, a.sigma)) < 1e-9
    d_ab = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    d_ba = frechet_distance(b.mu, b.sigma, a.mu, a.sigma)
    assert d_ab > 1.0
    assert d_ab == pytest.approx(d_ba, rel=1e-9)


def test_ill_conditioned_covariances_give_finite_results():
    rng = np.random.default_rng(3)
    # 5 samples in 40 dimensions: rank-4 covariances, singular product
    a, b = feature_stats(rng.normal(size=(5, 40))), feature_stats(rng.normal(size=(5, 40)) + 1.0)
    d = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert np.isfinite(d)
    assert d > 0
    # a duplicated feature column (exactly singular) still matches the closed form of the diagonal case
    s = np.diag([1.0, 1e-300, 0.0])
    assert frechet_distance(np.zeros(3), s, np.ones(3), s) == pytest.approx(3.0, abs=1e-4)


def test_stats_round_trip(tmp_path):
    stats = feature_stats(np.random.default_rng(4).normal(size=(10, 3)))
    stats.save(tmp_path / "s.npz")
    back = FeatureStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert back.count == 10


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="covariances must be"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan]), [[1.0]], [0.0], [[1.0]])


def test_eigh_method_agrees_with_sqrtm():
    rng = np.random.default_rng(5)
    for dim in (1, 7, 60):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim)
        assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(
            frechet_distance(mu1, s1, mu2, s2), rel=1e-8)
    a = feature_stats(rng.normal(size=(5, 40)))  # singular: both stay finite and close
    b = feature_stats(rng.normal(size=(5, 40)) + 1.0)
    assert frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method="eigh") == pytest.approx(
        frechet_distance(a.mu, a.sigma, b.mu, b.sigma), rel=1e-4)
    with pytest.raises(ValueError, match="method"):
        frechet_distance([0.0], [[1.0]], [0.0], [[1.0]], method="svd")


def test_features_distance_low_rank_route_equals_full_computation():
    rng = np.random.default_rng(6)
    mixing = rng.normal(size=(50, 50))
    reference = feature_stats(rng.normal(size=(300, 50)) @ mixing)
    for n in (7, 50, 120):  # fewer samples than dims (exact N x N route), equal, more (D x D eigh)
        x = rng.normal(loc=0.3, size=(n, 50)) @ mixing
        full = stats_distance(feature_stats(x), reference, method="sqrtm")
        assert features_distance(x, reference) == pytest.approx(full, rel=1e-7)
        assert features_distance(x, reference, method="sqrtm") == full
    # a set against its own statistics: 0 up to rounding, also through the low-rank route
    x = rng.normal(size=(10, 50))
    assert abs(features_distance(x, feature_stats(x))) < 1e-7 * np.trace(feature_stats(x).sigma)  # sqrt of ~0 eigenvalues
    with pytest.raises(ValueError, match="means must be vectors of one length"):
        features_distance(x, feature_stats(rng.normal(size=(10, 40))))
