"""The attention dispatcher against an explicit softmax reference."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.model.attention import attention, causal_mask, varlen_attention


def reference(q, k, v, allowed=None):
    """Plain softmax attention with GQA; rows with no allowed key give zeros (flash-attn)."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (8, 2)])
def test_plain_and_grouped_query_attention_match_the_reference(heads: int, kv_heads: int) -> None:
    q, k, v = (
        rand(2, heads, 5, 16, seed=1),
        rand(2, kv_heads, 7, 16, seed=2),
        rand(2, kv_heads, 7, 16, seed=3),
    )
    torch.testing.assert_close(attention(q, k, v), reference(q, k, v), atol=1e-5, rtol=1e-5)


def test_causal_mask_is_bottom_right_aligned_when_lengths_differ() -> None:
    mask = causal_mask(2, 4, torch.device("cpu"))
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    q, k, v = rand(1, 4, 3, 8, seed=4), rand(1, 2, 6, 8, seed=5), rand(1, 2, 6, 8, seed=6)
    allowed = causal_mask(3, 6, torch.device("cpu"))
    out = attention(q, k, v, causal=True)
    torch.testing.assert_close(out, reference(q, k, v, allowed), atol=1e-5, rtol=1e-5)
    # The last query sees every key, exactly like an uncausal single query.
    torch.testing.assert_close(out[:, :, -1:], attention(q[:, :, -1:], k, v), atol=1e-6, rtol=1e-6)


def test_queries_with_no_visible_key_give_zeros_not_nan() -> None:
    q, k, v = rand(1, 2, 5, 8, seed=7), rand(1, 2, 3, 8, seed=8), rand(1, 2, 3, 8, seed=9)
    out = attention(q, k, v, causal=True)  # first two queries precede every key
    assert not out.isnan().any()
    assert out[:, :, :2].abs().max() == 0
    torch.testing.assert_close(out, reference(q, k, v, causal_mask(5, 3, q.device)))


def test_key_mask_hides_padding_per_row() -> None:
    q, k, v = rand(2, 4, 1, 8, seed=10), rand(2, 2, 6, 8, seed=11), rand(2, 2, 6, 8, seed=12)
    key_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = attention(q, k, v, key_mask=key_mask)
    torch.testing.assert_close(out[1:], attention(q[1:], k[1:, :, :4], v[1:, :, :4]))
    torch.testing.assert_close(out[:1], attention(q[:1], k[:1], v[:1]))
    ready = attention(q, k, v, mask=key_mask[:, None, None, :])
    torch.testing.assert_close(ready, out)


@pytest.mark.parametrize("causal", [False, True])
def test_packed_sequences_never_see_each_other(causal: bool) -> None:
    lengths = [3, 1, 6, 4]
    cu = torch.tensor([0, 3, 4, 10, 14], dtype=torch.int32)
    q, k, v = rand(14, 4, 8, seed=13), rand(14, 2, 8, seed=14), rand(14, 2, 8, seed=15)
    out = varlen_attention(q, k, v, cu, causal=causal)
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        qs, ks, vs = (t[sl].transpose(0, 1)[None] for t in (q, k, v))
        allowed = causal_mask(n, n, q.device) if causal else None
        expected = reference(qs, ks, vs, allowed)[0].transpose(0, 1)
        torch.testing.assert_close(out[sl], expected, atol=1e-5, rtol=1e-5)
        start += n


def test_ready_mask_cannot_be_mixed_with_causal() -> None:
    q = rand(1, 1, 1, 4)
    with pytest.raises(ValueError):
        attention(q, q, q, causal=True, mask=torch.ones(1, 1, 1, 1, dtype=torch.bool))
