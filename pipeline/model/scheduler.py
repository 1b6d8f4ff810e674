"""Who runs next: a waiting queue of pages and a batch of cache rows that stays full.

The batch's live sequences always occupy rows `0..n-1` of the cache, so a decode step runs over
a prefix view of it (no gather, no copy). When sequences finish, waiting pages take their rows
at once; rows that nobody takes (the queue is empty) are closed by moving the last live rows
down into them, one row copy per finished page, never the whole cache.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from pipeline.model.sequence import Sequence


class Scheduler:
    """First come, first served: pages enter in the caller's order as rows free up."""

    def __init__(self, sequences: Iterable[Sequence], slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a batch needs at least one slot, got {slots}")
        self.slots = slots
        self.waiting: deque[Sequence] = deque(sequences)
        self.running: list[Sequence] = []  # running[row] sits in cache row `row`

    @property
    def done(self) -> bool:
        return not self.running and not self.waiting

    def refill(self, finished_rows: Iterable[int]) -> tuple[list[Sequence], list[tuple[int, int]]]:
        """Retire the sequences in `finished_rows`; admit waiting pages into the free rows.

        Returns the admitted sequences (their `row` set; they need a prefill) and the row moves
        `(src, dst)` that keep the live rows dense (`running[dst]` is the moved sequence); its KV,
        pending token and guard state must follow it. Admitted sequences never move.
        """
        holes = sorted(set(finished_rows))
        for row in holes:
            self.running[row].row = -1
        admitted = []
        free_tail = list(range(len(self.running), self.slots))
        while self.waiting and (holes or free_tail):
            seq = self.waiting.popleft()
            if holes:
                seq.row = holes.pop(0)
                self.running[seq.row] = seq
            else:
                seq.row = free_tail.pop(0)
                self.running.append(seq)
            admitted.append(seq)
        # Rows nobody took: the live rows past the new end move down into the gaps below it,
        # each at most once.
        end = len(self.running) - len(holes)
        gaps = [h for h in holes if h < end]
        movers = [r for r in range(end, len(self.running)) if r not in set(holes)]
        moves = list(zip(movers, gaps, strict=True))
        for src, dst in moves:
            self.running[dst] = self.running[src]
            self.running[dst].row = dst
        del self.running[end:]
        return admitted, moves
