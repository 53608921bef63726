"""The linear interpolant (t = 1 noise) and the conversions a velocity implies."""
from __future__ import annotations

import pytest
import torch

from groupdiff.transport import LinearPath


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return x0, eps, t


def test_endpoints_and_velocity_is_time_derivative():
    x0, eps, t = _data()
    torch.testing.assert_close(LinearPath.interpolate(x0, eps, 0.0), x0)
    torch.testing.assert_close(LinearPath.interpolate(x0, eps, 1.0), eps)
    h = 1e-6
    fd = (LinearPath.interpolate(x0, eps, t + h) - LinearPath.interpolate(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(fd, LinearPath.velocity(x0, eps), atol=1e-8, rtol=1e-6)


def test_conversions_recover_data_and_noise_from_the_true_velocity():
    x0, eps, t = _data(1)
    xt = LinearPath.interpolate(x0, eps, t)
    v = LinearPath.velocity(x0, eps)
    torch.testing.assert_close(LinearPath.x0_from_velocity(v, xt, t), x0)
    torch.testing.assert_close(LinearPath.eps_from_velocity(v, xt, t), eps)
    # score = -eps / t for the conditional path, read off the same velocity
    torch.testing.assert_close(LinearPath.score_from_velocity(v, xt, t), -eps / t.reshape(-1, 1, 1, 1))


def test_score_of_exact_velocity_is_gaussian_score(gaussian):
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    for t in (0.05, 0.3, 0.7, 1.0):
        tt = torch.full((100,), t, dtype=torch.float64)
        score = LinearPath.score_from_velocity(gaussian.velocity(x, tt), x, tt)
        torch.testing.assert_close(score, gaussian.score(x, t))


def test_official_sit_convention_is_the_mirror_image():
    """Official SiT: x = t_sit x1 + (1 - t_sit) noise, v_sit = x1 - noise; ours with t = 1 - t_sit, v = -v_sit."""
    x0, eps, t = _data(3)
    t_sit = (1 - t).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(LinearPath.interpolate(x0, eps, t), t_sit * x0 + (1 - t_sit) * eps)
    torch.testing.assert_close(LinearPath.velocity(x0, eps), -(x0 - eps))


def test_bad_time_shape_is_an_error():
    x0, eps, _ = _data()
    with pytest.raises(ValueError, match=r"shape \(6,\), got shape \(5,\)"):
        LinearPath.interpolate(x0, eps, torch.rand(5))
