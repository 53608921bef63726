"""Parts of the trainer in isolation: parameter groups, EMA, warm-up, step draws, neighbours, probe layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from groupdiff.grouping.plans import build_epoch_plan
from groupdiff.models import build_model
from groupdiff.train.data import class_neighbours, draw_step
from groupdiff.train.optim import EMA, no_decay_names, param_groups, warmup_factor
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
