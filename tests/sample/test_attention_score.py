"""S_cross: closed-form cases of the score, the hooked attention mass against an explicit computation."""
import math

import pytest
import torch

from groupdiff.config import ModelConfig
from groupdiff.models import build_model
from groupdiff.models.layers import GroupAttention
from groupdiff.sample.attention_score import CrossAttentionRecorder, attention_mass, cross_sample_score

torch.set_num_threads(1)


def test_uniform_attention_scores_zero():
    n = 5
    assert torch.equal(cross_sample_score(torch.full((3, n, n), 1.0 / n)), torch.zeros(3, n))


def test_group_of_two_scores_zero():
    mass = torch.softmax(torch.randn(7, 2, 2), dim=-1)
    assert torch.allclose(cross_sample_score(mass), torch.zeros(7, 2))


def test_attention_on_one_member_scores_one_minus_inverse_count():
    n = 4
    mass = torch.zeros(n, n)
    for i in range(n):
        mass[i, i] = 0.7
        mass[i, (i + 1) % n] = 0.3  # everything else on a single other member
    expected = 1.0 - 1.0 / (n - 1)
    assert torch.allclose(cross_sample_score(mass), torch.full((n,), expected))


def test_score_ignores_self_attention():
    mass = torch.tensor([[0.9, 0.05, 0.05], [0.0, 0.5, 0.5], [0.2, 0.4, 0.4]])
    s = cross_sample_score(mass)
    assert s[0] == 0.0  # others equal
    assert s[1] == pytest.approx((0.5 - 0.25) / 0.5)  # members 0 and 2 get 0.0 and 0.5


def test_attention_mass_matches_explicit_attention_matrix():
    torch.manual_seed(0)
    g, n, length, dim, heads = 2, 3, 5, 16, 4
    attn = GroupAttention(dim, heads)
    x = torch.randn(g * n, length, dim)
    q, k, _ = attn.qkv_heads(x.reshape(g, n * length, dim))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)  # (g, h, NL, NL)
    explicit = probs.reshape(g, heads, n, length, n, length).sum(-1).mean(3).mean(1)  # (g, N, N)
    got = attention_mass(attn, x, n)
    assert torch.allclose(got, explicit, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(g, n), atol=1e-5)  # each query's mass sums to 1


def test_identical_attention_to_all_members_scores_zero():
    attn = GroupAttention(8, 2)
    torch.nn.init.zeros_(attn.qkv.weight)
    torch.nn.init.zeros_(attn.qkv.bias)  # q = k = 0: every key gets the same probability
    s = cross_sample_score(attention_mass(attn, torch.randn(8, 3, 8), group_size=4))
    assert torch.equal(s, torch.zeros(2, 4))


def _tiny_model(max_group_size=4):
    torch.manual_seed(1)
    cfg = ModelConfig(name="custom", depth=2, hidden_size=32, num_heads=2, patch_size=4, input_size=8,
                      in_channels=1, num_classes=3, learn_sigma=False, max_group_size=max_group_size)
    model = build_model(cfg).eval()
    for p in model.parameters():  # leave adaLN-zero init: attention must matter for the output
        torch.nn.init.normal_(p, std=0.2)
    return model


def test_recorder_does_not_change_outputs_and_scores_each_image():
    model = _tiny_model()
    b, n = 2, 3
    x, t, y = torch.randn(b * n, 1, 8, 8), torch.full((b * n,), 0.5), torch.zeros(b * n, dtype=torch.long)
    ids = torch.arange(n).repeat(b)
    with torch.no_grad():
        plain = model(x, t, y, group_size=n, sample_ids=ids)
        with CrossAttentionRecorder(model, b, n) as rec:
            hooked = model(x, t, y, group_size=n, sample_ids=ids)
        after = model(x, t, y, group_size=n, sample_ids=ids)
    assert torch.equal(plain, hooked) and torch.equal(plain, after)
    assert rec.calls == 2  # both blocks
    s = rec.per_image()
    assert s.shape == (b * n,) and torch.isfinite(s).all() and (s >= 0).all() and (s < 1).all()
    # the per-image value is the mean over the two layers of the per-layer scores
    inputs = {}
    hooks = [blk.attn.register_forward_hook(lambda m, a, o, i=i: inputs.__setitem__(i, a[0])) for i, blk in enumerate(model.blocks)]
    with torch.no_grad():
        model(x, t, y, group_size=n, sample_ids=ids)
    for h in hooks:
        h.remove()
    per_layer = [cross_sample_score(attention_mass(model.blocks[i].attn, inputs[i], n)).reshape(-1) for i in range(2)]
    assert torch.allclose(s.float(), (per_layer[0] + per_layer[1]) / 2, atol=1e-6)


def test_recorder_stacked_branches_window_and_pairs():
    model = _tiny_model()
    b, n = 2, 2
    x, y = torch.randn(2 * b * n, 1, 8, 8), torch.zeros(2 * b * n, dtype=torch.long)
    with torch.no_grad(), CrossAttentionRecorder(model, b, n, layers=[1]) as rec:
        model(x, torch.full((2 * b * n,), 0.3), y, group_size=n)  # cond + uncond stacked: 2B groups
    assert torch.equal(rec.count, torch.full((b * n,), 2.0, dtype=torch.float64))
    assert torch.allclose(rec.per_image(), torch.zeros(b * n, dtype=torch.float64))  # N = 2
    with torch.no_grad(), CrossAttentionRecorder(model, b, n, t_low=0.5, t_high=1.0) as rec:
        model(x[: b * n], torch.full((b * n,), 0.3), y[: b * n], group_size=n)
    assert rec.calls == 0 and torch.isnan(rec.per_image()).all()


def test_recorder_bad_layers():
    with pytest.raises(ValueError, match="out of range"):
        CrossAttentionRecorder(_tiny_model(), 1, 2, layers=[5])
