"""Byte-level test tokenizer and per-token text offsets."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from pipeline.errors import CheckpointError
from pipeline.model.config import SpecialTokens
from pipeline.model.tokenizer import TextTokenizer, build_byte_level_tokenizer

SPECIAL = SpecialTokens(256, 257, 258, 259, 260, 261)

SAMPLES = [
    "Recognize the text in this image.",
    "右起豎排：大清光緒二十年 甲午",  # vertical CJK, traditional
    "emoji 👍🏽 and 🇯🇵 flags, ZWJ 👩‍👩‍👧",
    "accents: café, Ångström, naïve, Ελληνικά, ру́сский",
    "control \x00\x01\t\r\n and <|im_end|> typed by a user",
    "\U0010ffff\ufeff surrogate-free edge code points",
]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(build_byte_level_tokenizer(), SPECIAL)


@pytest.mark.parametrize("text", SAMPLES)
def test_any_unicode_text_round_trips_through_utf8_bytes(tok: TextTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    text_out, ends = tok.decode_with_ends(ids)
    assert text_out == text and ends[-1] == len(text)


def test_special_tokens_follow_the_bytes_and_decode_to_nothing(tok: TextTokenizer) -> None:
    raw = build_byte_level_tokenizer()
    ids = {s: raw.token_to_id(s) for s in SPECIAL.by_string()}
    assert ids == SPECIAL.by_string()
    assert raw.get_vocab_size() == 262
    text, ends = tok.decode_with_ends([ord("a"), SPECIAL.im_end_id, ord("b")])
    assert text == "ab" and ends == (1, 1, 2)


def test_token_ends_point_where_each_tokens_text_is_complete(tok: TextTokenizer) -> None:
    ids = tok.encode("a世b")  # 世 is three bytes
    text, ends = tok.decode_with_ends(ids)
    assert text == "a世b"
    assert ends == (1, 1, 1, 2, 3)


def test_invalid_utf8_from_random_weights_becomes_replacement_characters(
    tok: TextTokenizer,
) -> None:
    ids = [0xFF, ord("A"), 0xE4, 0xB8]  # stray byte, letter, truncated 3-byte sequence
    text, ends = tok.decode_with_ends(ids)
    assert text == "\ufffdA\ufffd"
    assert text == bytes(ids).decode("utf-8", errors="replace")
    assert ends == (1, 2, 2, 3)


def test_tokenizer_json_is_byte_identical_between_builds() -> None:
    assert build_byte_level_tokenizer().to_str() == build_byte_level_tokenizer().to_str()


def test_tokenizer_disagreeing_with_config_ids_is_a_checkpoint_error(tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    build_byte_level_tokenizer().save(str(path))
    wrong = SpecialTokens(256, 257, 258, 259, 261, 260)  # vision_end / image_pad swapped
    with pytest.raises(CheckpointError, match="<\\|image_pad\\|> is 261 in the tokenizer but 260"):
        TextTokenizer.from_file(path, wrong)


def test_unreadable_tokenizer_file_is_a_checkpoint_error(tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="cannot load tokenizer"):
        TextTokenizer.from_file(path, SPECIAL)


def test_ids_past_the_tokenizer_vocab_decode_to_nothing(tok: TextTokenizer) -> None:
    assert isinstance(build_byte_level_tokenizer(), Tokenizer)
    assert tok.decode_with_ends([ord("x"), 300]) == ("x", (1, 1))
