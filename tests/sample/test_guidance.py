"""Guided velocity functions: CFG arithmetic, interval, GroupDiff-f/-l branch layouts, legacy channels."""
from __future__ import annotations

import pytest
import torch

from groupdiff.config import GuidanceConfig
from groupdiff.models import SiT
from groupdiff.sample import make_velocity_fn
from tests.sample.conftest import perturbed_tiny_sit

C = 2  # image channels of the tiny model


@pytest.fixture
def model() -> SiT:
    """Tiny SiT with all weights perturbed (see conftest.perturbed_tiny_sit), in float64.

    The guidance tests check exact identities: one batched forward over both branches against separate
    forwards of each half, combined by the CFG formula. In fp32 the rows of a batched forward are not
    bit-identical across batch sizes on every CPU (AVX-512/AMX kernels block differently: 3e-4 on outputs
    of ~35 here, times the guidance scale), so the identities are checked in float64, where the same
    difference is ~1e-12 and a tight tolerance is honest.
    """
    return perturbed_tiny_sit(0.3, in_channels=C).double().eval()


# float64 tolerance for "one batched forward == the formula over separate forwards": outputs reach ~35 and
# the scale multiplies differences by up to 4, so 1e-9 is ~1e3x above float64 noise and far below any
# real error (a wrong branch or scale changes the velocity by >1e-2, asserted in the tests).
TOL = dict(atol=1e-9, rtol=1e-9)


class Spy:
    """Records every forward call of a model: batch size, labels, group size, sample ids."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[dict] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x, t, y = args[:3]
        self.calls.append(dict(n=x.shape[0], t=t.clone(), y=y.clone(), group_size=kwargs.get("group_size", 1),
                               sample_ids=kwargs.get("sample_ids")))

    def clear(self):
        self.calls.clear()


def _batch(groups: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(groups * n, C, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(groups).repeat_interleave(n) % 5
    return x, y


def _t(x, value):
    return torch.full((x.shape[0],), value, dtype=torch.float64)


def _v(model, x, t, y, n=1, ids=None):
    with torch.no_grad():
        return model(x, t.to(x.dtype), y, group_size=n, sample_ids=ids)[:, :C]


MODES = [("baseline", 1), ("groupdiff-f", 4), ("groupdiff-l", 4)]


@pytest.mark.parametrize("mode,n", MODES)
def test_scale_one_is_the_conditional_prediction_in_one_forward(model, mode, n):
    x, y = _batch(3, n)
    ids = model.s_embedder.random_ids(3, n, "cpu", torch.Generator().manual_seed(1)) if n > 1 else None
    spy = Spy(model)
    fn = make_velocity_fn(model, y, GuidanceConfig(mode=mode, group_size=n, cfg_scale=1.0), sample_ids=ids)
    with torch.no_grad():
        v = fn(x, _t(x, 0.5))
    spy.handle.remove()
    cond_n = n if mode == "groupdiff-f" else 1
    assert len(spy.calls) == 1
    assert spy.calls[0]["group_size"] == cond_n and torch.equal(spy.calls[0]["y"], y)
    torch.testing.assert_close(v, _v(model, x, _t(x, 0.5), y, cond_n, ids if cond_n > 1 else None), **TOL)


def test_baseline_cfg_is_v_u_plus_s_times_difference(model):
    x, y = _batch(6, 1)
    t = _t(x, 0.6)
    s = 2.585
    fn = make_velocity_fn(model, y, GuidanceConfig(cfg_scale=s))
    with torch.no_grad():
        v = fn(x, t)
    v_c, v_u = _v(model, x, t, y), _v(model, x, t, torch.full_like(y, model.null_label))
    assert (v_c - v_u).abs().max() > 1e-2  # the branches really differ, so the check can fail
    torch.testing.assert_close(v, v_u + s * (v_c - v_u), **TOL)


def test_groupdiff_f_both_branches_joint_over_the_group(model):
    x, y = _batch(2, 4)
    t = _t(x, 0.4)
    ids = model.s_embedder.random_ids(2, 4, "cpu", torch.Generator().manual_seed(2))
    spy = Spy(model)
    fn = make_velocity_fn(model, y, GuidanceConfig(mode="groupdiff-f", group_size=4, cfg_scale=3.0), sample_ids=ids)
    with torch.no_grad():
        v = fn(x, t)
    assert len(spy.calls) == 1
    call = spy.calls[0]
    assert call["n"] == 16 and call["group_size"] == 4
    assert torch.equal(call["y"], torch.cat([y, torch.full_like(y, model.null_label)]))
    assert torch.equal(call["sample_ids"], torch.cat([ids, ids]))
    spy.handle.remove()
    null = torch.full_like(y, model.null_label)
    v_c, v_u = _v(model, x, t, y, 4, ids), _v(model, x, t, null, 4, ids)
    torch.testing.assert_close(v, v_u + 3.0 * (v_c - v_u), **TOL)


def test_groupdiff_l_conditional_per_image_unconditional_joint(model):
    x, y = _batch(2, 4)
    t = _t(x, 0.5)
    ids = model.s_embedder.random_ids(2, 4, "cpu", torch.Generator().manual_seed(3))
    spy = Spy(model)
    fn = make_velocity_fn(model, y, GuidanceConfig(mode="groupdiff-l", group_size=4, cfg_scale=2.0), sample_ids=ids)
    with torch.no_grad():
        v = fn(x, t)
    null = torch.full_like(y, model.null_label)
    assert [(c["group_size"], c["n"]) for c in spy.calls] == [(1, 8), (4, 8)]
    assert torch.equal(spy.calls[0]["y"], y) and spy.calls[0]["sample_ids"] is None
    assert torch.equal(spy.calls[1]["y"], null) and torch.equal(spy.calls[1]["sample_ids"], ids)
    spy.handle.remove()
    v_c, v_u = _v(model, x, t, y, 1), _v(model, x, t, null, 4, ids)
    torch.testing.assert_close(v, v_u + 2.0 * (v_c - v_u), **TOL)


@pytest.mark.parametrize("mode,n", MODES)
def test_outside_the_interval_no_unconditional_forward(model, mode, n):
    x, y = _batch(2, n)
    config = GuidanceConfig(mode=mode, group_size=n, cfg_scale=4.0, interval_low=0.25, interval_high=0.75)
    spy = Spy(model)
    fn = make_velocity_fn(model, y, config, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for t in (1.0, 0.9, 0.2, 0.0):
            spy.clear()
            v = fn(x, _t(x, t))
            assert len(spy.calls) == 1 and spy.calls[0]["n"] == x.shape[0]
            assert (spy.calls[0]["y"] != model.null_label).all()
            cond_n = n if mode == "groupdiff-f" else 1
            assert spy.calls[0]["group_size"] == cond_n
        for t in (0.25, 0.5, 0.75):  # closed interval, as the released sampler
            spy.clear()
            fn(x, _t(x, t))
            assert any((c["y"] == model.null_label).any() for c in spy.calls)
    assert v.shape == x.shape


def test_legacy_first_channels_guided_rest_conditional(model):
    x, y = _batch(4, 1)
    t = _t(x, 0.5)
    fn = make_velocity_fn(model, y, GuidanceConfig(cfg_scale=3.0, guide_first_channels=1))
    with torch.no_grad():
        v = fn(x, t)
    v_c, v_u = _v(model, x, t, y), _v(model, x, t, torch.full_like(y, model.null_label))
    torch.testing.assert_close(v[:, :1], (v_u + 3.0 * (v_c - v_u))[:, :1], **TOL)
    torch.testing.assert_close(v[:, 1:], v_c[:, 1:], **TOL)


def test_sample_ids_drawn_once_and_reused_every_step(model):
    x, y = _batch(3, 4)
    spy = Spy(model)
    fn = make_velocity_fn(model, y, GuidanceConfig(mode="groupdiff-f", group_size=4, cfg_scale=1.0),
                          generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for t in (1.0, 0.5, 0.1):
            fn(x, _t(x, t))
    ids = [c["sample_ids"] for c in spy.calls]
    assert all(torch.equal(ids[0], other) for other in ids[1:])
    per_group = ids[0].reshape(3, 4)
    assert all(row.unique().numel() == 4 for row in per_group)  # a permutation prefix: distinct per group


def test_float64_state_returns_float64_velocity(model):
    fp32 = model.float()  # an fp32 model integrating a float64 state (the integrators keep x in float64)
    x, y = _batch(2, 1)
    fn = make_velocity_fn(fp32, y, GuidanceConfig(cfg_scale=2.0))
    with torch.no_grad():
        v = fn(x, _t(x, 0.5))
    assert next(fp32.parameters()).dtype == torch.float32
    assert v.dtype == torch.float64 and v.shape == x.shape


def test_bad_inputs_are_clear_errors(model):
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="6 labels are not a positive multiple of guidance.group_size=4"):
        make_velocity_fn(model, y, GuidanceConfig(mode="groupdiff-f", group_size=4))
    with pytest.raises(ValueError, match="group_size=8 exceeds the model's max_group_size=4"):
        make_velocity_fn(model, torch.zeros(8, dtype=torch.long), GuidanceConfig(mode="groupdiff-l", group_size=8))
    with pytest.raises(ValueError, match="guide_first_channels=3 exceeds the model's in_channels=2"):
        make_velocity_fn(model, y, GuidanceConfig(guide_first_channels=3))
    fn = make_velocity_fn(model, y, GuidanceConfig(cfg_scale=2.0))
    x = torch.zeros(6, C, 8, 8)
    with pytest.raises(ValueError, match="one time for the whole batch"):
        fn(x, torch.linspace(0, 1, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected x with 6 images"):
        fn(x[:4], _t(x[:4], 0.5))
