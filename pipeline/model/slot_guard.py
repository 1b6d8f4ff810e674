"""The repetition guard for a continuous batch: per cache row, each row at its own step.

Same rule and arithmetic as `generation._RepetitionTracker` (run lengths of `tok[t] == tok[t-p]`
per period p, kept on the CPU), but rows are reset when a new page takes them and follow their
sequence when the scheduler moves it to another row.
"""

from __future__ import annotations

import torch

from pipeline.model.generation import RepetitionGuard


class SlotRepetitionTracker:
    """Token history and periodic run lengths of every cache row of a continuous batch."""

    def __init__(self, guard: RepetitionGuard, slots: int, max_steps: int) -> None:
        self.periods = torch.arange(1, guard.max_period + 1)
        self.limits = guard.thresholds()
        self.history = torch.zeros(slots, max(max_steps, 1), dtype=torch.long)
        self.runs = torch.zeros(slots, guard.max_period, dtype=torch.long)

    def reset(self, rows: list[int]) -> None:
        """A new page takes these rows: forget what the previous one wrote."""
        self.history[rows] = 0
        self.runs[rows] = 0

    def move(self, src: int, dst: int) -> None:
        self.history[dst] = self.history[src]
        self.runs[dst] = self.runs[src]

    def update(self, rows: list[int], steps: list[int], tokens: torch.Tensor) -> list[int]:
        """Record `tokens[i]` as step `steps[i]` of row `rows[i]`; per row, the tail to cut."""
        r = torch.tensor(rows)
        s = torch.tensor(steps)
        self.history[r, s] = tokens
        back = s[:, None] - self.periods[None, :]
        prev = self.history[r[:, None], back.clamp(min=0)]
        same = (prev == tokens[:, None]) & (back >= 0)
        runs = (self.runs[r] + 1) * same
        self.runs[r] = runs
        stuck = runs >= self.limits
        if not bool(stuck.any()):
            return [0] * len(rows)
        cut = []
        for i in range(len(rows)):
            hits = stuck[i].nonzero()
            # Keep the text up to the first copy of the unit: drop `runs` trailing tokens.
            cut.append(int(runs[i, hits[0, 0]]) if hits.numel() else 0)
        return cut
