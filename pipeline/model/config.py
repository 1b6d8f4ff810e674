"""The AnandaSky model configuration: every dimension stated, validated, read from `config.json`.

The config is torch-free on purpose: the coordinator reads it (for fingerprints and image sizes)
without paying for a torch import. Defaults are the published AnandaSky dimensions; the test
checkpoints (`synthetic.py`) shrink them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError

# Other names users give the dtypes (`--dtype bf16`); read without torch by the run fingerprint.
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}


def canonical_dtype(name: str) -> str:
    """`bf16` -> `bfloat16`; a name that is no alias is returned lower-cased."""
    name = name.strip().lower()
    return DTYPE_ALIASES.get(name, name)


DEFAULT_PROMPT = "Recognize the text in this image."
"""The prompt the published model was trained with; part of a run's config fingerprint."""

MODEL_TYPE = "anandasky"
FORMAT_VERSION = 1

# Token strings of the chat/vision template; their ids live in `SpecialTokens`.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"

# The token strings in the order of `SpecialTokens`' fields.
SPECIAL_TOKEN_STRINGS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD)

VISION_ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclass
class VisionConfig:
    """ViT over square patches; attention is block-diagonal per image, positions are 2D RoPE."""

    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 4
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    qkv_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch (channels, rows, cols), the encoder's input width."""
        return self.num_channels * self.patch_size * self.patch_size


@dataclass
class ProjectorConfig:
    """Two-layer MLP from the vision width to the decoder width, one output token per patch."""

    input_size: int = 768
    intermediate_size: int = 768
    output_size: int = 1024
    hidden_act: str = "gelu"


@dataclass
class TextConfig:
    """The decoder: Qwen3-0.6B. Field names follow `transformers.Qwen3Config`."""

    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 40960
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    attention_bias: bool = False
    tie_word_embeddings: bool = True


@dataclass
class ImageConfig:
    """How a page becomes patches: token bounds decide the resize, mean/std the normalisation.

    4096 tokens at patch 16 is a 1024x1024-pixel budget: enough for a dense page of print at
    the published resolution while keeping the decoder prompt bounded.
    """

    min_tokens: int = 16
    max_tokens: int = 4096
    image_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    image_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])


@dataclass
class SpecialTokens:
    """Ids of the chat/vision tokens (defaults: the Qwen2-VL/Qwen3 tokenizer)."""

    endoftext_id: int = 151643
    im_start_id: int = 151644
    im_end_id: int = 151645
    vision_start_id: int = 151652
    vision_end_id: int = 151653
    image_pad_id: int = 151655

    def by_string(self) -> dict[str, int]:
        return dict(zip(SPECIAL_TOKEN_STRINGS, dataclasses.astuple(self), strict=True))

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """A sequence ends at `<|im_end|>` (end of the assistant turn) or `<|endoftext|>`."""
        return (self.im_end_id, self.endoftext_id)


_SECTIONS: dict[str, type] = {
    "vision": VisionConfig,
    "projector": ProjectorConfig,
    "text": TextConfig,
    "image": ImageConfig,
    "special_tokens": SpecialTokens,
}


@dataclass
class AnandaSkyConfig:
    """The whole model; `config.json` in a weights folder is exactly `to_dict()` of this."""

    name: str = "AnandaSky"
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    special_tokens: SpecialTokens = field(default_factory=SpecialTokens)

    # ---- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION}
        out.update(dataclasses.asdict(self))
        return out

    def to_json(self) -> str:
        """Stable text (sorted keys, fixed indent) so a written config hashes the same every time."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> AnandaSkyConfig:
        """Build and validate; every field must be present so nothing is silently defaulted."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        model_type = data.pop("model_type", None)
        if model_type != MODEL_TYPE:
            raise CheckpointError(
                f"{source}: model_type is {model_type!r}, expected {MODEL_TYPE!r}"
            )
        version = data.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: format_version is {version!r}; this program reads version {FORMAT_VERSION}"
            )
        _check_keys(data, {f.name for f in dataclasses.fields(cls)}, source)
        kwargs: dict[str, Any] = {"name": data["name"]}
        for key, section_cls in _SECTIONS.items():
            section = data[key]
            where = f"{source}: {key}"
            if not isinstance(section, dict):
                raise CheckpointError(f"{where}: expected an object")
            _check_keys(section, {f.name for f in dataclasses.fields(section_cls)}, where)
            kwargs[key] = section_cls(**section)
        config = cls(**kwargs)
        config.validate(source)
        return config

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> AnandaSkyConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> AnandaSkyConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return cls.from_json(text, source=str(path))

    # ---- validation ----------------------------------------------------------------------

    def validate(self, source: str = "config") -> None:
        """Raise `CheckpointError` naming every inconsistent field, not just the first."""
        problems = _validate(self)
        if problems:
            raise CheckpointError(f"{source}: invalid model config: " + "; ".join(problems))

    # ---- derived sizes -------------------------------------------------------------------

    @property
    def max_image_pixels(self) -> int:
        """Pixel area of the largest image the processor keeps unshrunk."""
        return self.image.max_tokens * self.vision.patch_size**2

    def to_qwen3_kwargs(self) -> dict[str, Any]:
        """Arguments for `transformers.Qwen3Config` (accepted by 4.55 and 5.x alike)."""
        t = self.text
        return {
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "hidden_act": t.hidden_act,
            "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps,
            # 5.x folds rope_theta into rope_parameters itself; 4.55 reads it directly.
            "rope_theta": t.rope_theta,
            "attention_bias": t.attention_bias,
            "tie_word_embeddings": t.tie_word_embeddings,
            "use_sliding_window": False,
            "bos_token_id": None,
            "eos_token_id": list(self.special_tokens.stop_ids),
            "pad_token_id": self.special_tokens.endoftext_id,
            "attn_implementation": "sdpa",
        }


def _check_keys(data: dict[str, Any], expected: set[str], where: str) -> None:
    missing = sorted(expected - data.keys())
    unknown = sorted(data.keys() - expected)
    parts = []
    if missing:
        parts.append(f"missing fields {missing}")
    if unknown:
        parts.append(f"unknown fields {unknown}")
    if parts:
        raise CheckpointError(f"{where}: " + " and ".join(parts) + " (see weights/README.md)")


def _positive_ints(obj: Any, names: list[str], prefix: str, problems: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"{prefix}.{name} must be a positive integer, got {value!r}")


def _positive_floats(obj: Any, names: list[str], prefix: str, problems: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            problems.append(f"{prefix}.{name} must be a positive number, got {value!r}")


def _validate(c: AnandaSkyConfig) -> list[str]:
    problems: list[str] = []
    if not isinstance(c.name, str) or not c.name:
        problems.append("name must be a non-empty string")
    v, p, t, im, st = c.vision, c.projector, c.text, c.image, c.special_tokens
    _positive_ints(
        v,
        [
            "patch_size",
            "num_channels",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
        ],
        "vision",
        problems,
    )
    _positive_floats(v, ["layer_norm_eps", "rope_theta"], "vision", problems)
    _positive_ints(p, ["input_size", "intermediate_size", "output_size"], "projector", problems)
    _positive_ints(
        t,
        [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ],
        "text",
        problems,
    )
    _positive_floats(t, ["rms_norm_eps", "rope_theta"], "text", problems)
    _positive_ints(im, ["min_tokens", "max_tokens"], "image", problems)
    if problems:  # the checks below divide by these
        return problems

    if v.hidden_size % v.num_heads:
        problems.append(
            f"vision.hidden_size ({v.hidden_size}) must be divisible by vision.num_heads ({v.num_heads})"
        )
    elif v.head_dim % 4:
        problems.append(
            f"vision head_dim ({v.head_dim}) must be divisible by 4: 2D RoPE gives half the rotary "
            "pairs to rows and half to columns"
        )
    for name, act in (("vision.hidden_act", v.hidden_act), ("projector.hidden_act", p.hidden_act)):
        if act not in VISION_ACTIVATIONS:
            problems.append(f"{name} must be one of {VISION_ACTIVATIONS}, got {act!r}")
    if p.input_size != v.hidden_size:
        problems.append(
            f"projector.input_size ({p.input_size}) must equal vision.hidden_size ({v.hidden_size})"
        )
    if p.output_size != t.hidden_size:
        problems.append(
            f"projector.output_size ({p.output_size}) must equal text.hidden_size ({t.hidden_size})"
        )
    if t.num_attention_heads % t.num_key_value_heads:
        problems.append(
            f"text.num_attention_heads ({t.num_attention_heads}) must be a multiple of "
            f"text.num_key_value_heads ({t.num_key_value_heads})"
        )
    if t.head_dim % 2:
        problems.append(f"text.head_dim ({t.head_dim}) must be even for RoPE")
    if t.hidden_act != "silu":
        problems.append(f"text.hidden_act must be 'silu' (Qwen3), got {t.hidden_act!r}")
    if im.min_tokens > im.max_tokens:
        problems.append(
            f"image.min_tokens ({im.min_tokens}) must not exceed image.max_tokens ({im.max_tokens})"
        )
    if im.max_tokens >= t.max_position_embeddings:
        problems.append(
            f"image.max_tokens ({im.max_tokens}) leaves no room for text within "
            f"text.max_position_embeddings ({t.max_position_embeddings})"
        )
    for name, values in (("image_mean", im.image_mean), ("image_std", im.image_std)):
        if (
            not isinstance(values, list)
            or len(values) != v.num_channels
            or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in values)
        ):
            problems.append(f"image.{name} must be {v.num_channels} numbers, got {values!r}")
    if isinstance(im.image_std, list) and any(
        isinstance(x, (int, float)) and x <= 0 for x in im.image_std
    ):
        problems.append("image.image_std values must be positive")
    ids = st.by_string()
    for token, token_id in ids.items():
        if not isinstance(token_id, int) or not 0 <= token_id < t.vocab_size:
            problems.append(
                f"special_tokens id of {token} must be in [0, text.vocab_size={t.vocab_size}), "
                f"got {token_id!r}"
            )
    if len(set(ids.values())) != len(ids):
        problems.append(f"special_tokens ids must be distinct, got {ids}")
    return problems
