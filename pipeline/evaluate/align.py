"""Edit counts between two sequences: substitutions, insertions and deletions, separately.

rapidfuzz computes the Levenshtein alignment in C++. Sequences of grapheme clusters are passed
as strings when every cluster is a single code point (most text), which rapidfuzz compares
fastest; otherwise as lists of clusters, so a cluster is still one symbol.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein


@dataclass(frozen=True)
class Edits:
    substitutions: int = 0
    insertions: int = 0  # in the prediction, not in the ground truth
    deletions: int = 0  # in the ground truth, missing from the prediction

    @property
    def total(self) -> int:
        return self.substitutions + self.insertions + self.deletions

    def __add__(self, other: Edits) -> Edits:
        return Edits(
            self.substitutions + other.substitutions,
            self.insertions + other.insertions,
            self.deletions + other.deletions,
        )


def _as_sequences(gt: Sequence[str], pred: Sequence[str]) -> tuple:
    if isinstance(gt, str) and isinstance(pred, str):
        return gt, pred
    if all(len(c) == 1 for c in gt) and all(len(c) == 1 for c in pred):
        return "".join(gt), "".join(pred)
    return list(gt), list(pred)


def count_edits(gt: Sequence[str], pred: Sequence[str], confusions: Counter | None = None) -> Edits:
    """The edits of one optimal alignment; `confusions` (if given) gains (gt, pred) pairs,
    with "" for the missing side of an insertion or deletion."""
    if not gt or not pred:
        if confusions is not None:
            confusions.update((g, "") for g in gt)
            confusions.update(("", p) for p in pred)
        return Edits(0, len(pred), len(gt))
    a, b = _as_sequences(gt, pred)
    if a == b:
        return Edits()
    ops = Levenshtein.editops(a, b).as_list()  # [(tag, gt_pos, pred_pos)]
    tags = Counter(op[0] for op in ops)
    if confusions is not None:
        confusions.update(
            (gt[i], pred[j])
            if tag == "replace"
            else ((gt[i], "") if tag == "delete" else ("", pred[j]))
            for tag, i, j in ops
        )
    subs, ins, dels = tags["replace"], tags["insert"], tags["delete"]
    return Edits(subs, ins, dels)


def opcodes(gt: Sequence[str], pred: Sequence[str]) -> list[tuple[str, int, int, int, int]]:
    """(tag, gt_start, gt_end, pred_start, pred_end) blocks for a side-by-side diff."""
    if not gt or not pred:
        if not gt and not pred:
            return []
        return [("insert" if pred else "delete", 0, len(gt), 0, len(pred))]
    a, b = _as_sequences(gt, pred)
    return [tuple(op) for op in Levenshtein.opcodes(a, b)]
