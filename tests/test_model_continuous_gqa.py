"""Decode attention over a GQA cache with query groups folded into the query length."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.model.attention import decode_attention


def expanded_reference(q, k, v, lengths):
    """Every query head against its own copy of its kv head, each row over its own keys only."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    rows = []
    for row, n in enumerate(lengths):
        rows.append(
            F.scaled_dot_product_attention(
                q[row : row + 1], k[row : row + 1, :, :n], v[row : row + 1, :, :n]
            )
        )
    return torch.cat(rows)


@pytest.mark.parametrize(("heads", "kv_heads"), [(8, 4), (16, 8), (14, 2), (4, 4)])
def test_folded_groups_match_expanded_kv_heads(heads: int, kv_heads: int) -> None:
    gen = torch.Generator().manual_seed(heads * 100 + kv_heads)
    rows, dim, capacity = 5, 32, 40
    lengths = [40, 1, 17, 33, 40]
    q = torch.randn(rows, heads, 1, dim, generator=gen)
    # A cache view as decode passes it: a slice of a larger buffer, not contiguous.
    cache = torch.randn(2, rows + 2, kv_heads, capacity + 8, dim, generator=gen)
    k, v = cache[0, :rows, :, :capacity], cache[1, :rows, :, :capacity]
    slots = torch.arange(capacity)
    mask = (slots[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]
    got = decode_attention(q, k, v, mask)
    want = expanded_reference(q, k, v, lengths)
    assert got.shape == (rows, heads, 1, dim)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    uniform = decode_attention(q, k, v)  # no mask: every row sees every key
    assert torch.allclose(uniform, expanded_reference(q, k, v, [capacity] * rows), atol=1e-5)


def test_query_head_groups_follow_their_own_kv_head() -> None:
    """Query heads 2g and 2g+1 share kv head g: a cache whose kv heads differ only by a constant
    value makes each query head's output that constant, so a wrong grouping shows at once."""
    rows, heads, kv_heads, dim, keys = 2, 6, 3, 8, 4
    q = torch.randn(rows, heads, 1, dim)
    k = torch.randn(rows, kv_heads, keys, dim)
    v = torch.arange(kv_heads, dtype=torch.float32)[None, :, None, None].expand(rows, -1, keys, dim)
    out = decode_attention(q, k, v.contiguous())
    want = torch.arange(heads, dtype=torch.float32).div(2).floor()[None, :, None, None]
    assert torch.allclose(out, want.expand_as(out), atol=1e-6)


def test_decode_never_repeats_the_kv_cache(monkeypatch) -> None:
    """Fault injection: expanding kv heads would call repeat_interleave; make that fail."""

    def refuse(*args, **kwargs):
        raise AssertionError("kv heads expanded")

    monkeypatch.setattr(torch.Tensor, "repeat_interleave", refuse)
    q, k = torch.randn(3, 8, 1, 16), torch.randn(3, 2, 9, 16)
    out = decode_attention(q, k, k.clone(), torch.ones(3, 1, 1, 9, dtype=torch.bool))
    assert out.shape == (3, 8, 1, 16) and torch.isfinite(out).all()
