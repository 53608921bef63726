"""Parts of the trainer in isolation: parameter groups, EMA, warm-up, step draws, neighbours, probe layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from groupdiff.grouping.plans import build_epoch_plan
from groupdiff.models import build_model
from groupdiff.train.data import class_neighbours, draw_step
from groupdiff.train.config import TrainConfig
from groupdiff.train.optim import EMA, ema_decay_at, no_decay_names, param_groups, warmup_factor
from groupdiff.train.probe import shuffle_permutation


def test_no_weight_decay_on_norm_bias_embeddings_and_pos_embed_frozen(tiny_config):
    model = build_model(tiny_config().model)
    groups = param_groups(model, 0.01)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    skipped = set(no_decay_names(model))
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert "y_embedder.embedding_table.weight" in skipped and "s_embedder.embedding_table.weight" in skipped
    assert all(n.endswith(".bias") is False for n in names)
    assert all("embedding_table" not in n for n in names)
    assert "blocks.0.attn.qkv.weight" in names and "x_embedder.proj.weight" in names
    in_optimizer = sum(len(g["params"]) for g in groups)
    assert in_optimizer == sum(1 for p in model.parameters() if p.requires_grad)
    assert all(p is not model.pos_embed for g in groups for p in g["params"])


def test_ema_follows_the_closed_form():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    start = model.weight.detach().clone()
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(5):
        ema.update(model)
    expected = 0.9**5 * start + (1 - 0.9**5) * torch.ones_like(start)
    torch.testing.assert_close(ema.shadow["weight"], expected, rtol=0, atol=1e-6)


def _constant_weights_ema(config: TrainConfig, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(init, target, EMA after k updates with the weights held at ``target``) under ``config``'s schedule."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    start = model.weight.detach().clone()
    ema = EMA(model, lambda s: ema_decay_at(s, config))
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(k):
        ema.update(model, step)
    return start, torch.ones_like(start), ema.shadow["weight"]


@pytest.mark.parametrize("k", [1, 5, 40])
def test_ramp_ema_after_k_steps_of_constant_weights_is_the_closed_form(k):
    """ramp: prod_{s<k} (1+s)/(10+s) = k! 9! / (k+9)! = 1 / C(k+9, 9) of the init is left."""
    from math import comb

    config = TrainConfig(ema_decay=1.0, ema_warmup="ramp", ema_ramp_offset=10)
    start, target, ema = _constant_weights_ema(config, k)
    left = 1.0 / comb(k + 9, 9)
    torch.testing.assert_close(ema, left * start + (1 - left) * target, rtol=0, atol=1e-6)
    assert left <= 0.1  # 90% of the init is forgotten at the first update already


def test_ramp_ema_is_capped_at_ema_decay():
    """Capped: the ramp runs until (1+s)/(10+s) exceeds ema_decay, then the decay is constant."""
    from math import prod

    config = TrainConfig(ema_decay=0.8, ema_warmup="ramp", ema_ramp_offset=10)
    k = 60
    ramp = [(1 + s) / (10 + s) for s in range(k)]
    assert ramp[0] < 0.8 < ramp[-1]  # both regimes occur
    left = prod(min(0.8, r) for r in ramp)
    start, target, ema = _constant_weights_ema(config, k)
    torch.testing.assert_close(ema, left * start + (1 - left) * target, rtol=0, atol=1e-6)
    assert ema_decay_at(k, config) == 0.8 and ema_decay_at(0, config) == pytest.approx(0.1)


def test_power_ema_weights_each_step_as_the_closed_form():
    """power (EDM2): prod_{t'=t+1..k} (1 - 1/t')^(g+1) = (t/k)^(g+1), so the EMA after k steps of weights
    theta_t is sum_t theta_t (t^(g+1) - (t-1)^(g+1)) / k^(g+1): the init has weight 0."""
    gamma, k = 2.5, 30
    config = TrainConfig(ema_decay=1.0, ema_warmup="power", ema_power_gamma=gamma)
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, lambda s: ema_decay_at(s, config))
    for step in range(k):
        with torch.no_grad():
            model.weight.fill_(float(step + 1))  # theta_t = t
        ema.update(model, step)
    e = gamma + 1
    expected = sum(t * (t**e - (t - 1) ** e) for t in range(1, k + 1)) / k**e
    assert ema.shadow["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(e / (e + 1) * k, rel=0.05)  # ~ the mean of t under density t^gamma


def test_every_ema_field_changes_the_schedule():
    base = TrainConfig(ema_decay=0.999)
    steps = range(0, 400, 7)

    def schedule(**update):
        return [ema_decay_at(s, base.model_copy(update=update)) for s in steps]

    ramp = schedule(ema_warmup="ramp")
    assert schedule(ema_warmup="none") == [0.999] * len(ramp)
    assert schedule(ema_warmup="power") != ramp
    assert schedule(ema_ramp_offset=20.0) != ramp
    assert schedule(ema_warmup="power", ema_power_gamma=3.0) != schedule(ema_warmup="power")
    assert schedule(ema_decay=0.9) != ramp and max(schedule(ema_decay=0.9)) == 0.9
    # the reason for the warm-up: 400 steps without it leave 0.999^400 = 0.67 of the init in the EMA
    from math import prod

    assert prod(0.999 for _ in range(400)) > 0.6
    assert prod(ema_decay_at(s, base) for s in range(400)) < 1e-15


def test_bad_ema_settings_name_the_field():
    with pytest.raises(ValueError, match="ema_ramp_offset"):
        TrainConfig(ema_ramp_offset=1.0)
    with pytest.raises(ValueError, match="ema_warmup"):
        TrainConfig(ema_warmup="linear")


def test_warmup_is_linear_then_constant():
    f = warmup_factor(4)
    assert [f(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0)(0) == 1.0


@pytest.mark.parametrize("variant", ["baseline", "groupdiff-f", "groupdiff-l"])
def test_rank_shares_concatenate_to_the_single_rank_draw(variant, fmnist_small, tiny_config):
    """The draws are keyed by step, not rank: two ranks together see exactly what one rank sees."""
    cfg = tiny_config(f"train.variant={variant}", "train.group_ratio=0.5")
    images, labels = fmnist_small
    model = build_model(cfg.model)
    nb = class_neighbours(labels.numpy(), 8, 0)
    plan = build_epoch_plan(variant, len(labels), 32, cfg.train.effective_group_size, 0, 0, nb, group_ratio=0.5)
    for step, batch in enumerate(plan[:4]):
        one = draw_step(batch, images, labels, cfg, step, 0, 1, model)
        two = [draw_step(batch, images, labels, cfg, step, r, 2, model) for r in range(2)]
        assert set(two[0].indices).isdisjoint(two[1].indices)
        for field in ("x0", "y", "t", "noise"):
            torch.testing.assert_close(torch.cat([getattr(s, field) for s in two]), getattr(one, field), rtol=0, atol=0)
        n = batch.group_size
        assert (one.t.view(-1, n) == one.t.view(-1, n)[:, :1]).all()  # one timestep per group
        null = (one.y == model.null_label).view(-1, n)
        assert (null == null[:, :1]).all()  # label dropout decided per group
        if batch.unconditional:
            assert (one.y == model.null_label).all()


def test_label_dropout_rate_matches_the_config(fmnist_small, tiny_config):
    cfg = tiny_config("train.variant=groupdiff-f", "model.class_dropout_prob=0.25")
    images, labels = fmnist_small
    model = build_model(cfg.model)
    plan = build_epoch_plan("groupdiff-f", len(labels), 32, 4, 0, 0, None)
    dropped = [draw_step(b, images, labels, cfg, s, 0, 1, model).y.view(-1, 4)[:, 0] == model.null_label
               for s in range(200) for b in plan[:1]]
    rate = torch.cat(dropped).float().mean().item()
    assert abs(rate - 0.25) < 0.04


def test_class_neighbours_are_same_class_and_never_self():
    labels = np.repeat(np.arange(5), 7)
    nb = class_neighbours(labels, 4, seed=1)
    assert nb.shape == (35, 4)
    assert (labels[nb] == labels[:, None]).all()
    assert (nb != np.arange(35)[:, None]).all()
    assert len({tuple(r) for r in nb}) == 35


def test_shuffled_groups_hold_members_of_different_planned_groups():
    groups, n = 6, 4
    perm = shuffle_permutation(groups, n)
    origin = torch.arange(groups).repeat_interleave(n)[perm].view(groups, n)
    assert sorted(perm.tolist()) == list(range(groups * n))
    assert all(len(set(row.tolist())) == n for row in origin)
