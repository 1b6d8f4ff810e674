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
    # `--layout lines`: one Recognition per detected line, in the layout's reading order; the
    # page's own fields are then the lines' texts joined by "\n" and their tokens in sequence.
    lines: tuple[Recognition, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_logprobs)

    @classmethod
    def of_lines(cls, lines: list[Recognition]) -> Recognition:
        """One page's result from its lines' (a page without lines: empty text, no tokens)."""
        logprobs: list[float] = []
        ends: list[int] = []
        offset = 0
        for line in lines:
            logprobs.extend(line.token_logprobs)
            ends.extend(offset + end for end in line.token_ends)
            offset += len(line.text) + 1  # the "\n" after it
        reasons = {line.stop_reason for line in lines}
        reason = next((r for r in ("repetition", "max_new_tokens") if r in reasons), "eos")
        text = "\n".join(line.text for line in lines)
        return cls(text, tuple(logprobs), tuple(ends), reason, tuple(lines))
