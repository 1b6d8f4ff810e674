"""Generation engine vs transformers `generate()`: same weights, pages, prompt and token count.

Baseline (the published port's way): one page at a time, `generate()` with its default cache
(`pipeline.model.reference.generate_with_transformers`). Ours: the pipeline's batched engine, as
`Recognizer.recognize` drives it, at each `--batches` size. Both decode greedily with no stop
token and no repetition guard, so every page yields exactly `--new-tokens` tokens, and the
script exits 1 unless every page's tokens are identical in both.

Pages: `--pages` distinct page images (a mix of real page shapes); a batch of B processes
B*ceil(pages/B) pages cycling through them, so every row has a baseline to be compared with.

    python bench/generation.py --size seed --new-tokens 32 --threads 1
    python bench/generation.py --device cuda --dtype bfloat16 --size full \
        --batches 1,4,8,16,32,64 --new-tokens 64 --bandwidth-gbs 4800
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import benchdata
import benchlib
from benchlib import Goal, PhaseClock, median

NAME = "generation"
NO_STOP: tuple[int, ...] = ()
FIXED = "+fixed"  # a batch key's suffix for the engine at fixed shapes


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | npu (default cpu)")
    p.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 elsewhere")
    p.add_argument("--size", default="seed", choices=benchdata.SIZES)
    p.add_argument("--batches", default="1,4,8,16", help="batch sizes of our engine")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--pages", type=int, default=8, help="distinct page images")
    p.add_argument("--page-scale", type=float, default=1.0, help="page pixel sizes x this")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="memory bandwidth, GB/s")
    p.add_argument(
        "--clock",
        choices=("auto", "cpu", "wall"),
        default="auto",
        help="what the figures are in; auto: CPU time on cpu (use with --threads 1), else wall",
    )
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops, both paths")
    p.add_argument(
        "--fixed-shapes",
        action="store_true",
        help="also the engine at fixed shapes (CUDA graphs on a GPU), side by side per batch",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batches, args.new_tokens, args.pages = "tiny", "1,4", 6, 4
        args.repeats, args.warmup, args.threads = 1, 0, 1
        args.page_scale = 0.1
    args.batch_list = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.new_tokens < 2 or min(args.batch_list) < 1:
        p.error("--new-tokens must be >= 2 and batch sizes >= 1")
    return args


class Bench:
    """Drives `Recognizer.recognize` and `recognize_with_transformers` themselves, with stop
    tokens switched off, and records each page's token ids as the recognizer hands them out."""

    def __init__(self, rec: Any, args: Any) -> None:
        import torch

        from pipeline.model import fixed_shapes
        from pipeline.model.generation import GenerationEngine

        self.torch = torch
        self.kept = fixed_shapes.KeptStep()  # one cache and its graphs, kept from call to call
        self.rec = rec
        self.args = args
        rec.engine = GenerationEngine(rec.engine.decoder, NO_STOP)
        rec.config = replace(rec.config, special_tokens=_no_stop(rec.config.special_tokens))
        self.tokens: list[list[int]] = []
        to_recognition = rec._to_recognition

        def keep_ids(generated: Any) -> Any:
            self.tokens.append(list(generated.token_ids))
            return to_recognition(generated)

        rec._to_recognition = keep_ids
        dev = rec.torch_device
        self.cuda = dev.type == "cuda"
        self.cpu_clock = args.clock == "cpu" or (args.clock == "auto" and dev.type == "cpu")
        self.clock = PhaseClock(lambda: benchlib_sync(dev))
        self.clock.wrap(rec.processor, "images", "patchify")
        self.clock.wrap(rec.model, "encode_images", "vision")
        # The decoder's pass, which both the static and the continuous schedule call.
        self.clock.wrap(rec.engine.decoder, "prefill", "prefill")
        self.clock.wrap(fixed_shapes, "capture_graph", "capture")
        self.clock.wrap(rec.model.language_model, "forward", _hf_phase)
        from pipeline.ingest.images import shrink_to

        # As a run delivers them: page loaders shrink pages to what the model looks at.
        pages = benchdata.page_mix(args.pages, scale=args.page_scale)
        self.templates = [shrink_to(p, rec.max_image_pixels) for p in pages]
        prompt = "Recognize the text in this image."
        self.prompt_lengths = [
            len(rec.processor.prompt_ids(rec.image_token_count(*im.size), prompt))
            for im in self.templates
        ]

    def pages_for(self, batch: int) -> list[int]:
        count = batch * math.ceil(len(self.templates) / batch)
        return [i % len(self.templates) for i in range(count)]

    def _start(self) -> None:
        self.clock.reset()
        self.tokens = []
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def _measure(self, pages: list[int], batch: int) -> dict[str, Any]:
        s = dict(self.clock.cpu_seconds if self.cpu_clock else self.clock.seconds)
        total = s["total"]
        n = self.args.new_tokens
        batches = len(pages) // batch
        decode = total - s.get("patchify", 0.0) - s.get("vision", 0.0) - s.get("prefill", 0.0)
        decode -= s.get("capture", 0.0)
        row = {
            "pages": len(pages),
            "tokens": len(pages) * n,
            "seconds": total,
            "wall_s": self.clock.seconds["total"],
            "cpu_s": self.clock.cpu_seconds["total"],
            "patchify_s": s.get("patchify", 0.0),
            "vision_s": s.get("vision", 0.0),
            "prefill_s": s.get("prefill", 0.0),
            "decode_s": decode,
            "capture_s": s.get("capture", 0.0),
            "decode_step_ms": decode / (batches * (n - 1)) * 1000,
        }
        if self.cuda:
            row["peak_cuda_gib"] = self.torch.cuda.max_memory_allocated() / 2**30
        return row

    def baseline(self) -> tuple[dict[str, Any], list[list[int]]]:
        pages = list(range(len(self.templates)))
        self._start()
        with self.clock.total():
            self.rec.recognize_with_transformers(
                self.templates, max_new_tokens=self.args.new_tokens
            )
        return self._measure(pages, 1), self.tokens

    def ours(self, batch: int, fixed: bool = False) -> tuple[dict[str, Any], list[list[int]]]:
        pages = self.pages_for(batch)
        self.rec.engine.fixed_step = self.kept if fixed else None
        self._start()
        with self.clock.total():
            for start in range(0, len(pages), batch):
                images = [self.templates[i] for i in pages[start : start + batch]]
                self.rec.recognize(
                    images, max_new_tokens=self.args.new_tokens, repetition_guard=False
                )
        return self._measure(pages, batch), self.tokens


def _no_stop(special: Any) -> Any:
    """The same special tokens, but no stop ids: every page runs to --new-tokens."""

    class NoStop(type(special)):
        @property
        def stop_ids(self) -> tuple[int, ...]:
            return NO_STOP

    return NoStop(**asdict(special))


def _hf_phase(*args: Any, **kwargs: Any) -> str:
    """generate()'s first forward gets the prompt embeddings; later ones one token each."""
    return "prefill" if kwargs.get("inputs_embeds") is not None else "hf_step"


def benchlib_sync(device: Any) -> None:
    from pipeline.model.devices import synchronize

    synchronize(device)


def compare(base: list[list[int]], ours: list[list[int]], pages: list[int], n: int) -> list[dict]:
    """Rows whose tokens differ from the baseline's for the same page (first differing step)."""
    bad = []
    for row, (page, got) in enumerate(zip(pages, ours, strict=True)):
        want = base[page]
        if got != want or len(got) != n:
            step = next(
                (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                min(len(got), len(want)),
            )
            bad.append(
                {
                    "row": row,
                    "page": page,
                    "first_diff_step": step,
                    "len_ours": len(got),
                    "len_baseline": len(want),
                }
            )
    return bad


def bandwidth(
    rec: Any, batch: int, prompt_len: int, n: int, step_s: float, gbs: float
) -> dict[str, float]:
    """Bytes one decode step must read (weights once, plus the KV cache) against the bound."""
    lm = rec.model.language_model
    weights = benchdata.model_bytes(lm)
    dec = rec.engine.decoder
    item = next(lm.parameters()).element_size()
    key_len = prompt_len + n / 2  # mean over the decode steps
    kv = 2 * dec.num_layers * batch * dec.num_kv_heads * dec.head_dim * item * key_len
    return {
        "weight_gb_per_step": weights / 1e9,
        "kv_gb_per_step": kv / 1e9,
        "achieved_gbs": (weights + kv) / step_s / 1e9,
        "bound_fraction_weights": weights / step_s / 1e9 / gbs,
        "bound_fraction_weights_kv": (weights + kv) / step_s / 1e9 / gbs,
    }


def profile(bench: Bench, batch: int, top: int = 12) -> dict[str, list[dict[str, Any]]]:
    """Where the time goes: torch.profiler's top operators by self time, per path."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    out = {}
    runs = [("baseline", bench.baseline), (f"engine batch {batch}", lambda: bench.ours(batch))]
    if bench.args.fixed_shapes:
        runs.append((f"engine batch {batch}, fixed shapes", lambda: bench.ours(batch, True)))
    for label, run in runs:
        with torch_profile(activities=activities) as prof:
            run()
        events = list(prof.key_averages())
        attr = "self_device_time_total" if bench.cuda else "self_cpu_time_total"
        total = sum(getattr(e, attr, 0.0) for e in events) or 1.0
        events.sort(key=lambda e: getattr(e, attr, 0.0), reverse=True)
        out[label] = [
            {
                "op": e.key,
                "self_ms": getattr(e, attr, 0.0) / 1000,
                "share": getattr(e, attr, 0.0) / total,
                "calls": e.count,
            }
            for e in events[:top]
        ]
        benchlib.print_table(
            ["op", "self ms", "share", "calls"],
            [[r["op"][:60], r["self_ms"], r["share"], r["calls"]] for r in out[label]],
            f"profile: {label}",
        )
    return out


def summarise(bench: Bench, rounds: dict[str, list[dict]], args: Any) -> list[dict[str, Any]]:
    rows = []
    base_rate = None
    for key, samples in rounds.items():
        batch = 1 if key == "baseline" else int(key.removesuffix(FIXED))
        path = "engine, fixed shapes" if key.endswith(FIXED) else "engine"
        row: dict[str, Any] = {
            "path": "transformers generate()" if key == "baseline" else path,
            "batch": batch,
        }
        for field, value in samples[0].items():
            row[field] = value if isinstance(value, int) else median([s[field] for s in samples])
        row["pages_per_s"] = row["pages"] / row["seconds"]
        row["pages_per_s_wall"] = row["pages"] / row["wall_s"]
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["decode_tokens_per_s"] = batch / (row["decode_step_ms"] / 1000)
        row["seconds_all_rounds"] = [s["seconds"] for s in samples]
        if key == "baseline":
            base_rate, base_wall = row["pages_per_s"], row["pages_per_s_wall"]
            base_decode = row["decode_tokens_per_s"]
        row["speedup"] = row["pages_per_s"] / base_rate
        row["speedup_wall"] = row["pages_per_s_wall"] / base_wall
        row["decode_speedup"] = row["decode_tokens_per_s"] / base_decode
        if args.bandwidth_gbs:
            prompt = max(bench.prompt_lengths)
            row.update(
                bandwidth(
                    bench.rec,
                    batch,
                    prompt,
                    args.new_tokens,
                    row["decode_step_ms"] / 1000,
                    args.bandwidth_gbs,
                )
            )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    threads = benchdata.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        rec = benchdata.build_recognizer(args.size, args.device, args.dtype, Path(tmp))
        bench = Bench(rec, args)
        fixed = [FIXED] if args.fixed_shapes else []
        keys = ["baseline", *[f"{b}{f}" for b in args.batch_list for f in ["", *fixed]]]
        rounds: dict[str, list[dict]] = {k: [] for k in keys}
        mismatches: list[dict] = []
        base_tokens: list[list[int]] = []
        for r in range(args.warmup + args.repeats):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]  # interleaved, rotated
            if "baseline" in order and order[0] != "baseline" and not base_tokens:
                order.remove("baseline")
                order.insert(0, "baseline")
            for key in order:
                if key == "baseline":
                    measured, base_tokens = bench.baseline()
                else:
                    batch = int(key.removesuffix(FIXED))
                    measured, tokens = bench.ours(batch, key.endswith(FIXED))
                    bad = compare(base_tokens, tokens, bench.pages_for(batch), args.new_tokens)
                    mismatches += [{"path": key, "round": r, **b} for b in bad]
                if r >= args.warmup:
                    rounds[key].append(measured)
                print(
                    f"round {r}{' (warm-up)' if r < args.warmup else ''}: {key:>8}  {measured['seconds']:.2f} s",
                    file=sys.stderr,
                )
        rows = summarise(bench, rounds, args)
        profiled = (
            profile(bench, max([b for b in args.batch_list if b <= 8] or [1]))
            if args.profile
            else None
        )
    identical = not mismatches
    columns = {
        "path": "path",
        "batch": "batch",
        "pages": "pages",
        "seconds": "s",
        "pages_per_s": "pages/s",
        "tokens_per_s": "tok/s",
        "speedup": "x base",
        "vision_s": "vision s",
        "prefill_s": "prefill s",
        "decode_s": "decode s",
        "decode_step_ms": "ms/step",
        "capture_s": "capture s",
        "decode_speedup": "decode x",
        "wall_s": "wall s",
        "speedup_wall": "x base (wall)",
    }
    headers, fields = list(columns.values()), list(columns)
    if args.bandwidth_gbs:
        headers += ["GB/s", "bw % (w)", "bw % (w+kv)"]
        fields += ["achieved_gbs", "bound_fraction_weights", "bound_fraction_weights_kv"]
    if bench.cuda:
        headers.append("peak GiB")
        fields.append("peak_cuda_gib")
    clock = "CPU time" if bench.cpu_clock else "wall time"
    title = (
        f"{args.size} model, {rec.dtype} on {rec.device}, {args.new_tokens} new tokens/page, "
        f"{threads} threads, medians of {args.repeats}, figures in {clock}"
    )
    benchlib.print_table(headers, [[r.get(f) for f in fields] for r in rows], title)
    print(
        f"tokens identical to generate(): {'yes' if identical else f'NO ({len(mismatches)} rows differ)'}"
    )
    at8 = next((r for r in rows if r["path"] == "engine" and r["batch"] == 8), None)
    goals = [
        Goal(
            "engine vs generate() at batch 8 (pages/s)",
            ">= 3x",
            f"{at8['speedup']:.2f}x" if at8 else "not run",
            at8["speedup"] >= 3 if at8 else None,
        ),
        Goal(
            "identical tokens",
            "all pages",
            "yes" if identical else f"{len(mismatches)} rows differ",
            identical,
        ),
    ]
    benchlib.print_goals(goals)
    settings = {k: v for k, v in vars(args).items() if k not in ("results_dir", "batch_list")}
    settings.update(
        clock="cpu" if bench.cpu_clock else "wall",
        threads=threads,
        dtype=rec.dtype,
        device=rec.device,
        prompt_lengths=bench.prompt_lengths,
        num_parameters=rec.num_parameters,
    )
    path = benchlib.write_results(
        NAME,
        args.results_dir,
        settings,
        rows,
        goals,
        extra={"tokens_identical": identical, "mismatches": mismatches[:50], "profile": profiled},
    )
    print(f"wrote {path}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
