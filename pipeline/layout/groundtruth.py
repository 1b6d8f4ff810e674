"""Line boxes from ground-truth files, and line recall: how the detector is judged.

Deliberately small (the boxes of TextLines only, namespace-agnostic): the tests and
bench/detection.py score detection with it. Full ALTO/PAGE reading lives elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.layout.geometry import BBox, Line, Point

# VOC layout labels (NDL layout dataset) that mark one line/column of text.
VOC_LINE_LABELS = ("2_handwritten", "3_typography")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_gt_lines(path: Path) -> list[BBox]:
    """Axis-aligned boxes of every text line in a PAGE, ALTO or Pascal-VOC layout file."""
    from lxml import etree

    root = etree.parse(str(path)).getroot()
    name = _local(root.tag)
    boxes: list[BBox] = []
    if name == "PcGts":
        for el in root.iter():
            if _local(el.tag) == "TextLine":
                coords = next(c for c in el if _local(c.tag) == "Coords")
                pts = [tuple(map(int, p.split(","))) for p in coords.get("points").split()]
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                boxes.append((min(xs), min(ys), max(xs), max(ys)))
    elif name == "alto":
        for el in root.iter():
            if _local(el.tag) == "TextLine":
                x, y = round(float(el.get("HPOS"))), round(float(el.get("VPOS")))
                w, h = round(float(el.get("WIDTH"))), round(float(el.get("HEIGHT")))
                boxes.append((x, y, x + w, y + h))
    elif name == "annotation":
        for obj in root.iter("object"):
            if obj.findtext("name") in VOC_LINE_LABELS:
                b = obj.find("bndbox")
                boxes.append(
                    tuple(int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
                )
    else:
        raise ValueError(f"{path}: not PAGE, ALTO or VOC layout XML (root element {name})")
    return boxes


def read_gt_baselines(path: Path) -> list[tuple[BBox, tuple[Point, ...]]]:
    """(line box, baseline points) of every TextLine with a baseline in a PAGE or ALTO file."""
    from lxml import etree

    out = []
    for el in etree.parse(str(path)).getroot().iter():
        if _local(el.tag) != "TextLine":
            continue
        if el.get("BASELINE"):  # ALTO 4: "x1 y1 x2 y2 ..."
            v = [round(float(t)) for t in el.get("BASELINE").replace(",", " ").split()]
            x, y = round(float(el.get("HPOS"))), round(float(el.get("VPOS")))
            box = (x, y, x + round(float(el.get("WIDTH"))), y + round(float(el.get("HEIGHT"))))
            out.append((box, tuple(zip(v[::2], v[1::2], strict=True))))
            continue
        parts = {_local(c.tag): c for c in el}
        if "Baseline" in parts and "Coords" in parts:
            pts = [tuple(map(int, p.split(","))) for p in parts["Coords"].get("points").split()]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            base = [tuple(map(int, p.split(","))) for p in parts["Baseline"].get("points").split()]
            out.append(((min(xs), min(ys), max(xs), max(ys)), tuple(base)))
    return out


def _y_at(points: tuple[Point, ...], x: float) -> float:
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / max(1, x1 - x0)
    return pts[0][1] if x < pts[0][0] else pts[-1][1]


def baseline_offsets(
    lines: list[Line], truth: list[tuple[BBox, tuple[Point, ...]]], threshold: float = 0.3
) -> list[float]:
    """Estimated minus true baseline height (px, + is lower) at the middle of each detected
    line that has a baseline and overlaps a GT line at IoU >= threshold."""
    out = []
    for line in lines:
        if not line.baseline or not truth:
            continue
        box, base = max(truth, key=lambda t: iou(line.bbox, t[0]))
        if iou(line.bbox, box) >= threshold:
            x = (line.bbox[0] + line.bbox[2]) / 2
            out.append(_y_at(line.baseline, x) - _y_at(base, x))
    return out


def iou(a: BBox, b: BBox) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def line_recall(found: list[BBox], truth: list[BBox], threshold: float = 0.5) -> float:
    """Share of GT lines matched one-to-one (greedy, best IoU first) at IoU >= threshold."""
    if not truth:
        return 1.0
    pairs = sorted(
        ((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)),
        reverse=True,
    )
    used_f: set[int] = set()
    used_t: set[int] = set()
    for score, i, j in pairs:
        if score < threshold:
            break
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return len(used_t) / len(truth)
