"""Group attention: equivalences with plain ViT attention and group-wise invariants (DESIGN 1.2).

The equivalences are exact identities, so they are checked in float64 (modules and inputs): in fp32 two
implementations, or one implementation over a permuted or regrouped token order, differ by kernel-dependent
rounding (AVX-512/AMX kernels block differently from AVX2), which a near-zero tolerance would mistake for a
bug. In float64 that rounding is ~1e-15 of values of order 1-10, so 1e-10 is honest and still catches any
real error (a wrong reshape or mask changes outputs by >1e-3, asserted below).
"""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Attention as TimmAttention

from groupdiff.models import SiT
from groupdiff.models.layers import GroupAttention

DIM, HEADS, LENGTH = 32, 4, 9
EXACT = 1e-10  # float64 tolerance for identities (see the module docstring)
F64 = dict(dtype=torch.float64)


@pytest.fixture()
def attn_pair():
    """Our GroupAttention and timm's Attention (used by official SiT) with identical weights."""
    torch.manual_seed(0)
    ours = GroupAttention(DIM, HEADS, qkv_bias=True)
    reference = TimmAttention(DIM, num_heads=HEADS, qkv_bias=True)
    reference.load_state_dict(ours.state_dict())
    return ours.double().eval(), reference.double().eval()


def test_group_of_one_equals_plain_attention(attn_pair):
    ours, reference = attn_pair
    x = torch.randn(6, LENGTH, DIM, **F64)
    diff = (ours(x, group_size=1) - reference(x)).abs().max().item()
    assert diff <= EXACT


def test_grouped_equals_attention_over_concatenated_tokens(attn_pair):
    ours, reference = attn_pair
    groups, n = 3, 4
    x = torch.randn(groups * n, LENGTH, DIM, **F64)
    concatenated = x.reshape(groups, n * LENGTH, DIM)  # each group's images as one long sequence
    expected = reference(concatenated).reshape(groups * n, LENGTH, DIM)
    assert torch.allclose(ours(x, group_size=n), expected, atol=EXACT)
    # and it really mixes images: per-image attention gives something else
    assert not torch.allclose(ours(x, group_size=n), reference(x), atol=1e-3)


def _tiny_sit(dtype: torch.dtype = torch.float32, **kwargs) -> SiT:
    torch.manual_seed(0)
    model = SiT(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4,
                num_classes=5, learn_sigma=True, max_group_size=6, **kwargs)
    with torch.no_grad():  # adaLN-Zero makes a fresh model output 0; give every parameter some signal
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.2)
    return model.to(dtype).eval()


def test_model_group_of_one_equals_model_with_timm_attention():
    """The whole network at N=1 is plain SiT: swap every block's attention for timm's and compare."""
    model = _tiny_sit(torch.float64)
    x, t, y = torch.randn(4, 3, 8, 8, **F64), torch.rand(4, **F64), torch.randint(0, 5, (4,))
    ours = model(x, t, y, group_size=1)
    for block in model.blocks:
        reference = TimmAttention(32, num_heads=4, qkv_bias=True).double()
        reference.load_state_dict(block.attn.state_dict())
        block.attn = _IgnoreGroupSize(reference)
    plain = model(x, t, y, group_size=1)
    assert (ours - plain).abs().max().item() <= EXACT


class _IgnoreGroupSize(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, group_size=1):
        assert group_size == 1
        return self.inner(x)


def test_sample_ids_do_not_matter_for_groups_of_one():
    model = _tiny_sit()
    x, t, y = torch.randn(3, 3, 8, 8), torch.rand(3), torch.randint(0, 5, (3,))
    a = model(x, t, y, group_size=1, sample_ids=torch.tensor([0, 1, 2]))
    b = model(x, t, y, group_size=1, sample_ids=torch.tensor([5, 4, 3]))
    assert torch.equal(a, b)


def test_permuting_a_group_permutes_outputs():
    model = _tiny_sit(torch.float64)
    n = 4
    x = torch.randn(2 * n, 3, 8, 8, **F64)
    t = torch.rand(2, **F64).repeat_interleave(n)
    y = torch.tensor([1, 3]).repeat_interleave(n)
    ids = torch.tensor([2, 0, 5, 1, 3, 4, 0, 1])
    out = model(x, t, y, group_size=n, sample_ids=ids)
    perm_in_group = torch.tensor([3, 1, 0, 2])
    perm = torch.cat([perm_in_group, perm_in_group + n])
    out_perm = model(x[perm], t[perm], y[perm], group_size=n, sample_ids=ids[perm])
    assert torch.allclose(out_perm, out[perm], atol=EXACT)


def test_changing_one_group_never_changes_another():
    model = _tiny_sit()
    n = 3
    x = torch.randn(2 * n, 3, 8, 8)
    t, y = torch.rand(2 * n), torch.randint(0, 5, (2 * n,))
    ids = torch.arange(n).repeat(2)
    out = model(x, t, y, group_size=n, sample_ids=ids)
    x2 = x.clone()
    x2[n:] = torch.randn(n, 3, 8, 8) * 5
    out2 = model(x2, t, y, group_size=n, sample_ids=ids)
    assert torch.equal(out[:n], out2[:n])
    assert not torch.allclose(out[n:], out2[n:])


def test_members_of_a_group_influence_each_other():
    model = _tiny_sit()
    n = 3
    x, t, y = torch.randn(n, 3, 8, 8), torch.rand(n), torch.zeros(n, dtype=torch.long)
    ids = torch.arange(n)
    out = model(x, t, y, group_size=n, sample_ids=ids)
    x2 = x.clone()
    x2[2] += 1.0
    out2 = model(x2, t, y, group_size=n, sample_ids=ids)
    assert not torch.allclose(out[0], out2[0], atol=1e-4)


def test_random_sample_ids_are_a_permutation_prefix_per_group():
    model = _tiny_sit()
    gen = torch.Generator().manual_seed(3)
    ids = model.s_embedder.random_ids(num_groups=50, group_size=4, generator=gen).reshape(50, 4)
    assert ids.min() >= 0 and ids.max() < model.max_group_size
    assert all(len(set(row.tolist())) == 4 for row in ids)  # distinct within a group
    assert len({tuple(r) for r in ids.tolist()}) > 10  # and not the same for every group


def test_label_dropout_is_decided_per_group():
    torch.manual_seed(0)
    model = SiT(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=4,
                num_classes=5, class_dropout_prob=0.5, max_group_size=4)
    labels = torch.arange(4).repeat_interleave(4).remainder(5).repeat(25)  # 100 groups of 4
    dropped = model.y_embedder.token_drop(labels, group_size=4).reshape(-1, 4) == model.null_label
    assert (dropped.all(dim=1) | (~dropped).all(dim=1)).all()  # whole groups only
    share = dropped[:, 0].float().mean().item()
    assert 0.3 < share < 0.7


def test_time_convention_conversion_for_official_checkpoints():
    """A model marked 'noise_at_0' (official SiT) answers in our convention: v(x, t) = -v_sit(x, 1 - t)."""
    ours = _tiny_sit(torch.float64)
    official = _tiny_sit(torch.float64, time_convention="noise_at_0")
    official.load_state_dict(ours.state_dict())
    x, t, y = torch.randn(2, 3, 8, 8, **F64), torch.tensor([0.2, 0.9], **F64), torch.tensor([1, 2])
    converted = official(x, t, y)
    raw = ours(x, 1 - t, y)  # same weights read in their own convention
    assert torch.allclose(converted[:, :3], -raw[:, :3], atol=EXACT)
    assert torch.allclose(converted[:, 3:], raw[:, 3:], atol=EXACT)
