"""Pure-PyTorch stand-ins for the flash-attn 2.x attention functions.

The upstream AnandaSky modeling file calls `flash_attn_varlen_func` (vision encoder) and
`flash_attn_with_kvcache` (decoder); flash-attn only exists for CUDA, so on Ascend and CPU
these take its place with the same signatures and results (notes/interfaces.md). They run SDPA
in the input dtype; on an npu device the varlen and KV-cache paths use the fused Ascend kernel
when the call fits it. Every argument they cannot honour raises NotImplementedError naming it;
only `deterministic`, `num_splits` and `rotary_interleaved` (meaningless without rotary) are
accepted and ignored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from pipeline.compat.sdpa import NO_WINDOW, Window, attend
from pipeline.model.attention import npu_fused_varlen


def _reject(**unsupported: bool) -> None:
    """Raise for the first argument the caller set that this port does not implement."""
    for name, is_set in unsupported.items():
        if is_set:
            raise NotImplementedError(
                f"flash-attn compatibility layer: argument {name!r} is not implemented "
                "(pipeline/compat/flash_attn.py); call without it or use the native model"
            )


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float) -> None:
    heads, kv_heads = q.shape[-2], k.shape[-2]
    if k.shape[-2] != v.shape[-2] or kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"query heads ({heads}) must be a multiple of key/value heads "
            f"({kv_heads}/{v.shape[-2]})"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q head_dim {q.shape[-1]} != k head_dim {k.shape[-1]}")
    if softcap < 0:
        raise ValueError(f"softcap must be >= 0, got {softcap}")


def _scale(q: torch.Tensor, softmax_scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)


def _window(window_size: Sequence[int]) -> Window:
    left, right = (int(w) for w in window_size)
    return (left, right)


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> torch.Tensor:
    """Dense attention: q `(B, Sq, H, D)`, k/v `(B, Sk, Hk, D)` -> `(B, Sq, H, D)`."""
    _reject(dropout_p=bool(dropout_p), return_attn_probs=bool(return_attn_probs))
    _check(q, k, v, softcap)
    out = attend(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        scale=_scale(q, softmax_scale),
        causal=causal,
        window=_window(window_size),
        softcap=softcap,
        alibi_slopes=alibi_slopes,
    )
    return out.transpose(1, 2).contiguous()


def _lengths(cu_seqlens: torch.Tensor, name: str) -> list[int]:
    cu = [int(c) for c in cu_seqlens.tolist()]
    lens = [cu[i + 1] - cu[i] for i in range(len(cu) - 1)]
    if not cu or cu[0] != 0 or min(lens, default=0) < 0:
        raise ValueError(f"{name} must start at 0 and never decrease, got {cu[:8]}...")
    return cu


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Packed variable-length attention: q `(Tq, H, D)`, k/v `(Tk, Hk, D)` -> `(Tq, H, D)`.

    Sequence b is rows `cu_seqlens[b]:cu_seqlens[b+1]`; sequences never see each other.
    `max_seqlen_*` are only launch hints for the CUDA kernel and are not needed here.

    Off NPU, sequences are grouped by their (q length, k length) and each group runs as one
    batched SDPA call (consecutive sequences as a view, others gathered). A block-diagonal
    mask over all packed tokens costs (sum of lengths)^2 instead of the sum of squares, and a
    loop over sequences pays Python and dispatch overhead per sequence. Measured on this
    project's 2-core CPU box (fp32, 12 heads x 64, median of 7): 4 images x 1024 patches:
    grouped 185 ms, per-sequence loop 221 ms, block-diagonal 853 ms; 256 sequences of 4
    tokens: 1.9 / 6.8 / 23 ms. Mixed sizes fall back to one call per size, like the loop.
    """
    _reject(
        dropout_p=bool(dropout_p),
        return_attn_probs=bool(return_attn_probs),
        block_table=block_table is not None,
    )
    _check(q, k, v, softcap)
    cu_q = _lengths(cu_seqlens_q, "cu_seqlens_q")
    cu_k = _lengths(cu_seqlens_k, "cu_seqlens_k")
    if len(cu_q) != len(cu_k):
        raise ValueError(f"cu_seqlens_q has {len(cu_q)} entries, cu_seqlens_k {len(cu_k)}")
    scale, window = _scale(q, softmax_scale), _window(window_size)
    if window == NO_WINDOW and softcap == 0.0 and alibi_slopes is None:
        fused = npu_fused_varlen(q, k, v, cu_q, cu_k, scale=scale, causal=causal)
        if fused is not None:
            return fused
    return _varlen_grouped(q, k, v, cu_q, cu_k, scale, causal, window, softcap, alibi_slopes)


def _gather(
    x: torch.Tensor, cu: list[int], seqs: list[int], length: int
) -> tuple[torch.Tensor, slice | torch.Tensor]:
    """The given equal-length sequences of packed `x` as `(n, length, ...)`, and their rows.

    Consecutive sequences of one length sit back to back, so they are a view; anything else
    is gathered with index_select.
    """
    n, first = len(seqs), cu[seqs[0]]
    if seqs[-1] - seqs[0] == n - 1:
        rows: slice | torch.Tensor = slice(first, first + n * length)
        return x[rows].unflatten(0, (n, length)), rows
    starts = torch.tensor([cu[s] for s in seqs], device=x.device)
    index = (starts.unsqueeze(1) + torch.arange(length, device=x.device)).flatten()
    return x.index_select(0, index).unflatten(0, (n, length)), index


def _varlen_grouped(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: list[int],
    cu_k: list[int],
    scale: float,
    causal: bool,
    window: Window,
    softcap: float,
    alibi_slopes: torch.Tensor | None,
) -> torch.Tensor:
    out = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for seq in range(len(cu_q) - 1):
        sq, sk = cu_q[seq + 1] - cu_q[seq], cu_k[seq + 1] - cu_k[seq]
        if sq > 0 and sk > 0:  # sk == 0: nothing to attend, rows stay 0
            groups[(sq, sk)].append(seq)
    for (sq, sk), seqs in groups.items():
        qb, rows_q = _gather(q, cu_q, seqs, sq)
        kb, _ = _gather(k, cu_k, seqs, sk)
        vb, _ = _gather(v, cu_k, seqs, sk)
        slopes = alibi_slopes
        if slopes is not None and slopes.dim() == 2:
            slopes = slopes[seqs]
        ob = attend(
            qb.transpose(1, 2),
            kb.transpose(1, 2),
            vb.transpose(1, 2),
            scale=scale,
            causal=causal,
            window=window,
            softcap=softcap,
            alibi_slopes=slopes,
        ).transpose(1, 2)
        if isinstance(rows_q, slice):
            out[rows_q] = ob.flatten(0, 1)
        else:
            out.index_copy_(0, rows_q, ob.flatten(0, 1))
    return out


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    rotary_cos: torch.Tensor | None = None,
    rotary_sin: torch.Tensor | None = None,
    cache_seqlens: int | torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: torch.Tensor | None = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
) -> torch.Tensor:
    """Decode-step attention over a `(B_cache, S_cache, Hk, D)` cache, appending k/v in place.

    Batch row b uses cache row `cache_batch_idx[b]` (default b). New `k`/`v` `(B, S_new, Hk, D)`
    are written at `[cache_seqlens[b], cache_seqlens[b] + S_new)`; the caller advances
    `cache_seqlens`. Row b then attends to cache positions
    `[cache_leftpad[b], cache_seqlens[b] + S_new)`, with causal/window/ALiBi aligned as if
    that slice were the whole key sequence. Without `cache_seqlens` the whole cache is used,
    which only makes sense when nothing is appended (appending then raises).
    """
    _reject(
        rotary_cos=rotary_cos is not None,
        rotary_sin=rotary_sin is not None,
        block_table=block_table is not None,
        return_softmax_lse=bool(return_softmax_lse),
    )
    if (k is None) != (v is None):
        raise ValueError("flash_attn_with_kvcache: pass both k and v, or neither")
    _check(q, k_cache, v_cache, softcap)
    batch = q.shape[0]
    s_cache, device = k_cache.shape[1], k_cache.device
    s_new = 0 if k is None else k.shape[1]

    if cache_seqlens is None:
        if s_new:
            raise ValueError("flash_attn_with_kvcache: cache_seqlens is required to append k/v")
        seqlens = torch.full((batch,), s_cache, device=device, dtype=torch.long)
    elif isinstance(cache_seqlens, int):
        seqlens = torch.full((batch,), cache_seqlens, device=device, dtype=torch.long)
    else:
        seqlens = cache_seqlens.to(device=device, dtype=torch.long).expand(batch)
    start = (
        torch.zeros(batch, device=device, dtype=torch.long)
        if cache_leftpad is None
        else cache_leftpad.to(device=device, dtype=torch.long)
    )
    end = seqlens + s_new
    span = int(end.max()) if batch else 0
    if span > s_cache:
        raise ValueError(
            f"flash_attn_with_kvcache: cache_seqlens + {s_new} new keys reaches {span}, "
            f"beyond the cache length {s_cache}"
        )
    if cache_batch_idx is None:
        rows = torch.arange(batch, device=device)
    else:
        rows = cache_batch_idx.to(device=device, dtype=torch.long)

    if k is not None and v is not None and s_new:
        cols = seqlens.unsqueeze(1) + torch.arange(s_new, device=device)
        k_cache[rows.unsqueeze(1), cols] = k.to(k_cache.dtype)
        v_cache[rows.unsqueeze(1), cols] = v.to(v_cache.dtype)

    if cache_batch_idx is None:
        keys, values = k_cache[:batch, :span], v_cache[:batch, :span]
    else:
        keys, values = k_cache[rows, :span], v_cache[rows, :span]
    scale, window = _scale(q, softmax_scale), _window(window_size)

    if q.device.type == "npu" and window == NO_WINDOW and softcap == 0.0 and alibi_slopes is None:
        fused = _npu_kvcache(q, keys, values, start, end, scale, causal)
        if fused is not None:
            return fused
    ragged = cache_leftpad is not None or bool((end != span).any())
    out = attend(
        q.transpose(1, 2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        scale=scale,
        causal=causal,
        window=window,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        # Rows of equal length need no key mask, which keeps SDPA's fused kernels usable.
        k_start=start if ragged else None,
        k_len=end - start if ragged else None,
    )
    return out.transpose(1, 2).contiguous()


def _npu_kvcache(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    scale: float,
    causal: bool,
) -> torch.Tensor | None:
    """Pack each row's valid cache slice and run the fused varlen kernel on it."""
    batch, sq = q.shape[0], q.shape[1]
    starts, ends = start.tolist(), end.tolist()
    packed_k = torch.cat([keys[b, starts[b] : ends[b]] for b in range(batch)])
    packed_v = torch.cat([values[b, starts[b] : ends[b]] for b in range(batch)])
    cu_k = [0]
    for b in range(batch):
        cu_k.append(cu_k[-1] + ends[b] - starts[b])
    cu_q = [b * sq for b in range(batch + 1)]
    out = npu_fused_varlen(
        q.reshape(batch * sq, *q.shape[2:]),
        packed_k,
        packed_v,
        cu_q,
        cu_k,
        scale=scale,
        causal=causal,
    )
    return None if out is None else out.reshape(batch, sq, *out.shape[1:])


# --- packed-input variants: same semantics, q/k/v stacked along one dimension ----------------


def flash_attn_qkvpacked_func(qkv: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    """qkv `(B, S, 3, H, D)`; remaining arguments as `flash_attn_func` after `v`."""
    q, k, v = qkv.unbind(dim=2)
    return flash_attn_func(q, k, v, *args, **kwargs)  # type: ignore[arg-type]


def flash_attn_kvpacked_func(
    q: torch.Tensor, kv: torch.Tensor, *args: object, **kwargs: object
) -> torch.Tensor:
    """kv `(B, Sk, 2, Hk, D)`; remaining arguments as `flash_attn_func` after `v`."""
    k, v = kv.unbind(dim=2)
    return flash_attn_func(q, k, v, *args, **kwargs)  # type: ignore[arg-type]


def flash_attn_varlen_qkvpacked_func(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *args: object,
    **kwargs: object,
) -> torch.Tensor:
    """qkv `(T, 3, H, D)` with one `cu_seqlens`; rest as `flash_attn_varlen_func` after max_seqlen_k."""
    q, k, v = qkv.unbind(dim=1)
    return flash_attn_varlen_func(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, *args, **kwargs
    )  # type: ignore[arg-type]


def flash_attn_varlen_kvpacked_func(
    q: torch.Tensor,
    kv: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *args: object,
    **kwargs: object,
) -> torch.Tensor:
    """kv `(Tk, 2, Hk, D)`; rest as `flash_attn_varlen_func` after max_seqlen_k."""
    k, v = kv.unbind(dim=1)
    return flash_attn_varlen_func(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args, **kwargs
    )  # type: ignore[arg-type]


__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]
