"""`verify`: device/dtype against CPU float32, its report, its thresholds, and that it can fail.

Uses the `jsonschema` package (dev dependency) to validate `eval_results.json`.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import cli
from pipeline.verify.check import (
    THRESHOLDS,
    Metrics,
    compare_logits,
    format_table,
    run_checks,
    verify,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "inputs"
IMAGES = [SAMPLES / "declaration_notice.jpg", SAMPLES / "gettysburg_3p.pdf"]
TOKENS = 16


def _schema() -> dict:
    path = importlib.resources.files("pipeline.schemas").joinpath("eval_results.schema.json")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bf16_report(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "eval_results.json"
    report = verify(tiny_model_dir, "cpu", "bfloat16", IMAGES, "native", out, max_new_tokens=TOKENS)
    return report, out


@pytest.fixture(scope="module")
def perturbed_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint with one decoder tensor scaled by 1.5 (a wrong-weights stand-in)."""
    folder = tmp_path_factory.mktemp("perturbed")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["language_model.model.layers.1.mlp.down_proj.weight"] *= 1.5
    save_file(tensors, str(folder / "model.safetensors"), {"format": "pt"})
    return folder


def test_bf16_against_cpu_fp32_gives_plausible_metrics(bf16_report):
    report, out = bf16_report
    m = report.metrics
    assert report.target["dtype"] == "bfloat16" and report.reference["dtype"] == "float32"
    assert report.reference["device"] == "cpu" and report.thresholds.profile == "bfloat16"
    assert m.positions == sum(img.reference_tokens + 1 for img in report.images)
    assert 1e-3 < m.relative_error < 0.05  # bf16 rounding is visible, and bounded
    assert 0.998 < m.cosine_similarity <= 1.0 + 1e-9
    assert 0 < m.mean_abs_error < m.max_abs_error
    # The tiny model has many near-tied logits, so a few argmax flips are expected; whether
    # they cross the 0.95 limit depends on the CPU's bf16 rounding, so only plausibility here.
    assert m.top1_agreement >= 0.85 and report.reference_self_agreement == 1.0
    assert report.passed == all(c.passed for c in report.checks)
    assert report.exit_code == (0 if report.passed else 1)
    assert [c.name for c in report.checks] == [
        "relative_error",
        "cosine_similarity",
        "top1_agreement",
        "reference_self_agreement",
    ]  # greedy transcriptions are reported, not required, under bf16
    assert json.loads(out.read_text())["passed"] is report.passed
    assert format_table(report).endswith("RESULT: PASS" if report.passed else ")")


def test_eval_results_json_validates_against_its_schema(bf16_report):
    jsonschema = pytest.importorskip("jsonschema")
    _, out = bf16_report
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(json.loads(out.read_text()))


def test_fp32_against_fp32_on_the_same_cpu_is_exact_and_passes(tiny_model_dir, tmp_path):
    report = verify(
        tiny_model_dir,
        "cpu",
        "float32",
        IMAGES[:1],
        "native",
        tmp_path / "e.json",
        max_new_tokens=TOKENS,
    )
    assert report.metrics.max_abs_error <= 1e-6
    assert report.metrics.top1_agreement == 1.0 and report.greedy["all_match"]
    assert report.passed and "greedy_match" in {c.name for c in report.checks}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_scaled_weight_tensor_fails_the_thresholds(
    tiny_model_dir, perturbed_model_dir, tmp_path, dtype
):
    out = tmp_path / "eval_results.json"
    report = verify(
        perturbed_model_dir,
        "cpu",
        dtype,
        IMAGES,
        "native",
        out,
        reference_dir=tiny_model_dir,
        max_new_tokens=TOKENS,
    )
    failed = {c.name for c in report.checks if not c.passed}
    assert {"relative_error", "top1_agreement"} <= failed
    assert not report.passed and report.exit_code != 0
    data = json.loads(out.read_text())
    assert data["passed"] is False and data["reference"]["model_dir"] == str(tiny_model_dir)
    assert "RESULT: FAIL" in format_table(report) and "PASS" not in format_table(report)


def test_cli_verify_exits_non_zero_when_a_threshold_fails(
    tiny_model_dir, perturbed_model_dir, tmp_path
):
    out = tmp_path / "eval_results.json"
    args = [
        "verify", "--model", str(perturbed_model_dir), "--reference-model", str(tiny_model_dir),
        "--device", "cpu", "--dtype", "bfloat16", "--images", str(IMAGES[0]),
        "--max-new-tokens", "8", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr
    assert "RESULT: FAIL" in done.stdout and json.loads(out.read_text())["passed"] is False


def test_cli_verify_exits_zero_when_every_threshold_holds(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval_results.json"
    args = ["verify", "--model", str(tiny_model_dir), "--device", "cpu", "--images",
            str(IMAGES[0]), "--max-new-tokens", "4", "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "RESULT: PASS" in captured.out and out.is_file()
    # Progress goes to stderr, step by step, so a slow device shows it is alive.
    assert f"loading {tiny_model_dir} on cpu" in captured.err
    assert "loading the reference" in captured.err and f"page 1/1: {IMAGES[0]}" in captured.err


@pytest.mark.compat
def test_remote_against_native_on_cpu_fp32_passes_the_float32_thresholds(
    tiny_model_dir, tmp_path_factory
):
    from remote_fixture import build_remote_checkpoint

    remote = build_remote_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("remote_verify"))
    report = verify(
        remote,
        "cpu",
        "float32",
        IMAGES,
        "remote",
        None,
        reference_dir=tiny_model_dir,
        reference_impl="native",
        max_new_tokens=TOKENS,
    )
    assert report.target["impl"] == "remote" and report.reference["impl"] == "native"
    assert report.metrics.relative_error < 1e-4 and report.greedy["all_match"]
    assert report.passed


def test_metrics_are_whole_tensor_and_robust_to_small_logits():
    b = torch.tensor([[10.0, -2.0, 0.0], [0.001, 0.0, -0.001]], dtype=torch.float64)
    m = compare_logits(b * 1.01, b)
    assert math.isclose(m.relative_error, 0.01, rel_tol=1e-9)
    assert math.isclose(m.cosine_similarity, 1.0, rel_tol=1e-12)
    assert m.top1_agreement == 1.0 and m.positions == 2
    flipped = compare_logits(b.flip(-1), b)
    assert flipped.top1_agreement == 0.0


def test_nan_logits_fail_every_metric_check():
    nan = float("nan")
    metrics = Metrics(3, nan, nan, nan, nan, nan, nan, 1.0)
    checks = run_checks(metrics, False, THRESHOLDS["float32"], self_agreement=nan)
    assert checks and not any(c.passed for c in checks)
