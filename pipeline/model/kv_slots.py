"""The continuous batch's KV cache: one preallocated row per batch slot, reused page after page.

Shape `(layers, slots, kv_heads, capacity, head_dim)`, like `decoder.KVCache`, so the decoder's
prefill and decode passes write into it unchanged. A decode step reads `view(n)`, the first `n`
rows (a view, no copy). Capacity grows in chunks up to `max_capacity` (one copy per growth, a
handful per run); a finished page's row is simply overwritten by the next page's prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CacheView:
    """The first rows of a `SlotCache`, shaped as the decoder expects a cache."""

    k: torch.Tensor
    v: torch.Tensor


class SlotCache:
    """Per-slot keys and values; memory is `slots x max_capacity` positions at most."""

    GROW_BY = 256

    def __init__(
        self,
        num_layers: int,
        slots: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        max_capacity: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.max_capacity = max_capacity
        shape = (num_layers, slots, num_kv_heads, min(capacity, max_capacity), head_dim)
        # Zeroed: masked slots never written must not inject NaN into attention.
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def ensure(self, length: int) -> None:
        """Make room for `length` positions per row (never past `max_capacity`)."""
        if length <= self.capacity:
            return
        if length > self.max_capacity:
            raise ValueError(f"{length} positions asked of a cache capped at {self.max_capacity}")
        grown = max(length, self.capacity + self.GROW_BY, int(self.capacity * 1.5))
        new_cap = min(self.max_capacity, grown)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:3], new_cap, old.shape[4]))
            new[:, :, :, : old.shape[3]] = old
            setattr(self, name, new)

    def view(self, rows: int) -> CacheView:
        """The first `rows` rows, for a decode step over the live sequences."""
        return CacheView(self.k[:, :rows], self.v[:, :rows])

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy one row's first `length` positions to another row (closing a gap)."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]
