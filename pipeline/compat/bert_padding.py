"""Stand-ins for `flash_attn.bert_padding`: move between padded `(B, S, ...)` and packed tokens.

flash-attn changed `unpad_input` in 2.7.0 from four return values to five (adding the count of
used tokens per row and an `unused_mask` argument). Upstream code unpacks whichever its author
had installed, so both forms exist here: `unpad_input` (2.7+) and `unpad_input_legacy` (up to
2.6.3). The shim in `pipeline.compat.install` exposes one of them as
`flash_attn.bert_padding.unpad_input`, chosen by the flash-attn version it pretends to be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def index_first_axis(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`x[indices]`: gather rows along the first axis."""
    return x[indices]


def index_put_first_axis(
    values: torch.Tensor, indices: torch.Tensor, first_axis_dim: int
) -> torch.Tensor:
    """Scatter rows into a zero tensor with `first_axis_dim` rows; inverse of index_first_axis."""
    out = values.new_zeros(first_axis_dim, *values.shape[1:])
    out[indices] = values
    return out


def _unpad(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    unused_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    used = attention_mask.bool()
    kept = used if unused_mask is None else used | unused_mask.bool()
    seqlens = kept.sum(dim=-1, dtype=torch.int32)
    used_seqlens = used.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(kept.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max()) if seqlens.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    packed = index_first_axis(hidden_states.flatten(0, 1), indices)
    return packed, indices, cu_seqlens, max_seqlen, used_seqlens


def unpad_input(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    unused_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """flash-attn >= 2.7 form: `(packed, indices, cu_seqlens, max_seqlen, used_seqlens)`.

    hidden_states `(B, S, ...)`; attention_mask `(B, S)`, nonzero = real token. Tokens marked
    in `unused_mask` are kept in the packed output and in `cu_seqlens` but not counted in
    `used_seqlens` (memory allocated to a sequence that holds nothing yet).
    """
    return _unpad(hidden_states, attention_mask, unused_mask)


def unpad_input_legacy(
    hidden_states: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """flash-attn <= 2.6.3 form: `(packed, indices, cu_seqlens, max_seqlen)`."""
    return _unpad(hidden_states, attention_mask, None)[:4]


def pad_input(
    hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int
) -> torch.Tensor:
    """Packed `(nnz, ...)` back to `(batch, seqlen, ...)`, zeros where nothing was packed."""
    out = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return out.view(batch, seqlen, *hidden_states.shape[1:])


__all__ = [
    "index_first_axis",
    "index_put_first_axis",
    "pad_input",
    "unpad_input",
    "unpad_input_legacy",
]
