"""Build an upstream-shaped remote-code weights folder from a native test checkpoint.

The folder holds the same numbers as the native checkpoint under the names the remote-code
fixture (`tests/fixtures/remote_anandasky/`) uses, so both implementations can be compared
token for token. The mapping (also in that folder's README.md):

| native                                  | remote fixture                              |
|-----------------------------------------|---------------------------------------------|
| `vision.patch_embed.weight` (H, C*P*P)  | `visual.patch_embed.proj.weight` (H, C, P, P) (Conv2d) |
| `vision.patch_embed.bias`               | `visual.patch_embed.proj.bias`              |
| `vision.<rest>`                         | `visual.<rest>`                             |
| `projector.fc1.*` / `projector.fc2.*`   | `mm_projector.0.*` / `mm_projector.2.*`     |
| `language_model.model.<rest>`           | `model.<rest>`                              |
| `language_model.lm_head.weight`         | `lm_head.weight` (untied models only)       |
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.model.config import AnandaSkyConfig

FIXTURE_CODE = Path(__file__).resolve().parent / "fixtures" / "remote_anandasky"
CODE_FILES = ("configuration_anandasky.py", "modeling_anandasky.py", "processing_anandasky.py")
AUTO_MAP = {
    "AutoConfig": "configuration_anandasky.AnandaSkyConfig",
    "AutoModel": "modeling_anandasky.AnandaSkyForConditionalGeneration",
    "AutoProcessor": "processing_anandasky.AnandaSkyProcessor",
}


def remote_name(native: str) -> str:
    """The fixture's name for a native tensor name (see the table above)."""
    if native.startswith("vision.patch_embed."):
        return "visual.patch_embed.proj." + native.rsplit(".", 1)[1]
    if native.startswith("vision."):
        return "visual." + native.removeprefix("vision.")
    if native.startswith("projector.fc1."):
        return "mm_projector.0." + native.removeprefix("projector.fc1.")
    if native.startswith("projector.fc2."):
        return "mm_projector.2." + native.removeprefix("projector.fc2.")
    if native.startswith("language_model.model."):
        return "model." + native.removeprefix("language_model.model.")
    if native == "language_model.lm_head.weight":
        return "lm_head.weight"
    raise KeyError(f"no remote-fixture name for native tensor {native!r}")


def remote_tensors(
    tensors: dict[str, torch.Tensor], config: AnandaSkyConfig
) -> dict[str, torch.Tensor]:
    v = config.vision
    out = {}
    for name, tensor in tensors.items():
        if name == "vision.patch_embed.weight":
            tensor = tensor.reshape(v.hidden_size, v.num_channels, v.patch_size, v.patch_size)
        out[remote_name(name)] = tensor.contiguous()
    return out


def remote_config(config: AnandaSkyConfig) -> dict:
    text = dataclasses.asdict(config.text)
    tie = text.pop("tie_word_embeddings")
    text.pop("hidden_act")  # Qwen3: always silu
    st = config.special_tokens
    return {
        "architectures": ["AnandaSkyForConditionalGeneration"],
        "auto_map": dict(AUTO_MAP),
        "model_type": "anandasky",
        "name": config.name,
        "vision_config": dataclasses.asdict(config.vision),
        "projector_config": {
            "intermediate_size": config.projector.intermediate_size,
            "hidden_act": config.projector.hidden_act,
        },
        "text_config": text,
        "image_token_id": st.image_pad_id,
        "eos_token_id": list(st.stop_ids),
        "pad_token_id": st.endoftext_id,
        "tie_word_embeddings": tie,
        "torch_dtype": "float32",
    }


def build_remote_checkpoint(
    native_dir: Path, out_dir: Path, *, generate_returns_prompt: bool = False
) -> Path:
    """Write the remote-code folder for the native checkpoint `native_dir` into `out_dir`.

    `generate_returns_prompt`: the folder's `generate()` returns prompt + new tokens (the usual
    transformers convention) instead of the new tokens alone.
    """
    native_dir, out_dir = Path(native_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = AnandaSkyConfig.load(native_dir / "config.json")
    tensors = load_file(str(native_dir / "model.safetensors"))
    save_file(remote_tensors(tensors, config), str(out_dir / "model.safetensors"), {"format": "pt"})
    remote = remote_config(config)
    if generate_returns_prompt:
        remote["generate_returns_prompt"] = True
    (out_dir / "config.json").write_text(
        json.dumps(remote, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    im = config.image
    preprocessor = {
        "processor_class": "AnandaSkyProcessor",
        "auto_map": {"AutoProcessor": AUTO_MAP["AutoProcessor"]},
        "patch_size": config.vision.patch_size,
        "min_tokens": im.min_tokens,
        "max_tokens": im.max_tokens,
        "image_mean": im.image_mean,
        "image_std": im.image_std,
    }
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(preprocessor, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    shutil.copyfile(native_dir / "tokenizer.json", out_dir / "tokenizer.json")
    for name in CODE_FILES:
        shutil.copyfile(FIXTURE_CODE / name, out_dir / name)
    return out_dir
