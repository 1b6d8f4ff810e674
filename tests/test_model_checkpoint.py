"""Weights folders: deterministic test checkpoints, checksums, exact key checks, Qwen3 names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline.errors import CheckpointError
from pipeline.model import checkpoint_checksum, make_test_model
from pipeline.model.checkpoint import (
    INDEX_FILE,
    WEIGHTS_FILE,
    load_model,
    locate,
    read_config,
    read_tensors,
    save_checkpoint,
)
from pipeline.model.modeling import qwen3_config

CPU = torch.device("cpu")


# The decoder is transformers' Qwen3: CI runs these on transformers 4.55.4 as well.
pytestmark = [pytest.mark.compat, pytest.mark.usefixtures("one_torch_thread")]


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_test_checkpoints_are_byte_identical_every_time(tiny_model_dir: Path, tmp_path) -> None:
    again = make_test_model(tmp_path / "again", "tiny")
    for name in ("config.json", "tokenizer.json", WEIGHTS_FILE):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    assert checkpoint_checksum(again) == checkpoint_checksum(tiny_model_dir)


def test_checksum_follows_any_change_to_weights_or_config(tiny_model_dir: Path, tmp_path) -> None:
    base = checkpoint_checksum(tiny_model_dir)
    assert len(base) == 64 and int(base, 16) >= 0
    changed = copy_model(tiny_model_dir, tmp_path / "changed")
    data = bytearray((changed / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (changed / WEIGHTS_FILE).write_bytes(bytes(data))
    assert checkpoint_checksum(changed) != base
    renamed = copy_model(tiny_model_dir, tmp_path / "renamed")
    config = json.loads((renamed / "config.json").read_text())
    config["name"] = "other"
    (renamed / "config.json").write_text(json.dumps(config))
    assert checkpoint_checksum(renamed) != base


def test_tensor_names_follow_the_documented_layout(tiny_model_dir: Path) -> None:
    with safe_open(str(tiny_model_dir / WEIGHTS_FILE), framework="pt") as fh:
        names = set(fh.keys())
    assert {n.split(".")[0] for n in names} == {"vision", "projector", "language_model"}
    for name in (
        "vision.patch_embed.weight",
        "vision.blocks.0.attn.qkv.weight",
        "vision.blocks.1.mlp.fc2.bias",
        "vision.norm.weight",
        "projector.fc1.weight",
        "projector.fc2.bias",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.1.self_attn.q_norm.weight",
        "language_model.model.layers.0.mlp.gate_proj.weight",
        "language_model.model.norm.weight",
    ):
        assert name in names
    assert "language_model.lm_head.weight" not in names  # tied to the embedding


def test_missing_files_are_all_named(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as err:
        locate(tmp_path)
    assert "tokenizer.json" in str(err.value) and WEIGHTS_FILE in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        locate(tmp_path / "nowhere")


def _rewrite(model_dir: Path, edit) -> None:
    tensors = load_file(str(model_dir / WEIGHTS_FILE))
    edit(tensors)
    save_file(tensors, str(model_dir / WEIGHTS_FILE))


def test_missing_unexpected_and_misshaped_tensors_are_listed(
    tiny_model_dir: Path, tmp_path
) -> None:
    broken = copy_model(tiny_model_dir, tmp_path / "broken")

    def edit(t):
        del t["language_model.model.layers.1.mlp.up_proj.weight"]
        del t["vision.norm.bias"]
        t["vision.extra.weight"] = torch.zeros(2)
        t["projector.fc1.weight"] = torch.zeros(3, 3)

    _rewrite(broken, edit)
    with pytest.raises(CheckpointError) as err:
        load_model(broken, CPU, torch.float32)
    message = str(err.value)
    assert "missing 2 tensor(s)" in message
    assert (
        "language_model.model.layers.1.mlp.up_proj.weight" in message
        and "vision.norm.bias" in message
    )
    assert "unexpected 1 tensor(s): vision.extra.weight" in message
    assert "projector.fc1.weight [3, 3] (config says [128, 128])" in message


def test_unprefixed_qwen3_names_get_a_hint(tiny_model_dir: Path, tmp_path) -> None:
    broken = copy_model(tiny_model_dir, tmp_path / "unprefixed")

    def edit(t):
        for name in [n for n in t if n.startswith("language_model.")]:
            t[name[len("language_model.") :]] = t.pop(name)

    _rewrite(broken, edit)
    with pytest.raises(CheckpointError, match="'language_model.' prefix"):
        load_model(broken, CPU, torch.float32)


def test_sharded_checkpoint_loads_the_same_tensors(tiny_model_dir: Path, tmp_path) -> None:
    config = read_config(tiny_model_dir)
    tensors = load_file(str(tiny_model_dir / WEIGHTS_FILE))
    tokenizer = (tiny_model_dir / "tokenizer.json").read_text()
    sharded = save_checkpoint(
        tmp_path / "sharded", config, tensors, tokenizer, max_shard_bytes=2_000_000
    )
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and (sharded / INDEX_FILE).is_file()
    assert not (sharded / WEIGHTS_FILE).exists()
    files = locate(sharded)
    assert files.weights == tuple(shards)
    loaded = read_tensors(files)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    model = load_model(sharded, CPU, torch.float32)
    assert torch.equal(model.vision.patch_embed.weight, tensors["vision.patch_embed.weight"])
    # A shard the index points to must exist.
    shards[0].unlink()
    with pytest.raises(CheckpointError, match=shards[0].name):
        locate(sharded)


def test_a_stock_qwen3_state_dict_loads_unchanged_under_the_prefix(
    tiny_model_dir: Path, tmp_path
) -> None:
    from transformers import Qwen3ForCausalLM

    config = read_config(tiny_model_dir)
    torch.manual_seed(0)
    qwen = Qwen3ForCausalLM(qwen3_config(config)).eval()  # transformers' own init and names
    tensors = {
        k: v
        for k, v in load_file(str(tiny_model_dir / WEIGHTS_FILE)).items()
        if not k.startswith("language_model.")
    }
    for name, tensor in qwen.state_dict().items():
        tensors["language_model." + name] = tensor.clone()  # includes the tied lm_head copy
    tokenizer = (tiny_model_dir / "tokenizer.json").read_text()
    folder = save_checkpoint(tmp_path / "qwen", config, tensors, tokenizer)
    model = load_model(folder, CPU, torch.float32)
    ids = torch.tensor([[1, 2, 3, 257, 40, 41]])
    with torch.inference_mode():
        ours = model.language_model(input_ids=ids).logits
        theirs = qwen(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight


def test_loading_casts_to_the_requested_dtype_and_keeps_rope_in_float32(
    tiny_model_dir: Path,
) -> None:
    model = load_model(tiny_model_dir, CPU, torch.bfloat16)
    assert model.vision.patch_embed.weight.dtype == torch.bfloat16
    assert model.language_model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_checksum_cache_is_reused_until_a_weight_file_changes(tiny_model_dir, tmp_path):
    import os
    import shutil

    from pipeline.model.checkpoint import checkpoint_checksum

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cache = tmp_path / "state" / "model-checksum.json"
    first = checkpoint_checksum(model, cache_file=cache)
    assert first == checkpoint_checksum(model) and cache.is_file()
    # A cached digest is returned without reading the files: prove it by planting one.
    planted = cache.read_text().replace(first, "0" * 64)
    cache.write_text(planted)
    assert checkpoint_checksum(model, cache_file=cache) == "0" * 64
    # Rewriting a file changes its mtime (and here its bytes): the cache no longer applies.
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    changed = checkpoint_checksum(model, cache_file=cache)
    assert changed not in (first, "0" * 64)
    assert changed == checkpoint_checksum(model)
