"""Batch arithmetic and the generated DeepSpeed config: one source of truth, errors on inconsistent numbers."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from groupdiff.train.config import TrainConfig
from groupdiff.train.ds_config import batch_layout, deepspeed_config, use_bf16


@pytest.mark.parametrize("world,micro,acc", [(1, 0, 1), (2, 16, 2), (4, 8, 2), (8, 8, 1), (1, 4, 16)])
def test_layout_multiplies_back_to_the_global_batch(world, micro, acc):
    cfg = TrainConfig(variant="groupdiff-f", group_size=4, global_batch_images=64, micro_batch_images=micro)
    layout = batch_layout(cfg, world)
    assert layout.accumulation == acc
    assert layout.micro_images * layout.accumulation * world == 64
    ds = deepspeed_config(cfg, world, "cpu")
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world


def test_world_size_that_would_split_a_group_is_refused():
    cfg = TrainConfig(variant="groupdiff-f", group_size=4, global_batch_images=32)
    with pytest.raises(ValueError, match="world_size=3"):
        batch_layout(cfg, 3)
    assert batch_layout(cfg, 8).rank_images == 4  # 8 groups over 8 ranks: one whole group each
    with pytest.raises(ValueError, match="world_size\\*N=64"):
        batch_layout(cfg, 16)


def test_micro_batch_must_divide_the_rank_share():
    cfg = TrainConfig(global_batch_images=64, micro_batch_images=24, variant="baseline")
    with pytest.raises(ValueError, match="micro_batch_images=24"):
        batch_layout(cfg, 2)


def test_config_refuses_batches_of_partial_groups():
    with pytest.raises(ValidationError, match="global_batch_images=30 is not divisible by train.group_size=4"):
        TrainConfig(variant="groupdiff-l", group_size=4, global_batch_images=30)
    with pytest.raises(ValidationError, match="micro_batch_images=6"):
        TrainConfig(variant="groupdiff-f", group_size=4, global_batch_images=32, micro_batch_images=6)
    # the baseline is N=1 whatever group_size says
    assert TrainConfig(variant="baseline", group_size=4, global_batch_images=30).effective_group_size == 1


def test_precision_and_zero_sections():
    cfg = TrainConfig(zero_stage=2, grad_clip=3.0, offload_optimizer=True)
    ds = deepspeed_config(cfg, 1, "cuda")
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu" and ds["optimizer"]["type"] == "AdamW"
    assert ds["gradient_clipping"] == 3.0
    assert not deepspeed_config(TrainConfig(), 1, "cpu")["bf16"]["enabled"]
    assert not use_bf16(TrainConfig(precision="fp32"), "cuda")
    assert use_bf16(TrainConfig(precision="bf16"), "cpu") and not use_bf16(TrainConfig(), "cpu")
    with pytest.raises(ValidationError, match="zero_stage >= 1"):
        TrainConfig(offload_optimizer=True, zero_stage=0)


@pytest.mark.parametrize("bad", ["pretrained:", "pretrained", "imagenet"])
def test_init_from_must_be_scratch_or_pretrained_path(bad):
    with pytest.raises(ValidationError, match="init_from"):
        TrainConfig(init_from=bad)
