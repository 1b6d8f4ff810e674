"""Remote `generate()` returning prompt + new tokens (transformers' convention) or new tokens only.

Both folders are the real remote-code fixture (tests/fixtures/remote_anandasky) loaded through
transformers, on the same weights; only the convention of their `generate()` differs. A page
that stops early (shorter than --max-new-tokens) is where length-based stripping went wrong: the
prompt came back as the transcription.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from remote_fixture import build_remote_checkpoint

from pipeline.compat.remote_recognizer import strip_prompt
from pipeline.model.generation import STOP_EOS
from pipeline.recognition import load_recognizer

pytestmark = pytest.mark.compat

PROMPT = "Transcribe."


def _page() -> Image.Image:
    rng = np.random.RandomState(3)
    return Image.fromarray((rng.rand(40, 90, 3) * 255).astype("uint8"))


def _add_stop_token(folder: Path, token: int) -> None:
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [*config["eos_token_id"], token]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def two_conventions(tiny_model_dir, tmp_path_factory):
    """(new-tokens-only, prompt+new) recognizers that stop early, after a few tokens."""
    plain = build_remote_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("remote_plain"))
    probe = load_recognizer(plain, "cpu", "float32", impl="remote")
    ((ids, _, _),) = probe.generate_ids([_page()], PROMPT, 12)
    # A stop token the page reaches after a few new tokens: the output ends far below the budget.
    stop_at = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    with_prompt = build_remote_checkpoint(
        tiny_model_dir, tmp_path_factory.mktemp("remote_hf"), generate_returns_prompt=True
    )
    for folder in (plain, with_prompt):
        _add_stop_token(folder, ids[stop_at])
    recognizers = [
        load_recognizer(f, "cpu", "float32", impl="remote") for f in (plain, with_prompt)
    ]
    return recognizers, ids[:stop_at]


@pytest.mark.parametrize("max_new_tokens", [3, 64, 2048])
def test_both_generate_conventions_give_the_same_transcription(two_conventions, max_new_tokens):
    (plain, with_prompt), early_ids = two_conventions
    got_plain = plain.recognize([_page()], max_new_tokens=max_new_tokens, repetition_guard=False)
    got_hf = with_prompt.recognize([_page()], max_new_tokens=max_new_tokens, repetition_guard=False)
    for a, b in zip(got_plain, got_hf, strict=True):
        assert (a.text, a.token_ends, a.stop_reason) == (b.text, b.token_ends, b.stop_reason)
        assert np.allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)
    ((ids, _, reason),) = with_prompt.generate_ids([_page()], PROMPT, max_new_tokens)
    if max_new_tokens > len(early_ids):
        assert ids == early_ids and reason == STOP_EOS
    else:
        assert ids == early_ids[:max_new_tokens]


def test_strip_prompt_compares_with_the_prompt_ids_not_the_length():
    prompt = torch.tensor([[5, 6, 7, 0], [5, 8, 0, 0]])
    new = torch.tensor([[1, 2], [3, 4]])
    assert torch.equal(strip_prompt(torch.cat((prompt, new), dim=1), prompt), new)
    assert torch.equal(strip_prompt(new, prompt), new)  # new tokens only: left alone
    long_new = torch.tensor([[5, 6, 7, 9, 1], [5, 8, 0, 0, 2]])  # starts like it, differs
    assert torch.equal(strip_prompt(long_new, prompt), long_new)
