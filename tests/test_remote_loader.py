"""The remote-code loader against the upstream-shaped fixture in tests/fixtures/remote_anandasky/.

The fixture folder holds the tiny native checkpoint's numbers under the remote code's own names
(tests/remote_fixture.py), so the remote path must reproduce the native model token for token
in float32 on the CPU. Every test here runs with the hub unreachable: sockets refuse to connect.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from remote_fixture import build_remote_checkpoint
from safetensors.torch import load_file, save_file

from pipeline.compat.remote import load_remote_recognizer
from pipeline.compat.remote_recognizer import RemoteRecognizer, repetition_cut
from pipeline.errors import BadArguments, CheckpointError
from pipeline.model.generation import RepetitionGuard, _RepetitionTracker
from pipeline.model.native_layout import native_layout_problem
from pipeline.recognition import choose_impl, load_recognizer
from pipeline.verify.probes import NativeProbe, RemoteProbe

pytestmark = pytest.mark.compat

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "inputs" / "declaration_notice.jpg"


@pytest.fixture(scope="module")
def remote_model_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    # A unique folder name: transformers 4.55 names the dynamic module after the folder.
    return build_remote_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("remote_anandasky"))


@pytest.fixture
def no_network(monkeypatch):
    """Offline env as CI sets it, and any socket use recorded and refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during a remote-code test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], f"network was contacted: {attempts}"


def pages() -> list[Image.Image]:
    rng = np.random.RandomState(7)
    noise = [
        Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8"))
        for h, w in ((40, 90), (120, 64), (300, 200))
    ]
    with Image.open(SAMPLE) as sample:
        return [*noise, sample.convert("RGB")]


def test_choose_impl_is_native_for_a_native_checkpoint_and_remote_for_the_fixture(
    tiny_model_dir, remote_model_dir, no_network
):
    assert native_layout_problem(tiny_model_dir) is None
    assert choose_impl(tiny_model_dir) == "native"
    assert "not a native AnandaSky config" in native_layout_problem(remote_model_dir)
    assert choose_impl(remote_model_dir) == "remote"


def test_native_config_with_remote_tensor_names_is_not_native(
    tiny_model_dir, remote_model_dir, tmp_path
):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_model_dir, folder)
    shutil.copyfile(remote_model_dir / "model.safetensors", folder / "model.safetensors")
    problem = native_layout_problem(folder)
    assert "missing 56 tensor(s)" in problem and "unexpected 56 tensor(s)" in problem
    with pytest.raises(CheckpointError, match="no remote code"):
        choose_impl(folder)  # neither native nor remote: the native reason is what to read


def test_remote_fixture_transcribes_token_for_token_like_native_on_cpu_fp32(
    tiny_model_dir, remote_model_dir, no_network, caplog
):
    with caplog.at_level(logging.INFO, logger="pipeline.recognition"):
        remote = load_recognizer(remote_model_dir, "cpu", "float32", impl="auto")
    assert isinstance(remote, RemoteRecognizer)
    assert "remote-code implementation" in caplog.text
    native = load_recognizer(tiny_model_dir, device="cpu", dtype="float32")
    images = pages()

    for image in images:
        ids_native, stop_native = NativeProbe(native).greedy(image, "Transcribe.", 24)
        ids_remote, stop_remote = RemoteProbe(remote).greedy(image, "Transcribe.", 24)
        assert ids_remote == ids_native and stop_remote == stop_native

    for guard in (False, True):
        got = remote.recognize(images, max_new_tokens=64, repetition_guard=guard)
        want = native.recognize(images, max_new_tokens=64, repetition_guard=guard)
        for g, w in zip(got, want, strict=True):
            assert (g.text, g.token_ends, g.stop_reason) == (w.text, w.token_ends, w.stop_reason)
            assert np.allclose(g.token_logprobs, w.token_logprobs, atol=1e-3)

    assert remote.device == "cpu" and remote.dtype == "float32"
    assert remote.model_name == native.model_name
    assert remote.num_parameters == native.num_parameters
    assert remote.max_image_pixels == native.max_image_pixels
    for size in ((10, 10), (1000, 30), (640, 480), (3000, 4000)):
        assert remote.image_token_count(*size) == native.image_token_count(*size)
    assert len(remote.model_checksum) == 64 and remote.model_checksum != native.model_checksum
    assert remote.recognize([]) == []


def test_remote_autocast_runs_on_the_real_device_in_the_requested_dtype(
    remote_model_dir, no_network
):
    """Upstream hard-codes autocast("cuda", bfloat16): on CPU it must become cpu, in our dtype."""
    bf16 = load_remote_recognizer(remote_model_dir, "cpu", "bfloat16")
    fp32 = load_remote_recognizer(remote_model_dir, "cpu", "float32")  # must not re-patch bf16
    image = pages()[0]
    for rec, dtype in ((bf16, torch.bfloat16), (fp32, torch.float32)):
        with torch.inference_mode():
            logits = rec.model(**rec.inputs([image], "x")).logits
        assert logits.dtype == dtype
    assert torch.autocast is torch.amp.autocast_mode.autocast  # torch itself untouched


def test_flash_attn_shim_is_gone_after_loading_and_the_model_still_runs(
    remote_model_dir, no_network
):
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("a real flash-attn is installed")
    before = {n for n in sys.modules if n.split(".")[0] == "flash_attn"}
    rec = load_remote_recognizer(remote_model_dir, "cpu", "float32")
    assert {n for n in sys.modules if n.split(".")[0] == "flash_attn"} == before == set()
    assert rec.recognize(pages()[:2], max_new_tokens=4)[1].num_tokens == 4


def _copy(folder: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    shutil.copytree(folder, out)
    return out


def test_missing_modeling_file_is_a_clear_checkpoint_error(remote_model_dir, tmp_path):
    folder = _copy(remote_model_dir, tmp_path, "no_modeling")
    (folder / "modeling_anandasky.py").unlink()
    with pytest.raises(CheckpointError, match=r"modeling_anandasky\.py is not in the folder"):
        load_remote_recognizer(folder, "cpu", "float32")


def test_code_from_another_repository_is_refused(remote_model_dir, tmp_path):
    folder = _copy(remote_model_dir, tmp_path, "foreign_code")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModel"] = (
        "someone/else--modeling_anandasky.AnandaSkyForConditionalGeneration"
    )
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="never loaded"):
        load_remote_recognizer(folder, "cpu", "float32")


def test_incomplete_weights_fail_instead_of_staying_random(remote_model_dir, tmp_path):
    folder = _copy(remote_model_dir, tmp_path, "incomplete")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"), {"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): model\.layers\.1\.mlp"):
        load_remote_recognizer(folder, "cpu", "float32")


def test_native_checkpoint_has_no_remote_code(tiny_model_dir):
    with pytest.raises(CheckpointError, match="no auto_map"):
        load_remote_recognizer(tiny_model_dir, "cpu", "float32")
    with pytest.raises(BadArguments, match="--impl"):
        load_recognizer(tiny_model_dir, "cpu", "float32", impl="fast")


@pytest.mark.parametrize("seed", range(6))
def test_post_hoc_repetition_guard_cuts_where_the_native_engine_stops(seed):
    guard = RepetitionGuard(max_period=8, min_repeats=3, min_span=12)
    rng = np.random.RandomState(seed)
    unit = rng.randint(0, 5, size=rng.randint(1, 8)).tolist()
    ids = rng.randint(0, 5, size=rng.randint(0, 30)).tolist() + unit * 20
    tracker = _RepetitionTracker(guard, rows=1, max_steps=len(ids))
    expected = None
    for step, token in enumerate(ids):
        (cut,) = tracker.update(step, torch.tensor([token]))
        if cut:
            expected = step + 1 - cut
            break
    assert repetition_cut(ids, guard) == expected
    assert expected is not None  # 20 copies of the unit always trip it
