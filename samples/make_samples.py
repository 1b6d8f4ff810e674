"""Write the small sample collection in samples/inputs/ that a newcomer runs the pipeline on.

Every file is drawn here from public-domain text with fonts already on the machine, so the
project ships no third-party scans. Output is deterministic (fixed dates, no randomness): running
the script again on the same machine rewrites identical bytes. Fonts differ between machines, so
another machine may draw slightly different pixels; that is fine for samples.

    python samples/make_samples.py            # writes samples/inputs/
    python samples/make_samples.py --out DIR
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
FIXED_DATE = time.gmtime(1_704_067_200)  # 2024-01-01, so the PDF's dates never change

GETTYSBURG = (
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, "
    "conceived in Liberty, and dedicated to the proposition that all men are created equal. "
    "Now we are engaged in a great civil war, testing whether that nation, or any nation so "
    "conceived and so dedicated, can long endure. We are met on a great battle-field of that "
    "war. We have come to dedicate a portion of that field, as a final resting place for those "
    "who here gave their lives that that nation might live. It is altogether fitting and proper "
    "that we should do this."
)
GETTYSBURG_2 = (
    "But, in a larger sense, we can not dedicate -- we can not consecrate -- we can not hallow "
    "-- this ground. The brave men, living and dead, who struggled here, have consecrated it, "
    "far above our poor power to add or detract. The world will little note, nor long remember "
    "what we say here, but it can never forget what they did here."
)
GETTYSBURG_3 = (
    "It is for us the living, rather, to be dedicated here to the unfinished work which they "
    "who fought here have thus far so nobly advanced. It is rather for us to be here dedicated "
    "to the great task remaining before us -- that from these honored dead we take increased "
    "devotion to that cause for which they gave the last full measure of devotion -- that this "
    "nation, under God, shall have a new birth of freedom -- and that government of the people, "
    "by the people, for the people, shall not perish from the earth."
)
DECLARATION = (
    "When in the Course of human events, it becomes necessary for one people to dissolve the "
    "political bands which have connected them with another, and to assume among the powers of "
    "the earth, the separate and equal station to which the Laws of Nature and of Nature's God "
    "entitle them, a decent respect to the opinions of mankind requires that they should declare "
    "the causes which impel them to the separation."
)
# Analects (論語), book 1, chapters 1-4, unpunctuated as in a woodblock edition.
LUNYU = [
    "學而第一",
    "子曰學而時習之不亦說乎有朋自遠方來不亦樂乎",
    "人不知而不慍不亦君子乎",
    "有子曰其為人也孝弟而好犯上者鮮矣不好犯上而",
    "好作亂者未之有也君子務本本立而道生孝弟也者",
    "其為仁之本與",
    "子曰巧言令色鮮矣仁",
    "曾子曰吾日三省吾身為人謀而不忠乎與朋友交而",
    "不信乎傳不習乎",
]
REGISTER = [
    ("1862-03-04", "Hannah Whitcomb", "Deed of sale, lot 14", "$120.00"),
    ("1862-03-11", "Josiah Pratt", "Mortgage, mill on Bear Creek", "$450.00"),
    ("1862-04-02", "Mary Ellen Doyle", "Will, proved", "--"),
    ("1862-04-19", "Samuel Okafor", "Deed of gift, house and garden", "--"),
    ("1862-05-06", "Ruth Castellanos", "Lease, five years", "$36.00"),
    ("1862-05-27", "Abner Lindqvist", "Release of dower", "$15.50"),
    ("1862-06-10", "Eliza Fairbanks", "Deed of sale, lot 22", "$210.00"),
    ("1862-06-30", "Thomas Yellowhorse", "Power of attorney", "--"),
    ("1862-07-15", "Cornelia Voss", "Mortgage, discharged", "$300.00"),
    ("1862-08-01", "Isaac Mendelsohn", "Bill of sale, two horses", "$85.00"),
    ("1862-08-22", "Prudence Adeyemi", "Deed of partition", "--"),
    ("1862-09-09", "Gideon Marsh", "Deed of sale, lot 7", "$95.00"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "inputs")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    serif = _latin_font()
    written = [
        _printed_pdf(out / "gettysburg_3p.pdf", serif),
        _register_tiff(out / "deed_register_2p.tif", serif),
        _notice_jpeg(out / "declaration_notice.jpg", serif),
    ]
    cjk = _cjk_font()
    if cjk is None:
        print("no CJK font found (install fonts-noto-cjk): skipping the vertical Chinese page")
    else:
        written.append(_vertical_cjk_png(out / "lunyu_vertical_zh.png", cjk))
    for path in written:
        print(f"{path.relative_to(out.parent)}  {path.stat().st_size / 1024:.0f} KiB")
    return 0


# -- fonts ---------------------------------------------------------------------------------------


def _latin_font() -> Path | None:
    return _fc_match("DejaVu Serif:style=Book") or _fc_match("serif")


def _fc_match(pattern: str) -> Path | None:
    if shutil.which("fc-match") is None:
        return None
    found = subprocess.run(
        ["fc-match", "-f", "%{file}", pattern], capture_output=True, text=True, check=False
    ).stdout.strip()
    return Path(found) if found and Path(found).is_file() else None


def _font(path: Path | None, size: int, index: int = 0) -> ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(str(path), size, index=index)


def _cjk_font() -> tuple[Path, int] | None:
    """A CJK serif (Ming/Song style, as in printed books) with traditional glyphs if possible."""
    if shutil.which("fc-list") is None:
        return None
    listing = subprocess.run(
        ["fc-list", ":lang=zh", "file", "family", "style"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    files = sorted({line.split(":")[0] for line in listing.splitlines() if line})
    files.sort(key=lambda f: ("Serif" not in f, "Bold" in f, f))
    for file in files:
        for index in range(16):
            try:
                font = ImageFont.truetype(file, 20, index=index)
            except OSError:
                break
            family = font.getname()[0]
            if family.endswith((" TC", " HK")) or not file.endswith(".ttc"):
                return Path(file), index
    return (Path(files[0]), 0) if files else None


# -- pages ---------------------------------------------------------------------------------------


def _text_page(
    size: tuple[int, int], dpi: int, font_path: Path | None, title: str, body: str, folio: str
) -> Image.Image:
    """A printed page: running title, justified-looking body, folio; grey, white paper."""
    page = Image.new("L", size, 255)
    draw = ImageDraw.Draw(page)
    margin = dpi * 3 // 4
    title_font = _font(font_path, dpi // 6)
    body_font = _font(font_path, dpi // 7)
    draw.text((size[0] // 2, margin), title, font=title_font, fill=0, anchor="mt")
    line_height = body_font.size * 3 // 2
    width_chars = int((size[0] - 2 * margin) / (body_font.getlength("n") or 1))
    y = margin + 3 * line_height
    for line in textwrap.wrap(body, width=width_chars):
        draw.text((margin, y), line, font=body_font, fill=20)
        y += line_height
    draw.text((size[0] // 2, size[1] - margin), folio, font=body_font, fill=0, anchor="mb")
    return page


def _printed_pdf(path: Path, font: Path | None) -> Path:
    """3 pages of printed text as a bitonal PDF (CCITT G4), like a scanned pamphlet."""
    dpi = 150
    size = (dpi * 11 // 2, dpi * 17 // 2)  # 5.5 x 8.5 in
    title = "ADDRESS DELIVERED AT GETTYSBURG"
    bodies = [GETTYSBURG, GETTYSBURG_2, GETTYSBURG_3]
    pages = [
        _text_page(size, dpi, font, title, body, f"- {n} -").point(lambda v: 255 if v > 150 else 0)
        for n, body in enumerate(bodies, 1)
    ]
    pages = [p.convert("1", dither=Image.Dither.NONE) for p in pages]
    pages[0].save(
        path,
        save_all=True,
        append_images=pages[1:],
        resolution=dpi,
        title="Address delivered at Gettysburg (sample)",
        producer="anandasky-batch samples/make_samples.py",
        creationDate=FIXED_DATE,
        modDate=FIXED_DATE,
    )
    return path


def _register_tiff(path: Path, font: Path | None) -> Path:
    """A 2-page bitonal Group 4 TIFF of a ruled deed register, the commonest archival scan."""
    dpi = 120
    size = (dpi * 17 // 2, dpi * 11)  # 8.5 x 11 in
    pages = []
    for n, entries in enumerate((REGISTER[:6], REGISTER[6:]), 1):
        page = Image.new("L", size, 255)
        draw = ImageDraw.Draw(page)
        head = _font(font, dpi // 5)
        cell = _font(font, dpi // 8)
        margin = dpi // 2
        draw.text((size[0] // 2, margin), "REGISTER OF DEEDS, 1862", font=head, fill=0, anchor="mt")
        draw.text((size[0] - margin, margin), f"folio {n}", font=cell, fill=0, anchor="rt")
        columns = [margin, margin + dpi * 3 // 2, margin + dpi * 7 // 2, size[0] - margin - dpi]
        top = margin + dpi
        row = dpi * 2 // 3
        for x in (*columns, size[0] - margin):
            draw.line([(x, top), (x, top + row * (len(entries) + 1))], fill=0, width=2)
        for i in range(len(entries) + 2):
            y = top + row * i
            draw.line([(margin, y), (size[0] - margin, y)], fill=0, width=2)
        for i, values in enumerate((("Date", "Grantor", "Instrument", "Fee"), *entries)):
            for x, value in zip(columns, values, strict=True):
                draw.text((x + 8, top + row * i + row // 3), value, font=cell, fill=0)
        pages.append(page.point(lambda v: 255 if v > 150 else 0).convert("1"))
    pages[0].save(
        path, save_all=True, append_images=pages[1:], compression="group4", dpi=(dpi, dpi)
    )
    return path


def _notice_jpeg(path: Path, font: Path | None) -> Path:
    """A greyscale JPEG of a printed notice on toned paper, slightly skewed like a phone photo."""
    dpi = 100
    size = (dpi * 7, dpi * 5)
    page = _text_page(
        size, dpi, font, "IN CONGRESS, JULY 4, 1776", DECLARATION, "printed by order"
    ).point(lambda v: 60 + v * 175 // 255)
    page = page.rotate(0.8, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=235)
    page.save(path, quality=70, optimize=True, dpi=(dpi, dpi))
    return path


def _vertical_cjk_png(path: Path, font: tuple[Path, int]) -> Path:
    """A woodblock-style half-folio: ruled columns read top to bottom, right to left."""
    columns, per_column, cell = 9, 21, 40
    margin = 60
    width = margin * 2 + columns * cell * 3 // 2
    height = margin * 2 + per_column * cell + cell
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    face = _font(font[0], cell * 9 // 10, index=font[1])
    left, right = margin, width - margin
    top, bottom = margin, height - margin
    draw.rectangle([left - 8, top - 8, right + 8, bottom + 8], outline=0, width=5)
    draw.rectangle([left, top, right, bottom], outline=0, width=2)
    pitch = (right - left) / columns
    for c in range(1, columns):
        x = round(right - c * pitch)
        draw.line([(x, top), (x, bottom)], fill=0, width=1)
    for c, text in enumerate(LUNYU[:columns]):
        x = right - (c + 0.5) * pitch
        indent = 2 if c == 0 else 0  # the chapter title sits lower, as in printed editions
        for r, char in enumerate(text[:per_column]):
            y = top + cell // 2 + (r + indent) * cell
            draw.text((x, y), char, font=face, fill=0, anchor="mt")
    page = page.quantize(colors=8, dither=Image.Dither.NONE)
    page.save(path, optimize=True, dpi=(150, 150))
    return path


if __name__ == "__main__":
    sys.exit(main())
