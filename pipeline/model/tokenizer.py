"""Text tokenizer: `tokenizer.json` through the `tokenizers` library, plus exact per-token offsets.

Byte-level BPE (Qwen's, and the test checkpoints') can split one character over several tokens,
so "where does token i end in the text" is answered by feeding each token's bytes through an
incremental UTF-8 decoder: offsets are exact, monotonic, and invalid byte runs (random weights
produce them) become U+FFFD exactly as a one-shot decode would.
"""

from __future__ import annotations

import codecs
from functools import cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from pipeline.errors import CheckpointError
from pipeline.model.config import SPECIAL_TOKEN_STRINGS, SpecialTokens


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of ByteLevel tokenizers.

    Printable Latin-1 bytes stand for themselves; the rest are shifted to code points 256+ so no
    token string contains whitespace or control characters.
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


@cache
def _unicode_to_byte() -> dict[str, int]:
    return {ch: b for b, ch in bytes_to_unicode().items()}


def build_byte_level_tokenizer() -> Tokenizer:
    """256 byte tokens (id = byte value) and the chat/vision special tokens, no merges.

    Any Unicode text encodes (as its UTF-8 bytes) and decodes back exactly; deterministic, so
    test checkpoints are byte-identical from run to run.
    """
    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKEN_STRINGS]
    )
    return tok


class TextTokenizer:
    """Encodes prompt text and turns generated ids into text with per-token end offsets."""

    def __init__(
        self, tokenizer: Tokenizer, special: SpecialTokens, source: str = "tokenizer"
    ) -> None:
        self._tok = tokenizer
        # Prompt text is data: "<|im_end|>" typed by a user must not become the control token.
        self._tok.encode_special_tokens = True
        self._check_special(special, source)
        self.special = special
        added = self._tok.get_added_tokens_decoder()
        self._special_ids = {i for i, t in added.items() if t.special}
        self._added_text = {i: t.content for i, t in added.items() if not t.special}
        self._byte_level = isinstance(self._tok.decoder, decoders.ByteLevel)
        self._bytes: dict[int, bytes] = {}

    @classmethod
    def from_file(cls, path: str | Path, special: SpecialTokens) -> TextTokenizer:
        path = Path(path)
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise CheckpointError(f"cannot load tokenizer {path}: {exc}") from exc
        return cls(tok, special, source=str(path))

    def _check_special(self, special: SpecialTokens, source: str) -> None:
        wrong = []
        for text, expected in special.by_string().items():
            found = self._tok.token_to_id(text)
            if found != expected:
                wrong.append(f"{text} is {found} in the tokenizer but {expected} in config.json")
        if wrong:
            raise CheckpointError(f"{source}: special token ids disagree: " + "; ".join(wrong))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Plain text to ids; special-token strings in `text` are encoded as ordinary text."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a generated token contributes to the text (special tokens: none)."""
        cached = self._bytes.get(token_id)
        if cached is not None:
            return cached
        if token_id in self._special_ids:
            raw = b""
        elif token_id in self._added_text:
            raw = self._added_text[token_id].encode("utf-8")
        else:
            piece = self._tok.id_to_token(token_id)
            table = _unicode_to_byte()
            if piece is None:
                raw = b""  # ids past the tokenizer's vocab (padded embedding rows)
            elif self._byte_level and all(ch in table for ch in piece):
                raw = bytes(table[ch] for ch in piece)
            else:
                raw = self._tok.decode([token_id], skip_special_tokens=True).encode("utf-8")
        self._bytes[token_id] = raw
        return raw

    def decode_with_ends(self, ids: list[int]) -> tuple[str, tuple[int, ...]]:
        """Text of `ids` and, for each token, the character offset where its text ends.

        A token that completes no character (first byte of a multi-byte character) ends where the
        previous one did; bytes left incomplete at the end become U+FFFD owned by the last token.
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts: list[str] = []
        ends: list[int] = []
        length = 0
        for token_id in ids:
            piece = decoder.decode(self.token_bytes(token_id))
            parts.append(piece)
            length += len(piece)
            ends.append(length)
        tail = decoder.decode(b"", final=True)
        if tail:
            parts.append(tail)
            length += len(tail)
            if ends:
                ends[-1] = length
        return "".join(parts), tuple(ends)

    def decode(self, ids: list[int]) -> str:
        return self.decode_with_ends(ids)[0]
