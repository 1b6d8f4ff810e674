"""Line detection: how many ground-truth lines the prediction found, at an IoU threshold.

Boxes are the lines' axis-aligned bounding boxes. Pairs are matched one to one, greedily by
decreasing IoU (the usual detection protocol); a pair counts when its IoU reaches the
threshold. Recall is matched / GT lines, precision matched / predicted lines.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import Box


@dataclass(frozen=True)
class LineCounts:
    gt: int = 0
    pred: int = 0
    matched: int = 0

    def __add__(self, other: LineCounts) -> LineCounts:
        return LineCounts(self.gt + other.gt, self.pred + other.pred, self.matched + other.matched)

    @property
    def recall(self) -> float | None:
        return self.matched / self.gt if self.gt else None

    @property
    def precision(self) -> float | None:
        return self.matched / self.pred if self.pred else None


def iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def match_lines(gt: list[Box], pred: list[Box], threshold: float) -> LineCounts:
    pairs = []
    for i, g in enumerate(gt):
        for j, p in enumerate(pred):
            # cheap reject before the division: boxes that do not overlap at all
            if p[0] < g[2] and g[0] < p[2] and p[1] < g[3] and g[1] < p[3]:
                value = iou(g, p)
                if value >= threshold and value > 0:
                    pairs.append((value, i, j))
    pairs.sort(reverse=True)
    used_gt, used_pred = set(), set()
    for _, i, j in pairs:
        if i not in used_gt and j not in used_pred:
            used_gt.add(i)
            used_pred.add(j)
    return LineCounts(len(gt), len(pred), len(used_gt))
