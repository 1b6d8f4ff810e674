"""One page's way through the continuous engine: what it needs, what it has produced, where it sits.

A `Sequence` is the unit the scheduler moves between the waiting queue and the batch's cache rows
(nano-vllm's `Sequence`, without sampling parameters: decoding here is greedy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.model.generation import Generated


@dataclass
class Sequence:
    """A page's prompt length and token budget, its output so far, and its cache row."""

    index: int  # position in the caller's list: results come back in that order
    prompt_len: int
    max_new_tokens: int
    result: Generated = field(default_factory=Generated)
    steps: int = 0  # tokens chosen so far (the last one not yet fed back)
    row: int = -1  # cache row while running, -1 otherwise

    @property
    def cache_len(self) -> int:
        """Positions this sequence holds in its cache row: its prompt, then every token chosen
        before the last (the last waits to be fed at the next step)."""
        return self.prompt_len + max(self.steps - 1, 0)

    @property
    def reserved(self) -> int:
        """Cache positions it may ever need: prompt plus every token of its budget."""
        return self.prompt_len + self.max_new_tokens

    @property
    def finished(self) -> bool:
        return bool(self.result.stop_reason)
