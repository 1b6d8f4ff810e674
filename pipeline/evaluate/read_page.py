"""PAGE XML (2013-07-15, 2019-07-15, any namespace year): text in the file's reading order.

Regions come in ReadingOrder order when the file has one (ordered and unordered groups,
nested), then any region it leaves out in document order. Text is taken at line level: the
line's TextEquiv (lowest `index` when there are several), else its Words' TextEquivs joined by
spaces; a region whose lines hold no text at all gives its own TextEquiv, split at line breaks,
without boxes. Line boxes are the bounding boxes of the lines' Coords polygons; a box that is the
whole page (`0,0 W-1,0 ...`, how writers without geometry fill the required Coords) is none.
"""

from __future__ import annotations

from .records import Box, PageText, TextLine, box_from_points


def _local(el) -> str:
    tag = el.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _children(el, name: str) -> list:
    return [c for c in el if _local(c) == name]


def _text_equiv(el) -> str | None:
    """The Unicode of the element's first TextEquiv by @index (absent index sorts first)."""
    equivs = _children(el, "TextEquiv")
    if not equivs:
        return None

    def order(te) -> int:
        try:
            return int(te.get("index", "-1"))
        except ValueError:
            return -1

    for te in sorted(equivs, key=order):
        unicode = _children(te, "Unicode")
        if unicode:
            return unicode[0].text or ""
    return None


def _points(el) -> list[tuple[float, float]]:
    coords = _children(el, "Coords")
    if not coords:
        return []
    points = []
    for pair in (coords[0].get("points") or "").split():
        x, _, y = pair.partition(",")
        try:
            points.append((float(x), float(y)))
        except ValueError:
            return []
    if not points:  # PAGE 2010 style: <Point x= y=/> children
        for p in _children(coords[0], "Point"):
            try:
                points.append((float(p.get("x")), float(p.get("y"))))
            except (TypeError, ValueError):
                return []
    return points


def _line(line, no_box: Box | None) -> TextLine | None:
    text = _text_equiv(line)
    if text is None:
        parts = [_text_equiv(w) for w in _children(line, "Word")]
        text = " ".join(p for p in parts if p)
    text = " ".join(text.split())
    box = box_from_points(_points(line))
    return TextLine(text, None if box == no_box else box) if text else None


def _region_lines(region, no_box: Box | None) -> list[TextLine]:
    lines = [_line(line, no_box) for line in _children(region, "TextLine")]
    lines = [line for line in lines if line is not None]
    if lines:
        return lines
    text = _text_equiv(region) or ""
    return [TextLine(" ".join(s.split())) for s in text.split("\n") if s.strip()]


def _ordered_ids(group) -> list[str]:
    """Region ids of a ReadingOrder group, recursively, in reading order."""
    members = [c for c in group if _local(c) != "Labels" and _local(c) != "UserDefined"]
    if _local(group).startswith("Ordered"):
        members.sort(key=lambda c: int(c.get("index", "0")) if c.get("index", "0").isdigit() else 0)
    ids = []
    for member in members:
        ref = member.get("regionRef")
        if ref:
            ids.append(ref)
        if _local(member).endswith(("Group", "GroupIndexed")):
            ids.extend(_ordered_ids(member))
    return ids


def read_page(root) -> list[PageText]:
    page = next((el for el in root if _local(el) == "Page"), None)
    if page is None:
        return []
    regions = list(page.iter("{*}TextRegion"))
    by_id = {r.get("id"): r for r in regions}
    order: list = []
    seen: set[int] = set()
    for ro in _children(page, "ReadingOrder"):
        for group in ro:
            for region_id in _ordered_ids(group):
                region = by_id.get(region_id)
                if region is not None and id(region) not in seen:
                    seen.add(id(region))
                    order.append(region)
    order += [r for r in regions if id(r) not in seen]
    try:
        # writers without geometry (ours among them) give every line the full page extent
        no_box = (0, 0, int(page.get("imageWidth")) - 1, int(page.get("imageHeight")) - 1)
    except (TypeError, ValueError):
        no_box = None
    lines = [line for region in order for line in _region_lines(region, no_box)]
    return [PageText(tuple(lines), "page")]
