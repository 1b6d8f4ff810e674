"""`anandasky-batch verify` (the published "--eval"): is the model on this device computing the same thing?

Fixed pages go through the model twice: on the target (device, dtype, implementation) and on the
reference, always CPU float32. Both sides are teacher-forced over the same ids (the reference's
greedy continuation), so every logit row compares like with like, and both sides' own greedy
transcriptions are compared as well. `eval_results.json` (schema:
`schemas/eval_results.schema.json`) records it all; a failed threshold is a non-zero exit.

Thresholds depend on the target dtype (measurements behind them: docs/VERIFY.md):
- float32: the sides differ only in kernels and summation order, a few float32 ulps amplified
  by depth: 1.3e-6 to 2.3e-6 relative error measured (CPU kernels, H200 vs CPU). The limit,
  relative error <= 1e-4, leaves ~50x headroom, and scaling ONE weight tensor by 1.01 (6e-3)
  fails it. Greedy transcriptions must match: a flip needs two logits within ~1e-4 of each
  other, which rounding at this level essentially never meets on a ~200-position check.
- bfloat16: 8 significant bits, each rounding off by up to 2^-9 ~ 0.2% relative; weights,
  activations and attention inputs are all rounded and errors add up over the layers. Measured
  on the seed checkpoint, CPU and H200 alike: relative error 0.017, cosine 0.99986, top-1
  agreement 1.0. Limits: relative error <= 0.05 (3x headroom), top-1 agreement >= 0.95.
  Greedy transcriptions are reported, not required: one argmax flip at a near tie rewrites
  the rest of the text, and random-weight models have many near ties (the tiny checkpoint
  flips 3-5% of positions under bf16 and its transcriptions diverge), so a mismatch says less
  than top-1 agreement does. bf16 catches gross errors (a tensor scaled by 1.5: 0.22-0.24; a
  patch embedding read in the wrong channel order: 0.15), not 1% ones: check float32 for those.
- float16: 11 significant bits, 8x finer: measured 0.0017-0.0018; relative error <= 0.0125,
  top-1 agreement >= 0.95 (top-1 is set by the checkpoint's near ties more than by the dtype).
Cosine limits are derived from the relative-error limits (see THRESHOLDS).
The reference side checks itself too: its teacher-forced argmax must reproduce its own greedy ids
at >= 99% of positions (`reference_self_agreement`, both float32 paths), which catches a
generate loop and a forward pass that disagree (say, a broken KV cache in remote code).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import AnandaSkyError, BadArguments, ExitCode
from pipeline.model.config import DEFAULT_PROMPT
from pipeline.recognition import load_recognizer
from pipeline.verify.probes import LogitProbe, decode, probe_for

SCHEMA_VERSION = 1
SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "inputs"
EXIT_CHECK_FAILED = ExitCode.SOME_PAGES_FAILED  # 1: "something did not pass"; 0 only if all did
DEFAULT_MAX_NEW_TOKENS = 48


@dataclass(frozen=True)
class Thresholds:
    profile: str
    relative_error_max: float
    cosine_similarity_min: float
    top1_agreement_min: float
    greedy_match_required: bool


# Cosine limits follow from the relative-error limits: for an error e orthogonal to the logits b,
# cos = 1 / sqrt(1 + (|e|/|b|)^2) ~ 1 - rel^2 / 2; so they catch what rel would, never less.
THRESHOLDS = {
    "float32": Thresholds("float32", 1e-4, 0.99999999, 0.99, True),
    "bfloat16": Thresholds("bfloat16", 0.05, 0.998, 0.95, False),
    "float16": Thresholds("float16", 0.0125, 0.9999, 0.95, False),
}


@dataclass
class Metrics:
    positions: int
    max_abs_error: float
    mean_abs_error: float
    relative_error: float
    cosine_similarity: float
    min_position_cosine: float
    top1_agreement: float
    reference_logit_rms: float


@dataclass
class ImageResult:
    path: str
    size: list[int]
    image_tokens: int
    metrics: Metrics
    greedy_match: bool
    first_divergence: int | None
    reference_margin_at_divergence: float | None
    reference_tokens: int
    target_tokens: int
    reference_stop: str
    target_stop: str
    reference_text: str
    target_text: str


@dataclass
class Check:
    name: str
    value: float
    limit: float
    op: str
    passed: bool


@dataclass
class VerifyReport:
    schema_version: int
    created: str
    model: dict[str, Any]
    target: dict[str, Any]
    reference: dict[str, Any]
    settings: dict[str, Any]
    metrics: Metrics
    reference_self_agreement: float
    greedy: dict[str, Any]
    thresholds: Thresholds
    checks: list[Check]
    passed: bool
    images: list[ImageResult]
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return int(ExitCode.OK if self.passed else EXIT_CHECK_FAILED)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_logits(target: torch.Tensor, reference: torch.Tensor) -> Metrics:
    """Error of `target` against `reference` (both `(positions, vocab)`), computed in float64.

    Relative error is over the whole tensor, ||a-b|| / ||b||, so positions with small logits
    cannot blow it up the way an elementwise ratio would.
    """
    a, b = target.double(), reference.double()
    diff = a - b
    norm_b = float(torch.linalg.vector_norm(b))
    norm_a = float(torch.linalg.vector_norm(a))
    dot = float((a * b).sum())
    row_cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-30)
    return Metrics(
        positions=int(a.shape[0]),
        max_abs_error=float(diff.abs().max()),
        mean_abs_error=float(diff.abs().mean()),
        relative_error=float(torch.linalg.vector_norm(diff)) / norm_b if norm_b else math.inf,
        cosine_similarity=dot / (norm_a * norm_b) if norm_a and norm_b else 0.0,
        min_position_cosine=float(row_cos.min()),
        top1_agreement=float((a.argmax(-1) == b.argmax(-1)).double().mean()),
        reference_logit_rms=norm_b / math.sqrt(b.numel()),
    )


SELF_AGREEMENT_MIN = 0.99


def run_checks(
    metrics: Metrics, greedy_all_match: bool, limits: Thresholds, self_agreement: float = 1.0
) -> list[Check]:
    checks = [
        Check("relative_error", metrics.relative_error, limits.relative_error_max, "<=", False),
        Check(
            "cosine_similarity",
            metrics.cosine_similarity,
            limits.cosine_similarity_min,
            ">=",
            False,
        ),
        Check("top1_agreement", metrics.top1_agreement, limits.top1_agreement_min, ">=", False),
        Check("reference_self_agreement", self_agreement, SELF_AGREEMENT_MIN, ">=", False),
    ]
    for check in checks:  # NaN compares False both ways: it fails, as it should
        if check.op == "<=":
            check.passed = check.value <= check.limit
        else:
            check.passed = check.value >= check.limit
    if limits.greedy_match_required:
        checks.append(Check("greedy_match", float(greedy_all_match), 1.0, "==", greedy_all_match))
    return checks


def default_images() -> list[Path]:
    if not SAMPLES.is_dir():
        raise BadArguments(f"no --images given and the bundled samples are not at {SAMPLES}")
    return sorted(p for p in SAMPLES.iterdir() if p.is_file() and not p.name.startswith("."))


def _check_paths(paths: list[Path], out_path: Path | None) -> None:
    """Before the minutes two model loads take: every page a file, the report writable."""
    for path in paths:
        if path.is_dir():
            raise BadArguments(f"--images {path} is a folder; give image or PDF files")
        if not path.is_file():
            raise BadArguments(f"image not found: {path}")
    if out_path is None:
        return
    folder = out_path.parent
    if out_path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        why = "it is a folder" if out_path.is_dir() else f"{folder} is not a writable folder"
        raise BadArguments(f"--out {out_path}: the report cannot be written there ({why})")


def _load_pages(paths: list[Path], max_pixels: int) -> list[Any]:
    from pipeline.ingest.documents import IngestSettings, load_page

    pages = []
    for path in paths:
        try:
            pages.append(load_page(path, 0, IngestSettings(), max_pixels=max_pixels))
        except AnandaSkyError as exc:
            raise BadArguments(f"cannot use {path} for verify: {exc}") from exc
    return pages


def _side(recognizer: Any, impl: str, model_dir: Path) -> dict[str, Any]:
    return {
        "impl": impl,
        "device": recognizer.device,
        "dtype": recognizer.dtype,
        "model_dir": str(model_dir),
        "model_checksum": recognizer.model_checksum,
    }


def _divergence(ref_ids: list[int], tgt_ids: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(ref_ids, tgt_ids, strict=False)):
        if x != y:
            return i
    return None if len(ref_ids) == len(tgt_ids) else min(len(ref_ids), len(tgt_ids))


def _compare_page(
    path: Path, page: Any, target: LogitProbe, reference: LogitProbe, prompt: str, tokens: int
) -> tuple[ImageResult, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One page on both sides: its result, both sides' logit rows, the reference's self-agreement."""
    ref_ids, ref_stop = reference.greedy(page, prompt, tokens)
    tgt_ids, tgt_stop = target.greedy(page, prompt, tokens)
    a = target.forced_logits(page, prompt, ref_ids)
    b = reference.forced_logits(page, prompt, ref_ids)
    if a.shape != b.shape:
        raise BadArguments(
            f"target and reference disagree on the vocabulary ({a.shape[-1]} vs {b.shape[-1]})"
        )
    self_agree = b[: len(ref_ids)].argmax(-1) == torch.tensor(ref_ids, dtype=torch.long)
    k = _divergence(ref_ids, tgt_ids)
    margin = None
    if k is not None and k < b.shape[0]:
        margin = float(b[k].max() - b[k, int(a[k].argmax())])
    result = ImageResult(
        path=str(path),
        size=list(page.size),
        image_tokens=reference.recognizer.image_token_count(*page.size),
        metrics=compare_logits(a, b),
        greedy_match=ref_ids == tgt_ids and ref_stop == tgt_stop,
        first_divergence=k,
        reference_margin_at_divergence=margin,
        reference_tokens=len(ref_ids),
        target_tokens=len(tgt_ids),
        reference_stop=ref_stop,
        target_stop=tgt_stop,
        reference_text=decode(reference, ref_ids),
        target_text=decode(target, tgt_ids),
    )
    return result, a, b, self_agree


def verify(
    model_dir: str | Path,
    device: str = "auto",
    dtype: str | None = None,
    images: list[Path] | None = None,
    impl: str = "auto",
    out_path: str | Path | None = "eval_results.json",
    *,
    reference_dir: str | Path | None = None,
    reference_impl: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: Callable[[str], None] = lambda _line: None,
) -> VerifyReport:
    """Compare the target side against CPU float32 and write `out_path` (None: do not write).

    The reference is `reference_dir` (default: the same folder) loaded with `reference_impl`
    (default: the implementation the target resolved to) on the CPU in float32: comparing
    native against remote is `impl="remote", reference_impl="native"`.
    """
    if max_new_tokens < 1:
        raise BadArguments(f"--max-new-tokens {max_new_tokens}: use at least 1")
    model_dir = Path(model_dir)
    ref_dir = Path(reference_dir) if reference_dir is not None else model_dir
    paths = [Path(p) for p in images] if images else default_images()
    _check_paths(paths, None if out_path is None else Path(out_path))
    progress(f"loading {model_dir} on {device} ({dtype or 'default dtype'}) ...")
    target = probe_for(load_recognizer(model_dir, device, dtype, impl))
    ref_impl = reference_impl or target.impl
    progress(f"loading the reference {ref_dir} on cpu (float32) ...")
    reference = probe_for(load_recognizer(ref_dir, "cpu", "float32", ref_impl))
    max_pixels = min(target.recognizer.max_image_pixels, reference.recognizer.max_image_pixels)
    pages = _load_pages(paths, max_pixels)

    results, tgt_rows, ref_rows, self_agree = [], [], [], []
    for number, (path, page) in enumerate(zip(paths, pages, strict=True), start=1):
        progress(f"page {number}/{len(paths)}: {path}")
        result, a, b, agree = _compare_page(path, page, target, reference, prompt, max_new_tokens)
        results.append(result)
        tgt_rows.append(a)
        ref_rows.append(b)
        self_agree.append(agree)
    agree = torch.cat(self_agree)
    report = _report(
        (target, model_dir),
        (reference, ref_dir),
        results,
        compare_logits(torch.cat(tgt_rows), torch.cat(ref_rows)),
        float(agree.double().mean()) if agree.numel() else 1.0,
        {"prompt": prompt, "max_new_tokens": max_new_tokens, "images": [str(p) for p in paths]},
    )
    if out_path is not None:
        write_report(report, Path(out_path))
    return report


def _report(
    target_side: tuple[LogitProbe, Path],
    reference_side: tuple[LogitProbe, Path],
    results: list[ImageResult],
    metrics: Metrics,
    self_agreement: float,
    settings: dict[str, Any],
) -> VerifyReport:
    """The report of a finished comparison, its checks against the target dtype's limits."""
    (target, model_dir), (reference, ref_dir) = target_side, reference_side
    matched = sum(r.greedy_match for r in results)
    limits = THRESHOLDS[target.recognizer.dtype]
    checks = run_checks(metrics, matched == len(results), limits, self_agreement)
    rec = target.recognizer
    return VerifyReport(
        schema_version=SCHEMA_VERSION,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model={
            "dir": str(model_dir),
            "name": rec.model_name,
            "checksum": rec.model_checksum,
            "num_parameters": int(rec.num_parameters),
        },
        target=_side(rec, target.impl, model_dir),
        reference=_side(reference.recognizer, reference.impl, ref_dir),
        settings=settings,
        metrics=metrics,
        reference_self_agreement=self_agreement,
        greedy={"matched": matched, "images": len(results), "all_match": matched == len(results)},
        thresholds=limits,
        checks=checks,
        passed=all(c.passed for c in checks),
        images=results,
        environment=_environment(),
    )


def _environment() -> dict[str, str]:
    import transformers

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _json_safe(value: Any) -> Any:
    """NaN/inf (a diverged half-precision run) become null: strict JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: VerifyReport, path: Path) -> None:
    from pipeline.outputs.page_files import write_atomic

    data = _json_safe(report.to_dict())
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        write_atomic(path, text.encode("utf-8"))
    except OSError as exc:  # checked before the run; a disk can still fill up meanwhile
        raise BadArguments(f"--out {path}: cannot be written ({exc.strerror or exc})") from None


def _fmt(value: float) -> str:
    return f"{value:.10g}"


def format_table(report: VerifyReport) -> str:
    """The human summary: one row per check, then per image; ends with PASS or FAIL."""
    t, r, m = report.target, report.reference, report.metrics
    lines = [
        f"verify {report.model['dir']}",
        f"  target    {t['impl']:<7} {t['device']:<8} {t['dtype']}",
        f"  reference {r['impl']:<7} {r['device']:<8} {r['dtype']}  ({r['model_dir']})",
        f"  {len(report.images)} image(s), {m.positions} logit positions, thresholds: {report.thresholds.profile}",
        "",
        f"  {'metric':<26}{'value':>16}  {'limit':<16}result",
    ]
    limits = {c.name: c for c in report.checks}
    rows = [
        ("relative_error", m.relative_error),
        ("cosine_similarity", m.cosine_similarity),
        ("top1_agreement", m.top1_agreement),
        ("max_abs_error", m.max_abs_error),
        ("mean_abs_error", m.mean_abs_error),
        ("min_position_cosine", m.min_position_cosine),
        ("reference_logit_rms", m.reference_logit_rms),
        ("reference_self_agreement", report.reference_self_agreement),
    ]
    for name, value in rows:
        check = limits.get(name)
        limit = f"{check.op} {check.limit:.10g}" if check else "(reported)"
        result = ("ok" if check.passed else "FAIL") if check else ""
        lines.append(f"  {name:<26}{_fmt(value):>16}  {limit:<16}{result}")
    g = report.greedy
    check = limits.get("greedy_match")
    verdict = ("ok" if check.passed else "FAIL") if check else ""
    lines.append(
        f"  {'greedy_match':<26}{g['matched']:>13}/{g['images']:<2}  "
        f"{'required' if check else '(reported)':<16}{verdict}"
    )
    lines += ["", f"  {'image':<28}{'tokens':>7}{'rel_err':>11}{'cosine':>11}{'top1':>7}  greedy"]
    for img in report.images:
        im = img.metrics
        greedy = "same" if img.greedy_match else f"differs at token {img.first_divergence}"
        lines.append(
            f"  {Path(img.path).name[:27]:<28}{img.reference_tokens:>7}{im.relative_error:>11.3g}"
            f"{im.cosine_similarity:>11.6f}{im.top1_agreement:>7.3f}  {greedy}"
        )
    failed = [c.name for c in report.checks if not c.passed]
    lines.append("")
    lines.append("RESULT: PASS" if report.passed else f"RESULT: FAIL ({', '.join(failed)})")
    return "\n".join(lines)


def run_verify(**kwargs: Any) -> int:
    """CLI entry: verify, print the table, return the exit code."""
    report = verify(**kwargs, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(report))
    if kwargs.get("out_path") is not None:
        print(f"wrote {kwargs['out_path']}")
    return report.exit_code
