"""The one place attention is computed: SDPA everywhere, Ascend fused attention for packed sequences.

Two entry points cover every native caller:
- `attention` for padded batches `(B, H, S, D)` (decode steps, per-image fallbacks);
- `varlen_attention` for packed sequences `(T, H, D)` with `cu_seqlens` (vision encoder, prefill).
Both end in `sdpa` (torch SDPA with GQA) or `npu_fused_varlen` (Ascend), which the flash-attn
compatibility layer (`pipeline.compat.sdpa`) calls as well: one dispatch for both models.
Causal masks are bottom-right aligned whenever query and key lengths differ (query i sees keys
`j <= i + Sk - Sq`, the flash-attn convention); torch's `is_causal=True` is top-left aligned, so it
is only used when the lengths are equal. Rows that may attend to nothing return zeros, not NaN.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import sys

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - torch < 2.3
    sdpa_kernel = None

_TORCH_VERSION = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
_SDPA_HAS_GQA = _TORCH_VERSION >= (2, 5)
_NPU_MASK_SIZE = 2048  # npu_fusion_attention's compressed causal mask for sparse_mode=3


def sdpa_backends(device: torch.device) -> contextlib.AbstractContextManager:
    """Scope for a whole batch: on CUDA, keep SDPA off the cuDNN backend.

    cuDNN attention (chosen for 16-bit inputs) builds an execution plan for every new sequence
    length, ~12 ms each; decoding changes the key length at every step, which made bf16 decoding
    ten times slower than float32. Flash / memory-efficient kernels have no such cost.
    """
    if device.type != "cuda" or sdpa_kernel is None:
        return contextlib.nullcontext()
    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def _expand_kv(k: torch.Tensor, v: torch.Tensor, num_heads: int, head_axis: int):
    """Repeat kv heads for GQA where SDPA cannot (torch < 2.5)."""
    groups = num_heads // k.shape[head_axis]
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=head_axis), v.repeat_interleave(groups, dim=head_axis)


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """torch SDPA, `(B, H, S, D)`, with GQA: kv heads shared by consecutive query heads."""
    if q.shape[1] != k.shape[1]:
        if _SDPA_HAS_GQA:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=True
            )
        k, v = _expand_kv(k, v, q.shape[1], head_axis=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE's rotation of the last axis, `(x1, x2) -> (-x2, x1)`: both models turn queries and
    keys with it before attending."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Boolean `(q_len, k_len)` mask, True = may attend, aligned bottom-right."""
    rows = torch.arange(q_len, device=device)[:, None]
    cols = torch.arange(k_len, device=device)[None, :]
    return cols <= rows + (k_len - q_len)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over a batch: q `(B, H, Sq, D)`, k/v `(B, Hk, Sk, D)`, GQA when Hk < H.

    `key_mask` `(B, Sk)` marks keys that exist (True) so rows of different lengths share a batch;
    combined with `causal`, rows left with no key give zeros. `mask` is the fast path for hot loops:
    a ready boolean mask broadcastable to `(B, 1, Sq, Sk)` in which every row keeps at least one
    key (the caller guarantees it, so no check and no device sync happens here).
    """
    q_len, k_len = q.shape[-2], k.shape[-2]
    if mask is not None:
        if causal or key_mask is not None:
            raise ValueError("pass either a ready `mask` or `causal`/`key_mask`, not both")
        return sdpa(q, k, v, mask, False, scale)
    if causal and q_len == 1:
        causal = False  # bottom-right: the single query sees every key
    if key_mask is None and (not causal or q_len == k_len):
        return sdpa(q, k, v, None, causal, scale)
    full = None
    if causal:
        full = causal_mask(q_len, k_len, q.device)[None, None]  # (1, 1, Sq, Sk)
    if key_mask is not None:
        km = key_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, Sk)
        full = km if full is None else full & km
    out = sdpa(q, k, v, full, False, scale)
    # Rows with no key: SDPA gives NaN there, flash-attn gives 0.
    return out.masked_fill(~full.any(dim=-1, keepdim=True), 0.0)


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """A decode step's attention over a GQA cache without expanding kv heads.

    q `(B, H, 1, D)`, k/v `(B, Hk, Sk, D)`, `mask` None or `(B, 1, 1, Sk)` with at least one key
    per row. The `G = H / Hk` query heads that share a kv head (heads `kv*G .. kv*G+G-1`, as in
    Qwen3) are folded into the query length, `(B, Hk, G, D)`: each cached key and value is read
    once per kv head, no backend repeats the cache (`enable_gqa` or `repeat_interleave`), and
    the mask broadcasts over the folded queries. Returns `(B, H, 1, D)`.
    """
    b, h, q_len, d = q.shape
    hk = k.shape[1]
    if q_len != 1 or h == hk:
        return attention(q, k, v, mask=mask, scale=scale)
    folded = q.reshape(b, hk, h // hk, d)
    out = F.scaled_dot_product_attention(folded, k, v, attn_mask=mask, scale=scale)
    return out.reshape(b, h, 1, d)


def decode_attention_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    row_keys: list[int],
    scale: float | None = None,
) -> torch.Tensor:
    """`decode_attention` with one call per row over exactly that row's keys.

    q `(B, H, 1, D)`, k/v `(B, Hk, capacity, D)`; row i attends to its first `row_keys[i]` keys.
    A continuous batch mixes rows of very different lengths, and one masked call reads every
    row's keys up to the longest row; when that padding outweighs a call's fixed cost (see
    `generation.attend_row_by_row`) this reads only the keys that exist. Each row's call is the
    one that row gets decoded alone.
    """
    return torch.cat(
        [
            decode_attention(q[i : i + 1], k[i : i + 1, :, :n], v[i : i + 1, :, :n], None, scale)
            for i, n in enumerate(row_keys)
        ]
    )


@functools.cache
def _npu_causal_mask(device: torch.device) -> torch.Tensor:
    ones = torch.ones(_NPU_MASK_SIZE, _NPU_MASK_SIZE, dtype=torch.bool, device=device)
    return torch.triu(ones, diagonal=1)


def npu_fused_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: list[int],
    cu_k: list[int],
    *,
    scale: float,
    causal: bool,
) -> torch.Tensor | None:
    """`torch_npu.npu_fusion_attention` in TND (packed varlen) layout, or None if it does not apply.

    q `(Tq, H, D)`, k/v `(Tk, Hk, D)`, GQA handled by the kernel. Callers pass only calls
    without window, softcap or ALiBi; this also declines fp32 (the kernel is 16-bit only),
    head_dim > 768, empty sequences, and causal sequences with more queries than keys, whose
    all-masked rows must be zeros, which the kernel does not promise. `sparse_mode=3` is
    bottom-right causal and wants the fixed 2048x2048 upper mask (notes/interfaces.md).
    torch_npu is looked up, never imported: an npu tensor implies it.
    """
    torch_npu = sys.modules.get("torch_npu")
    if torch_npu is None or q.device.type != "npu":
        return None
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] > 768:
        return None
    lens_q = [cu_q[i + 1] - cu_q[i] for i in range(len(cu_q) - 1)]
    lens_k = [cu_k[i + 1] - cu_k[i] for i in range(len(cu_k) - 1)]
    if min(lens_q + lens_k, default=0) <= 0:
        return None
    if causal and any(lq > lk for lq, lk in zip(lens_q, lens_k, strict=True)):
        return None
    return torch_npu.npu_fusion_attention(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        q.shape[1],
        "TND",
        atten_mask=_npu_causal_mask(q.device) if causal else None,
        scale=scale,
        keep_prob=1.0,
        actual_seq_qlen=cu_q[1:],
        actual_seq_kvlen=cu_k[1:],
        sparse_mode=3 if causal else 0,
    )[0]


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Block-diagonal attention over packed sequences: q `(T, H, D)`, k/v `(T, Hk, D)`.

    `cu_seqlens` `(N+1,)` holds cumulative sequence ends starting at 0; token t of sequence n only
    sees tokens of sequence n. Returns `(T, H, D)`.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    bounds = cu_seqlens.tolist()
    if q.device.type == "npu":
        fused = npu_fused_varlen(q, k, v, bounds, bounds, scale=scale, causal=causal)
        if fused is not None:
            return fused
    out = torch.empty_like(q)
    for start, end in itertools.pairwise(bounds):
        if end == start:
            continue
        # (L, H, D) -> (1, H, L, D); each sequence alone, so no mask and no padding work.
        qs = q[start:end].transpose(0, 1)[None]
        ks = k[start:end].transpose(0, 1)[None]
        vs = v[start:end].transpose(0, 1)[None]
        res = sdpa(qs, ks, vs, None, causal and end - start > 1, scale)
        out[start:end] = res[0].transpose(0, 1)
    return out
