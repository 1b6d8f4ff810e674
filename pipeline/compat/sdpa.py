"""flash-attn masking semantics on top of the package's one SDPA call (`pipeline.model.attention`).

Everything here works in SDPA's layout, `(batch, heads, seq, dim)`; the flash-attn entry
points in `pipeline.compat.flash_attn` transpose into it. Masks are built from one quantity,
`rel = i + Sk - Sq - j` (how far key `j` sits before query `i`'s bottom-right diagonal), so
causal, sliding window and ALiBi all share the alignment flash-attn uses, which is not the
top-left one of SDPA's `is_causal` (that flag is only used where both coincide: Sq == Sk).
"""

from __future__ import annotations

import torch

from pipeline.model.attention import sdpa

Window = tuple[int, int]
NO_WINDOW: Window = (-1, -1)


def key_mask(
    sq: int,
    sk: int,
    *,
    causal: bool,
    window: Window,
    device: torch.device,
    k_start: torch.Tensor | None = None,
    k_len: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys each query may see, and each key's distance before the query's diagonal.

    `k_start`/`k_len` (per batch row) describe a ragged key range inside a longer buffer, as in
    a KV cache with left padding: key column `j` is key number `j - k_start` of a sequence of
    `k_len` keys. Without them every one of the `sk` columns is a valid key. Returns
    `(allowed, rel)`, both `(B or 1, 1, sq, sk)`; `allowed` is True where attention is allowed.
    """
    cols = torch.arange(sk, device=device)
    if k_start is None:
        j = cols.view(1, 1, sk)
    else:
        j = (cols.view(1, sk) - k_start.view(-1, 1).to(device)).unsqueeze(1)
    length = (
        torch.full((1, 1, 1), sk, device=device)
        if k_len is None
        else k_len.view(-1, 1, 1).to(device)
    )
    i = torch.arange(sq, device=device).view(1, sq, 1)
    rel = i + length - sq - j
    allowed = (j >= 0) & (j < length)
    left, right = window
    if causal:
        allowed = allowed & (rel >= 0)
    if left >= 0:
        allowed = allowed & (rel <= left)
    if right >= 0:
        allowed = allowed & (rel >= -right)
    return allowed.unsqueeze(1), rel.unsqueeze(1)


def _softcapped(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    """Explicit attention for softcap, which SDPA cannot express (tanh sits inside softmax).

    Scores and softmax run in fp32 like flash-attn's accumulators; the result is cast back.
    Order as in flash-attn: scale, cap, then ALiBi bias, then mask.
    """
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v.float()).to(q.dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool = False,
    window: Window = NO_WINDOW,
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    k_start: torch.Tensor | None = None,
    k_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention with flash-attn semantics; q `(B, H, Sq, D)`, k/v `(B, Hk, Sk, D)`.

    Query rows that may see no key at all come back as zeros (flash-attn's convention; SDPA
    would give NaN). Unmasked and square-causal calls go to SDPA without a mask so its fused
    CPU/CUDA kernels stay in play; everything else gets an explicit boolean mask. An ALiBi
    bias travels as SDPA's float mask, which must be in q's dtype, so under bf16 it is
    rounded to bf16 (flash-attn adds it in fp32); the softcap path stays fp32 throughout.
    """
    batch, heads, sq, _ = q.shape
    sk = k.shape[2]
    if sq == 0 or sk == 0:
        return q.new_zeros(batch, heads, sq, v.shape[-1])
    plain = k_start is None and k_len is None and window == NO_WINDOW
    plain = plain and alibi_slopes is None and softcap == 0.0
    if plain and (not causal or sq == 1):
        # A single causal query sits on the last key's diagonal and sees every key.
        return sdpa(q, k, v, scale=scale)
    if plain and sq == sk:
        return sdpa(q, k, v, is_causal=True, scale=scale)

    allowed, rel = key_mask(
        sq, sk, causal=causal, window=window, device=q.device, k_start=k_start, k_len=k_len
    )
    empty = ~allowed.any(dim=-1, keepdim=True)
    allowed = allowed | empty  # keeps softmax finite; these rows are zeroed below
    bias = None
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(device=q.device, dtype=torch.float32)
        slopes = slopes.view(-1 if slopes.dim() == 2 else 1, heads, 1, 1)
        bias = -slopes * rel.abs().float()
    if softcap > 0.0:
        out = _softcapped(q, k, v, allowed, bias, scale, softcap)
    elif bias is None:
        out = sdpa(q, k, v, allowed, scale=scale)
    else:
        mask = bias.masked_fill(~allowed, float("-inf")).to(q.dtype)
        out = sdpa(q, k, v, mask, scale=scale)
    return out.masked_fill(empty, 0.0)
