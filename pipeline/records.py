"""Plain records that cross process boundaries (picklable, no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recognition:
    """What the model produced for one page image.

    `token_logprobs[i]` is the natural-log probability of the i-th generated token (the stop token
    excluded) and `token_ends[i]` the character offset in `text` where that token's decoded text
    ends; together they let the writers give each word a confidence.
    """

    text: str
    token_logprobs: tuple[float, ...]
    token_ends: tuple[int, ...]
    stop_reason: str  # "eos" | "max_new_tokens" | "repetition"

    @property
    def num_tokens(self) -> int:
        return len(self.token_logprobs)
