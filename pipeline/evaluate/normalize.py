"""Text as it is counted: Unicode NFC, then grapheme clusters (characters) and words.

Grapheme clusters and words are Unicode's own segmentations (UAX #29) through the `regex`
module: `\\X` for extended grapheme clusters, `(?w)\\b` for default word boundaries. So a
combining accent, a CJK ideograph or an emoji with skin-tone modifier counts once, and CJK text
has words without spaces. Words made only of whitespace, punctuation, symbols or marks are not
words (the definition dinglehopper uses), so WER does not depend on punctuation spacing.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import regex

from pipeline.errors import BadArguments

NORMALIZATIONS = ("case", "whitespace", "punctuation", "historic")
_GRAPHEME = regex.compile(r"\X")
# A code point outside these Grapheme_Cluster_Break classes can join its neighbour; text without
# one is a sequence of one-code-point clusters (checked for every code point in the tests).
_JOINS = regex.compile(r"[^\p{GCB=Other}\p{GCB=Control}\p{GCB=LF}]")
_WORD_BOUNDARY = regex.compile(r"(?wV1)\b")
_SPACE_RUN = regex.compile(r"[^\S\n]+")
_LINE_BREAKS = regex.compile(r" ?\n[\n ]*")  # with the spaces around it, and empty lines
_ANY_SPACE_RUN = regex.compile(r"\s+")
_PUNCTUATION = regex.compile(r"\p{P}+")
# A word holds a letter, a digit, or an unassigned/private/surrogate code point: everything but
# marks, punctuation, symbols, separators, controls and format characters (dinglehopper's rule).
_WORDY = regex.compile(r"[\p{L}\p{N}\p{Co}\p{Cn}\p{Cs}]")

# Historic letter forms and ligatures read as their modern letters (the `historic` option):
# ligatures unjoined and long s, r rotunda, etc. mapped, in the spirit of dinglehopper's
# NFC_SBB normalisation, so a model is not penalised for a transcription guideline.
HISTORIC = {
    "ſ": "s",  # long s
    "ꝛ": "r",  # r rotunda
    "ꝰ": "us",
    "ﬀ": "ff",
    "ﬁ": "fi",
    "ﬂ": "fl",
    "ﬃ": "ffi",
    "ﬄ": "ffl",
    "ﬅ": "st",
    "ﬆ": "st",
    "Ꜳ": "AA",
    "ꜳ": "aa",
    "Æ": "AE",
    "æ": "ae",
    "Œ": "OE",
    "œ": "oe",
    "ꝑ": "per",
    "ẜ": "s",
    "ẝ": "s",
    "ĳ": "ij",
    "\u2014": "\u2013",  # em dash -> en dash
    "\u2e17": "-",  # double oblique hyphen
    "\u2e1a": "-",
    "\u00ad": "",  # soft hyphen
    "\u0364": "\u0308",  # combining latin small e above -> diaeresis (a-umlaut variants)
    "\u2019": "'",
    "\u2018": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
}
_HISTORIC_TABLE = {ord(k): v for k, v in HISTORIC.items() if len(k) == 1}


@dataclass(frozen=True)
class Normalization:
    """The normalisations applied to both sides before counting; NFC is always applied.

    Without options the text is compared as read, except that each line is stripped and runs of
    spaces and tabs inside it count as one space (writers differ there, readers do not).
    """

    case: bool = False
    whitespace: bool = False  # every run of whitespace, line breaks included, is one space
    punctuation: bool = False  # Unicode punctuation (category P) removed
    historic: bool = False  # ligatures unjoined, long s and other historic forms mapped

    @classmethod
    def parse(cls, value: str | None) -> Normalization:
        names = [n.strip() for n in (value or "").split(",") if n.strip()]
        unknown = [n for n in names if n not in NORMALIZATIONS]
        if unknown:
            raise BadArguments(
                f"--normalize {','.join(unknown)}: unknown; choose from {','.join(NORMALIZATIONS)}"
            )
        return cls(**{n: True for n in names})

    @property
    def names(self) -> list[str]:
        """The options in effect, as the report states them ("nfc" first, always)."""
        return ["nfc", *(n for n in NORMALIZATIONS if getattr(self, n))]

    def apply(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        if self.historic:
            text = unicodedata.normalize("NFC", text.translate(_HISTORIC_TABLE))
        if self.case:
            text = unicodedata.normalize("NFC", text.casefold())
        if self.punctuation:
            text = _PUNCTUATION.sub("", text)
        if self.whitespace:
            return _ANY_SPACE_RUN.sub(" ", text).strip()
        return _LINE_BREAKS.sub("\n", _SPACE_RUN.sub(" ", text)).strip(" \n")


def graphemes(text: str) -> Sequence[str]:
    """Extended grapheme clusters: what a reader counts as one character.

    Text in which every code point is its own cluster (most text after NFC) is returned as the
    string itself: 4x faster here, and rapidfuzz compares strings fastest."""
    return _GRAPHEME.findall(text) if _JOINS.search(text) else text


_IS_WORD: dict[str, bool] = {}  # segment -> verdict; text repeats its words and punctuation


def words(text: str) -> list[str]:
    """UAX #29 words, without the segments that hold no letter, digit or similar."""
    cache = _IS_WORD
    if len(cache) > 200_000:
        cache.clear()
    out = []
    for segment in _WORD_BOUNDARY.split(text):
        verdict = cache.get(segment)
        if verdict is None:
            verdict = cache[segment] = _WORDY.search(segment) is not None
        if verdict:
            out.append(segment)
    return out
