"""The public Recognizer API other stages are written against."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from pipeline.errors import BadArguments, CheckpointError
from pipeline.model import DEFAULT_PROMPT, Recognizer, checkpoint_checksum
from pipeline.model.checkpoint import read_config
from pipeline.model.modeling import count_parameters
from pipeline.recognition import load_recognizer
from pipeline.records import Recognition
from pipeline.runner.single_image import transcribe

# The decoder is transformers' Qwen3: CI runs these on transformers 4.55.4 as well.
pytestmark = [pytest.mark.compat, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def recognizer(tiny_model_dir: Path) -> Recognizer:
    return load_recognizer(tiny_model_dir, device="cpu")


def page(width: int, height: int, text: str = "Anno 1753") -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((4, 4), text, fill="black")
    return image


def test_recognizer_describes_its_model_and_device(
    recognizer: Recognizer, tiny_model_dir: Path
) -> None:
    assert recognizer.device == "cpu" and recognizer.dtype == "float32"
    assert recognizer.model_name == "anandasky-test-tiny"
    assert recognizer.model_checksum == checkpoint_checksum(tiny_model_dir)
    assert recognizer.num_parameters == count_parameters(read_config(tiny_model_dir))
    assert recognizer.max_image_pixels == 64 * 16 * 16
    assert recognizer.image_token_count(3000, 4000) <= 64
    assert recognizer.image_token_count(20, 20) >= 4


def test_recognitions_are_self_consistent(recognizer: Recognizer) -> None:
    images = [page(120, 200), page(700, 90, "wide"), page(30, 30, "")]
    results = recognizer.recognize(images, max_new_tokens=16)
    assert len(results) == 3
    for rec in results:
        assert isinstance(rec, Recognition)
        assert rec.stop_reason in {"eos", "max_new_tokens", "repetition"}
        assert len(rec.token_logprobs) == len(rec.token_ends) == rec.num_tokens <= 16
        assert list(rec.token_ends) == sorted(rec.token_ends)
        assert not rec.token_ends or rec.token_ends[-1] == len(rec.text)
        assert all(lp <= 1e-6 and math.isfinite(lp) for lp in rec.token_logprobs)
        assert all(ch.isprintable() or ch == "\n" for ch in rec.text)  # test models: ASCII


def test_pages_larger_than_the_budget_are_shrunk_not_refused(recognizer: Recognizer) -> None:
    (rec,) = recognizer.recognize([page(2480, 3508)], max_new_tokens=4)
    assert rec.num_tokens == 4
    assert recognizer.recognize([]) == []


def test_the_prompt_reaches_the_model(recognizer: Recognizer) -> None:
    image = page(160, 160)
    default = recognizer.recognize([image], max_new_tokens=12, repetition_guard=False)[0]
    same = recognizer.recognize(
        [image], prompt=DEFAULT_PROMPT, max_new_tokens=12, repetition_guard=False
    )
    other = recognizer.recognize(
        [image], prompt="Transcribe line by line.", max_new_tokens=12, repetition_guard=False
    )
    assert same[0] == default
    assert other[0].token_logprobs != default.token_logprobs


def test_half_precision_runs_on_cpu(tiny_model_dir: Path) -> None:
    rec16 = load_recognizer(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert rec16.dtype == "bfloat16"
    (out,) = rec16.recognize([page(100, 100)], max_new_tokens=6, repetition_guard=False)
    assert out.num_tokens == 6 and all(math.isfinite(x) for x in out.token_logprobs)


def test_remote_impl_on_a_native_folder_says_to_use_native(tiny_model_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="--impl native"):
        load_recognizer(tiny_model_dir, device="cpu", impl="remote")


def test_auto_impl_picks_native_for_a_native_checkpoint(tiny_model_dir: Path) -> None:
    recognizer = load_recognizer(tiny_model_dir, device="cpu", impl="auto")
    assert type(recognizer).__name__ == "Recognizer"


def test_missing_weights_folder_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_recognizer(tmp_path / "no-model", device="cpu")


def test_transcribe_reads_an_image_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    page(90, 140).save(path)
    rec = transcribe(path, tiny_model_dir, device="cpu", max_new_tokens=5)
    assert isinstance(rec, Recognition) and rec.num_tokens <= 5
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(BadArguments, match="cannot read image"):
        transcribe(tmp_path / "bad.png", tiny_model_dir, device="cpu")
