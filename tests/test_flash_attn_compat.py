"""The flash-attn compatibility layer against a naive reference (its import shim is tested in
test_flash_attn_shim.py).

The reference below is written from the interface facts (notes/interfaces.md), not from the
implementation: einsum with kv heads gathered per query head, an explicit (query, key) mask
built from the bottom-right distance, float64 throughout.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from pipeline.compat import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
    index_first_axis,
    pad_input,
    unpad_input,
    unpad_input_legacy,
)

pytestmark = pytest.mark.compat

TOL = 1e-5
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- reference -------------------------------------------------------------------------------


def reference_attention(q, k, v, *, scale, causal, window, softcap=0.0, slopes=None):
    """q (B, Sq, H, D), k/v (B, Sk, Hk, D) -> (B, Sq, H, D) float64; slopes (H,) or (B, H)."""
    batch, sq, heads, _ = q.shape
    sk, kv_heads = k.shape[1], k.shape[2]
    kv_of_head = torch.arange(heads) // (heads // kv_heads)  # consecutive heads share a kv head
    k, v = k.double()[:, :, kv_of_head], v.double()[:, :, kv_of_head]
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)

    left, right = window
    rows, cols = torch.arange(sq).view(sq, 1), torch.arange(sk).view(1, sk)
    dist = rows + sk - sq - cols  # bottom-right: query i's diagonal is key i + sk - sq
    keep = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        keep &= dist >= 0
    if left >= 0:
        keep &= dist <= left
    if right >= 0:
        keep &= dist >= -right
    if slopes is not None:
        scores = scores - slopes.double().expand(batch, heads)[:, :, None, None] * dist.abs()
    p = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    p = torch.where(keep.any(dim=1, keepdim=True), p, 0.0)  # a query that sees no key gives 0
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def randn(gen: torch.Generator, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.double() - ref).abs().max().item() if out.numel() else 0.0


windows = st.one_of(st.just((-1, -1)), st.tuples(st.integers(-1, 6), st.integers(-1, 6)))


@st.composite
def options(draw):
    """flash-attn keyword arguments shared by all three attention functions (slopes apart)."""
    return {
        "softmax_scale": draw(st.one_of(st.none(), st.floats(0.05, 1.5))),
        "causal": draw(st.booleans()),
        "window_size": draw(windows),
        "softcap": draw(st.floats(0.5, 20.0)) if draw(st.integers(0, 3)) == 0 else 0.0,
    }


def ref_args(opts, head_dim, slopes):
    return {
        "scale": opts["softmax_scale"] or head_dim**-0.5,
        "causal": opts["causal"],
        "window": opts["window_size"],
        "softcap": opts["softcap"],
        "slopes": slopes,
    }


alibi_kinds = st.sampled_from([None, None, "heads", "batch_heads"])


def make_slopes(kind, gen, batch, heads):
    if kind is None:
        return None
    shape = (heads,) if kind == "heads" else (batch, heads)
    return torch.rand(*shape, generator=gen) * 0.5


def slopes_for(slopes, b):
    """Row b's slopes: (H,) slopes are shared by every row, (B, H) ones are per row."""
    return slopes if slopes is None or slopes.dim() == 1 else slopes[b]


seeds = st.integers(0, 2**31 - 1)
head_counts = st.tuples(st.integers(1, 3), st.integers(1, 3))  # (kv heads, query heads per kv)


# --- flash_attn_func -------------------------------------------------------------------------


@PROPERTY
@given(
    seed=seeds,
    shape=st.tuples(st.integers(1, 3), st.integers(1, 10), st.integers(0, 10)),  # sk 0: = sq
    heads=head_counts,
    head_dim=st.sampled_from([4, 8, 16, 32]),
    opts=options(),
    alibi=alibi_kinds,
)
def test_flash_attn_func_matches_reference(seed, shape, heads, head_dim, opts, alibi):
    (batch, sq, sk), (kv_heads, group) = shape, heads
    sk = sk or sq
    gen = torch.Generator().manual_seed(seed)
    q = randn(gen, batch, sq, kv_heads * group, head_dim)
    k, v = randn(gen, batch, sk, kv_heads, head_dim), randn(gen, batch, sk, kv_heads, head_dim)
    slopes = make_slopes(alibi, gen, batch, kv_heads * group)
    out = flash_attn_func(q, k, v, **opts, alibi_slopes=slopes)
    ref = reference_attention(q, k, v, **ref_args(opts, head_dim, slopes))
    assert out.shape == q.shape and out.dtype == torch.float32
    err = max_err(out, ref)
    target(err, label="flash_attn_func max abs err")
    assert err <= TOL


def test_causal_rows_without_keys_are_zero_not_nan():
    q, k = torch.randn(1, 5, 2, 8), torch.randn(1, 2, 2, 8)
    out = flash_attn_func(q, k, k, causal=True)
    assert torch.isfinite(out).all()
    assert out[0, :3].abs().max() == 0  # rows 0..2 sit before the first key's diagonal
    assert out[0, 3:].abs().max() > 0


@pytest.mark.parametrize(
    ("causal", "window", "expected"),
    [
        (True, (-1, -1), [1.0, 1.5]),  # row 0 sees keys 0..2, row 1 sees 0..3
        (False, (1, 0), [1.5, 2.5]),  # row 0 sees keys 1..2, row 1 sees 2..3
        (False, (0, 1), [2.5, 3.0]),  # row 0 sees keys 2..3, row 1 sees 3
    ],
)
def test_masks_are_aligned_bottom_right(causal, window, expected):
    """Zero queries weigh visible keys equally, so each output is the mean visible key index."""
    q = torch.zeros(1, 2, 1, 4)
    k = torch.randn(1, 4, 1, 4)
    v = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 1, 4)
    out = flash_attn_func(q, k, v, softmax_scale=0.0, causal=causal, window_size=window)
    assert out[0, :, 0, 0].tolist() == pytest.approx(expected)


def test_bf16_is_computed_and_returned_in_bf16():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (randn(gen, 2, 7, 4, 16) for _ in range(3))
    out = flash_attn_func(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True)
    ref = reference_attention(q, k, v, scale=16**-0.5, causal=True, window=(-1, -1))
    assert out.dtype == torch.bfloat16
    assert max_err(out.float(), ref) < 5e-2


# --- flash_attn_varlen_func ------------------------------------------------------------------


def cumulative(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


@PROPERTY
@given(
    seed=seeds,
    lengths=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=6),
    heads=head_counts,
    head_dim=st.sampled_from([8, 16]),
    opts=options(),
    alibi=alibi_kinds,
)
def test_varlen_matches_reference_per_sequence(seed, lengths, heads, head_dim, opts, alibi):
    (kv_heads, group), gen = heads, torch.Generator().manual_seed(seed)
    lens_q, lens_k = [sq for sq, _ in lengths], [sk for _, sk in lengths]
    cu_q, cu_k = cumulative(lens_q), cumulative(lens_k)
    q = randn(gen, int(cu_q[-1]), kv_heads * group, head_dim)
    k = randn(gen, int(cu_k[-1]), kv_heads, head_dim)
    v = randn(gen, int(cu_k[-1]), kv_heads, head_dim)
    slopes = make_slopes(alibi, gen, len(lengths), kv_heads * group)
    out = flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), **opts, alibi_slopes=slopes
    )
    assert out.shape == q.shape
    err = 0.0
    for b in range(len(lengths)):
        rows_q, rows_k = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        seq_args = ref_args(opts, head_dim, slopes_for(slopes, b))
        ref = reference_attention(q[None, rows_q], k[None, rows_k], v[None, rows_k], **seq_args)
        err = max(err, max_err(out[rows_q], ref[0]))
    target(err, label="varlen max abs err")
    assert err <= TOL


# --- flash_attn_with_kvcache -----------------------------------------------------------------


@st.composite
def kvcache_cases(draw):
    batch = draw(st.integers(1, 3))
    cache_rows = batch + draw(st.integers(0, 2))
    s_cache = draw(st.integers(1, 10))
    s_new = draw(st.integers(0, min(3, s_cache)))
    seqlens = [draw(st.integers(0, s_cache - s_new)) for _ in range(batch)]
    leftpad = [draw(st.integers(0, n)) for n in seqlens] if draw(st.booleans()) else None
    as_int = leftpad is None and draw(st.booleans())  # cache_seqlens as a plain int
    if as_int:
        seqlens = [seqlens[0]] * batch
    batch_idx = None
    if draw(st.booleans()):
        batch_idx = draw(st.permutations(range(cache_rows)))[:batch]
    return {
        "batch": batch,
        "cache_shape": (cache_rows, s_cache),
        "s_new": s_new,
        "sq": draw(st.integers(1, 4)),
        "seqlens": seqlens,
        "as_int": as_int,
        "leftpad": leftpad,
        "batch_idx": batch_idx,
    }


def int32(values):
    return None if values is None else torch.tensor(values, dtype=torch.int32)


@PROPERTY
@given(case=kvcache_cases(), seed=seeds, heads=head_counts, opts=options(), alibi=alibi_kinds)
def test_with_kvcache_appends_in_place_and_attends_to_the_valid_prefix(
    case, seed, heads, opts, alibi
):
    (kv_heads, group), head_dim = heads, 8
    gen = torch.Generator().manual_seed(seed)
    batch, s_new, seqlens = case["batch"], case["s_new"], case["seqlens"]
    k_cache = randn(gen, *case["cache_shape"], kv_heads, head_dim)
    v_cache = randn(gen, *case["cache_shape"], kv_heads, head_dim)
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    q = randn(gen, batch, case["sq"], kv_heads * group, head_dim)
    k_new = randn(gen, batch, s_new, kv_heads, head_dim) if s_new else None
    v_new = randn(gen, batch, s_new, kv_heads, head_dim) if s_new else None
    rows = case["batch_idx"] if case["batch_idx"] is not None else list(range(batch))
    slopes = make_slopes(alibi, gen, batch, kv_heads * group)

    out = flash_attn_with_kvcache(
        q,
        k_cache,
        v_cache,
        k=k_new,
        v=v_new,
        cache_seqlens=seqlens[0] if case["as_int"] else int32(seqlens),
        cache_batch_idx=int32(case["batch_idx"]),
        cache_leftpad=int32(case["leftpad"]),
        **opts,
        alibi_slopes=slopes,
    )

    for b, row in enumerate(rows):
        if s_new:
            expect_k[row, seqlens[b] : seqlens[b] + s_new] = k_new[b]
            expect_v[row, seqlens[b] : seqlens[b] + s_new] = v_new[b]
    assert torch.equal(k_cache, expect_k) and torch.equal(v_cache, expect_v)

    err = 0.0
    for b, row in enumerate(rows):
        first = 0 if case["leftpad"] is None else case["leftpad"][b]
        keys = slice(first, seqlens[b] + s_new)
        row_args = ref_args(opts, head_dim, slopes_for(slopes, b))
        ref = reference_attention(
            q[b : b + 1],
            expect_k[row : row + 1, keys],
            expect_v[row : row + 1, keys],
            **row_args,
        )
        err = max(err, max_err(out[b : b + 1], ref))
    target(err, label="with_kvcache max abs err")
    assert err <= TOL


def test_with_kvcache_refuses_to_write_past_the_cache():
    cache = torch.zeros(1, 4, 1, 8)
    new = torch.ones(1, 2, 1, 8)
    with pytest.raises(ValueError, match="beyond the cache length"):
        flash_attn_with_kvcache(
            torch.ones(1, 2, 1, 8), cache, cache.clone(), k=new, v=new, cache_seqlens=3
        )


# --- bert_padding ----------------------------------------------------------------------------


@st.composite
def masks(draw):
    """Cell 1 = real token, 2 = allocated but unused (2.7's unused_mask), 0 = padding."""
    batch, seqlen = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    cells = draw(
        st.lists(st.sampled_from([0, 1, 2]), min_size=batch * seqlen, max_size=batch * seqlen)
    )
    return torch.tensor(cells).view(batch, seqlen)


@settings(max_examples=100, deadline=None)
@given(grid=masks(), seed=seeds)
def test_unpad_both_forms_and_pad_round_trip(grid, seed):
    batch, seqlen = grid.shape
    x = randn(torch.Generator().manual_seed(seed), batch, seqlen, 3, 2)
    used, unused = grid == 1, grid == 2

    packed, indices, cu, max_len, used_lens = unpad_input(x, used.int(), unused)
    kept = used | unused
    assert torch.equal(packed, x[kept])
    assert torch.equal(indices, kept.flatten().nonzero().flatten())
    assert cu.dtype == torch.int32 and used_lens.dtype == torch.int32
    assert cu.tolist() == [0, *kept.sum(1).cumsum(0).tolist()]
    assert max_len == int(kept.sum(1).max())
    assert used_lens.tolist() == used.sum(1).tolist()
    assert torch.equal(pad_input(packed, indices, batch, seqlen), x * kept[..., None, None])

    legacy = unpad_input_legacy(x, used)
    assert len(legacy) == 4
    packed4, indices4, cu4, max4 = legacy
    assert torch.equal(packed4, x[used]) and cu4.tolist() == [0, *used.sum(1).cumsum(0).tolist()]
    assert max4 == int(used.sum(1).max())
    assert torch.equal(pad_input(packed4, indices4, batch, seqlen), x * used[..., None, None])
    assert torch.equal(index_first_axis(x.flatten(0, 1), indices4), packed4)


# --- packed variants ---------------------------------------------------------------------------


def test_packed_variants_equal_the_unpacked_functions():
    gen = torch.Generator().manual_seed(2)
    qkv = randn(gen, 2, 5, 3, 4, 8)
    q, k, v = qkv.unbind(2)
    dense = flash_attn_func(q, k, v, 0.0, None, True)  # positional, as upstream code may call
    assert torch.equal(flash_attn_qkvpacked_func(qkv, 0.0, None, True), dense)
    assert torch.equal(flash_attn_kvpacked_func(q, torch.stack([k, v], 2), causal=True), dense)
    cu = torch.tensor([0, 5, 10], dtype=torch.int32)
    flat = qkv.flatten(0, 1)
    varlen = flash_attn_varlen_func(*flat.unbind(1), cu, cu, 5, 5, causal=True)
    torch.testing.assert_close(varlen.view(2, 5, 4, 8), dense, atol=TOL, rtol=0)
    assert torch.equal(flash_attn_varlen_qkvpacked_func(flat, cu, 5, causal=True), varlen)
    kv = flat[:, 1:]
    assert torch.equal(
        flash_attn_varlen_kvpacked_func(flat[:, 0], kv, cu, cu, 5, 5, causal=True), varlen
    )


# --- unimplemented arguments -------------------------------------------------------------------

_Q = torch.zeros(1, 2, 2, 8)
_DENSE = (_Q, _Q, _Q)
_CU = torch.tensor([0, 2], dtype=torch.int32)
_VARLEN = (_Q[0], _Q[0], _Q[0], _CU, _CU, 2, 2)
_TABLE = torch.zeros(1, 1, dtype=torch.int32)
_UNSUPPORTED = [
    (flash_attn_func, _DENSE, "dropout_p", 0.1),
    (flash_attn_func, _DENSE, "return_attn_probs", True),
    (flash_attn_varlen_func, _VARLEN, "dropout_p", 0.5),
    (flash_attn_varlen_func, _VARLEN, "return_attn_probs", True),
    (flash_attn_varlen_func, _VARLEN, "block_table", _TABLE),
    (flash_attn_with_kvcache, _DENSE, "rotary_cos", torch.ones(4, 4)),
    (flash_attn_with_kvcache, _DENSE, "rotary_sin", torch.ones(4, 4)),
    (flash_attn_with_kvcache, _DENSE, "block_table", _TABLE),
    (flash_attn_with_kvcache, _DENSE, "return_softmax_lse", True),
]


@pytest.mark.parametrize(
    ("function", "args", "argument", "value"),
    _UNSUPPORTED,
    ids=[f"{f.__name__}-{a}" for f, _, a, _ in _UNSUPPORTED],
)
def test_unimplemented_argument_raises_naming_it(function, args, argument, value):
    with pytest.raises(NotImplementedError, match=argument):
        function(*args, **{argument: value})


def test_ignorable_arguments_are_accepted():
    flash_attn_func(_Q, _Q, _Q, deterministic=True)
    flash_attn_with_kvcache(_Q, _Q, _Q, num_splits=4, rotary_interleaved=False)
