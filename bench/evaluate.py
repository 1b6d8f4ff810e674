"""How long `evaluate` takes on 10^4 pages: the whole command, and its parts.

A collection of 100-page documents is written to a temp dir: ground truth as text files named
`docNNNNN_PPPP.gt.txt` (the naming convention), predictions in the OUT/pages layout
(`docNNNNN.pdf/PPPP.txt` or `.alto.xml`), each page ~2,000 characters of German-ish text with
some diacritics and long s, the prediction with ~5% of its characters substituted, deleted or
inserted. Measured, interleaved, medians:

* `evaluate()` (find files, match names, read, count, sum), counting in one process, and in
  two worker processes (`--workers 2`),
* counting alone on pages already in memory (NFC, grapheme clusters, rapidfuzz alignments,
  words),
* the CLI as a user runs it (`python -m cli evaluate --pred P --gt G --json-file F`), imports
  included.

    python bench/evaluate.py                    # 10,000 pages, text and ALTO predictions
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import benchlib
from benchlib import Goal, median

NAME = "evaluate"
PAGES_PER_DOC = 100
_WORD_LIST = (
    "der die das und in zu den von mit sich des auf für ist im dem nicht ein eine als auch "
    "es an werden aus er hat daß sie nach wird bei einer um am sind noch wie einem über "
    "Gemeinde Schultheiß Kirchſpiel Grundſtück Zeugen Urkunde Gulden Kreuzer Ackerfeld Wieſe "
    "Erbſchaft Käufer Verkäufer Jahre Monats Tage anno Herrn Frau Witwe ledig gebürtig"
)
WORDS = _WORD_LIST.split(" ")


def page_text(rnd: random.Random, chars: int) -> str:
    lines, line = [], []
    total = 0
    while total < chars:
        word = rnd.choice(WORDS)
        line.append(word)
        total += len(word) + 1
        if sum(len(w) + 1 for w in line) > 60:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines)


def noisy(rnd: random.Random, text: str, rate: float) -> str:
    out = []
    for ch in text:
        r = rnd.random()
        if r < rate / 3 and ch != "\n":
            out.append(rnd.choice("aeinrstuſ"))  # substitution
        elif r < 2 * rate / 3 and ch != "\n":
            continue  # deletion
        elif r < rate:
            out.append(ch + rnd.choice("aeilmnorsu."))  # insertion
        else:
            out.append(ch)
    return "".join(out)


def alto(text: str) -> str:
    lines = []
    for i, line in enumerate(text.split("\n")):
        words = "<SP/>".join(f"<String CONTENT={quoteattr(w)}/>" for w in line.split(" ") if w)
        lines.append(f'<TextLine ID="l{i}">{words}</TextLine>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<alto xmlns="http://www.loc.gov/standards/'
        'alto/ns-v4#"><Layout><Page ID="p"><PrintSpace><TextBlock ID="b">'
        + "".join(lines)
        + "</TextBlock></PrintSpace></Page></Layout></alto>\n"
    )


def build(root: Path, pages: int, chars: int, fmt: str, rate: float) -> tuple[Path, Path, list]:
    rnd = random.Random(7)
    gt_dir, pred_dir = root / "gt", root / f"pred-{fmt}"
    texts = []
    for n in range(pages):
        doc, number = n // PAGES_PER_DOC, n % PAGES_PER_DOC + 1
        gt = page_text(rnd, chars)
        pred = noisy(rnd, gt, rate)
        texts.append((gt, pred))
        gt_file = gt_dir / f"box{doc // 100:03d}" / f"doc{doc:05d}_{number:04d}.gt.txt"
        pred_folder = pred_dir / f"box{doc // 100:03d}" / f"doc{doc:05d}.pdf"
        if number == 1:
            gt_file.parent.mkdir(parents=True, exist_ok=True)
            pred_folder.mkdir(parents=True, exist_ok=True)
        gt_file.write_text(gt + "\n", encoding="utf-8")
        if fmt == "alto":
            (pred_folder / f"{number:04d}.alto.xml").write_text(alto(pred), encoding="utf-8")
        else:
            (pred_folder / f"{number:04d}.txt").write_text(pred + "\n", encoding="utf-8")
    return gt_dir, pred_dir, texts


def count_only(texts: list) -> float:
    from pipeline.evaluate.metrics import count_page
    from pipeline.evaluate.normalize import Normalization
    from pipeline.evaluate.records import PageText, TextLine

    def page(t: str) -> PageText:
        return PageText(tuple(TextLine(s) for s in t.split("\n")), "text")

    pages = [(page(g), page(p)) for g, p in texts]
    norm = Normalization()
    started = time.perf_counter()
    for g, p in pages:
        count_page(g, p, norm, 0.5)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=10_000)
    p.add_argument("--chars", type=int, default=2000, help="characters per GT page")
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.pages, args.repeats = 200, 1
    from pipeline.evaluate import evaluate

    root = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    rows, times = [], {}
    try:
        started = time.perf_counter()
        gt, pred_text, texts = build(root, args.pages, args.chars, "text", args.noise)
        _, pred_alto, _ = build(root, args.pages, args.chars, "alto", args.noise)
        build_s = time.perf_counter() - started
        cer = None
        for _ in range(args.repeats):
            for label, pred, workers in (
                ("text, 1 process", pred_text, 1),
                ("text, --workers 2", pred_text, 2),
                ("alto, 1 process", pred_alto, 1),
            ):
                t0 = time.perf_counter()
                ev = evaluate(gt, pred=pred, workers=workers)
                times.setdefault(f"evaluate() {label}", []).append(time.perf_counter() - t0)
                assert ev.totals.statuses["evaluated"] == args.pages, ev.totals.statuses
                cer = ev.totals.cer
            times.setdefault("counting only", []).append(count_only(texts))
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "cli", "evaluate", "--pred", str(pred_text)]
            cmd += ["--gt", str(gt), "--json-file", str(root / "report.json")]
            done = subprocess.run(cmd, cwd=benchlib.REPO, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            times.setdefault("CLI, text, 1 process", []).append(time.perf_counter() - t0)
        for label, values in times.items():
            seconds = median(values)
            rows.append(
                {
                    "what": label,
                    "pages": args.pages,
                    "seconds": round(seconds, 3),
                    "pages_per_s": round(args.pages / seconds),
                    "runs": [round(v, 3) for v in values],
                }
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    benchlib.print_table(
        ["what", "pages", "median s", "pages/s"],
        [[r["what"], r["pages"], r["seconds"], r["pages_per_s"]] for r in rows],
        title=f"evaluate: {args.pages} pages of ~{args.chars} characters, {args.noise:.0%} noise",
    )
    cli_s = next(r["seconds"] for r in rows if r["what"].startswith("CLI"))
    goals = [Goal("CLI on 10^4 pages, seconds not minutes", "< 60 s", f"{cli_s:.1f} s", cli_s < 60)]
    benchlib.print_goals(goals)
    settings = {k: getattr(args, k) for k in ("pages", "chars", "noise", "repeats")}
    notes = [f"collection CER measured {cer:.4f} (noise {args.noise})", f"build {build_s:.1f} s"]
    path = benchlib.write_results(NAME, args.results_dir, settings, rows, goals, notes)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
