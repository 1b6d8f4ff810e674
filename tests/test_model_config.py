"""The model config: published defaults, exact JSON round trip, errors that name every problem."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.errors import CheckpointError
from pipeline.model.config import AnandaSkyConfig
from pipeline.model.modeling import count_parameters
from pipeline.model.synthetic import synthetic_config


def test_defaults_are_the_published_anandasky_dimensions() -> None:
    c = AnandaSkyConfig()
    v, p, t = c.vision, c.projector, c.text
    assert (v.num_layers, v.hidden_size, v.num_heads, v.intermediate_size) == (4, 768, 12, 3072)
    assert (p.input_size, p.output_size) == (768, 1024)
    assert (t.num_hidden_layers, t.hidden_size, t.intermediate_size) == (28, 1024, 3072)
    assert (t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (16, 8, 128)
    assert (t.vocab_size, t.rope_theta, t.tie_word_embeddings) == (151936, 1e6, True)
    assert c.max_image_pixels == c.image.max_tokens * v.patch_size**2


def test_config_json_round_trip_is_exact_and_stable() -> None:
    config = synthetic_config("tiny")
    text = config.to_json()
    again = AnandaSkyConfig.from_json(text)
    assert again == config
    assert again.to_json() == text
    data = json.loads(text)
    assert data["model_type"] == "anandasky" and data["format_version"] == 1


def test_missing_and_unknown_fields_are_listed_by_name() -> None:
    data = AnandaSkyConfig().to_dict()
    del data["text"]["head_dim"]
    data["text"]["num_layerz"] = 3
    with pytest.raises(CheckpointError) as err:
        AnandaSkyConfig.from_dict(data, source="cfg.json")
    message = str(err.value)
    assert "cfg.json: text" in message and "head_dim" in message and "num_layerz" in message


def test_validation_reports_every_inconsistency_at_once() -> None:
    data = AnandaSkyConfig().to_dict()
    data["vision"]["num_heads"] = 10  # 768 % 10 != 0
    data["projector"]["output_size"] = 512  # text hidden is 1024
    data["text"]["num_key_value_heads"] = 5  # 16 % 5 != 0
    data["image"]["min_tokens"] = 9000  # above max_tokens
    data["special_tokens"]["im_end_id"] = 999999  # outside the vocab
    with pytest.raises(CheckpointError) as err:
        AnandaSkyConfig.from_dict(data)
    message = str(err.value)
    for fragment in (
        "vision.num_heads",
        "projector.output_size",
        "num_key_value_heads",
        "image.min_tokens",
        "<|im_end|>",
    ):
        assert fragment in message


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("model_type", "qwen3", "model_type"),
        ("format_version", 7, "format_version"),
    ],
)
def test_foreign_or_future_configs_are_refused(field: str, value, fragment: str) -> None:
    data = AnandaSkyConfig().to_dict()
    data[field] = value
    with pytest.raises(CheckpointError, match=fragment):
        AnandaSkyConfig.from_dict(data)


def test_vision_head_dim_must_split_into_row_and_column_rotary_halves() -> None:
    data = AnandaSkyConfig().to_dict()
    data["vision"].update(hidden_size=36, num_heads=6, intermediate_size=72)  # head_dim 6
    data["projector"]["input_size"] = 36
    with pytest.raises(CheckpointError, match="divisible by 4"):
        AnandaSkyConfig.from_dict(data)


def test_parameter_counts_without_allocating_weights() -> None:
    full = count_parameters(AnandaSkyConfig())
    seed = count_parameters(synthetic_config("seed"))
    tiny = count_parameters(synthetic_config("tiny"))
    # ViT 28.94M + projector 1.38M + Qwen3-0.6B 596.05M (tied head counted once).
    assert full == 626_371_584
    assert 40_000_000 <= seed <= 42_000_000
    assert 1_000_000 <= tiny <= 5_000_000


def test_importing_the_api_for_fingerprints_does_not_import_torch() -> None:
    code = (
        "import sys; from pipeline.model import DEFAULT_PROMPT, checkpoint_checksum; "
        "from pipeline.model.config import AnandaSkyConfig; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
