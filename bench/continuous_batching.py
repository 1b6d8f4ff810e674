"""Continuous vs static batching on a mixed-length workload: pages/s at the same maximum batch.

Workload: `--pages` page images (the real page shapes of `benchdata.page_mix`, shrunk to the
model's pixel budget as page loaders do), each with a transcription length drawn from the
issue's shape: 20% short (1-20 tokens), 60% medium (200-800), 20% long (1,500-2,048), all times
`--length-scale` (1/8 by default on CPU: 1-2, 25-100 and 188-256 tokens), seeded by `--seed`.

How lengths are forced: stop tokens and the repetition guard are switched off and each page gets
its drawn length as its own `max_new_tokens` (the engine's per-page budget), so page i yields
exactly `lengths[i]` tokens on both paths. A page ending at its budget leaves the batch exactly
as a page ending at `<|im_end|>` does; the stop reason is the only difference.

Paths, both through `Recognizer.recognize` at `--max-batch` B:
- static: batches of B pages in input order, each decoded until its longest page stops (the
  worker's way before continuous batching);
- continuous: up to B pages at a time; a page that stops hands its row to the next page;
- worker: what a device worker runs (`runner.job_stream.JobStream` over its task queue):
  batches of B pages, `JOBS_PER_WORKER` out at once, one `recognize_stream` that never drains
  between batches, each batch answered when its last page stops and the next sent then.
With `--fixed-shapes`, also continuous+fixed and worker+fixed: the same, decoding at bucketed
shapes over a cache allocated whole (`pipeline/model/fixed_shapes.py`), each shape captured once
as a CUDA graph on a GPU; capture time is its own column, not decode time.
Rounds are interleaved (the order alternates) and reported as medians; the script exits 1
unless every page's token ids are identical on both paths in every round.

    python bench/continuous_batching.py --size seed --pages 48 --max-batch 8 --threads 1
"""

from __future__ import annotations

import argparse
import queue
import random
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import benchdata
import benchlib
from benchlib import Goal, PhaseClock, median

from pipeline.runner.job_stream import JobDone, JobStream
from pipeline.runner.model_session import ModelSession, WorkerOptions
from pipeline.runner.worker_pool import JOBS_PER_WORKER

NAME = "continuous_batching"
PATHS = ("static", "continuous", "worker")
# With --fixed-shapes: the same two, decoding at fixed shapes (CUDA graphs on a GPU).
FIXED_PATHS = ("continuous+fixed", "worker+fixed")
# (share of pages, shortest, longest) at full scale, from the issue.
LENGTH_MIX = ((0.2, 1, 20), (0.6, 200, 800), (0.2, 1500, 2048))
PROMPT = "Recognize the text in this image."


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | npu (default cpu)")
    p.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 elsewhere")
    p.add_argument("--size", default="seed", choices=benchdata.SIZES)
    p.add_argument("--pages", type=int, default=48)
    p.add_argument("--max-batch", type=int, default=8, help="rows of either path's batch")
    p.add_argument("--token-budget", type=int, default=None, help="continuous path's KV budget")
    p.add_argument("--length-scale", type=float, default=0.125, help="transcription lengths x")
    p.add_argument("--seed", type=int, default=14, help="seed of the drawn lengths")
    p.add_argument("--page-scale", type=float, default=1.0, help="page pixel sizes x this")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--clock",
        choices=("auto", "cpu", "wall"),
        default="auto",
        help="what the figures are in; auto: CPU time on cpu (use with --threads 1), else wall",
    )
    p.add_argument(
        "--fixed-shapes",
        action="store_true",
        help="also continuous and worker at fixed shapes (captured as CUDA graphs on a GPU; "
        "the cache and graphs are kept from round to round, as a worker keeps them in a run)",
    )
    args = p.parse_args(argv)
    args.paths = PATHS + (FIXED_PATHS if args.fixed_shapes else ())
    if args.quick:
        args.size, args.pages, args.max_batch, args.length_scale = "tiny", 10, 3, 1 / 64
        args.repeats, args.warmup, args.threads, args.page_scale = 1, 0, 1, 0.1
    if args.pages < 1 or args.max_batch < 1 or args.length_scale <= 0:
        p.error("--pages, --max-batch and --length-scale must be positive")
    return args


def draw_lengths(count: int, scale: float, seed: int) -> list[int]:
    """Transcription lengths with the LENGTH_MIX shape, scaled; exact shares, shuffled order."""
    rnd = random.Random(seed)
    kinds: list[int] = []
    for kind, (share, _, _) in enumerate(LENGTH_MIX):
        kinds += [kind] * round(share * count)
    kinds = (kinds + [1] * count)[:count]  # rounding leftovers are medium pages
    rnd.shuffle(kinds)
    out = []
    for kind in kinds:
        _, low, high = LENGTH_MIX[kind]
        out.append(max(1, round(rnd.randint(low, high) * scale)))
    return out


class Bench:
    """Drives `Recognizer.recognize` with stop tokens off; records every page's token ids, the
    time in each phase, and how many rows each decode step ran."""

    def __init__(self, rec: Any, args: Any) -> None:
        from dataclasses import replace

        from pipeline.ingest.images import shrink_to
        from pipeline.model import fixed_shapes
        from pipeline.model.generation import GenerationEngine

        self.rec, self.args = rec, args
        rec.engine = GenerationEngine(rec.engine.decoder, ())
        rec.config = replace(rec.config, special_tokens=_no_stop(rec.config.special_tokens))
        self.tokens: list[list[int]] = []
        self.rows: list[int] = []
        to_recognition = rec._to_recognition

        def keep_ids(generated: Any) -> Any:
            self.tokens.append(list(generated.token_ids))
            return to_recognition(generated)

        rec._to_recognition = keep_ids
        step = rec.engine.forward_step

        def counted_step(cache, positions, row_lengths, tokens):
            self.rows.append(int(tokens.shape[0]))
            return step(cache, positions, row_lengths, tokens)

        rec.engine.forward_step = counted_step
        fixed_step = fixed_shapes.FixedShapeStep.__call__

        def counted_fixed_step(step, positions, row_lengths, tokens):
            self.rows.append(len(row_lengths))
            return fixed_step(step, positions, row_lengths, tokens)

        fixed_shapes.FixedShapeStep.__call__ = counted_fixed_step  # the bench's own process
        # One kept cache for both fixed paths (the larger rows win, then both fit): a worker
        # keeps its cache and graphs for a whole run, so rounds after the warm-up capture nothing.
        self.kept = fixed_shapes.KeptStep()
        dev = rec.torch_device
        self.cpu_clock = args.clock == "cpu" or (args.clock == "auto" and dev.type == "cpu")
        self.clock = PhaseClock(lambda: _sync(dev))
        self.clock.wrap(rec.processor, "images", "patchify")
        self.clock.wrap(rec.model, "encode_images", "vision")
        self.clock.wrap(rec.engine.decoder, "prefill", "prefill")
        self.clock.wrap(fixed_shapes, "capture_graph", "capture")
        pages = benchdata.page_mix(args.pages, scale=args.page_scale)
        self.images = [shrink_to(p, rec.max_image_pixels) for p in pages]
        self.lengths = draw_lengths(args.pages, args.length_scale, args.seed)

    def run(self, path: str) -> tuple[dict[str, Any], list[list[int]]]:
        self.clock.reset()
        self.tokens, self.rows = [], []
        self.rec.engine.fixed_step = self.kept if path in FIXED_PATHS else None
        path = path.removesuffix("+fixed")
        with self.clock.total():
            if path == "worker":
                self._worker()
            else:
                self.rec.recognize(
                    self.images,
                    prompt=PROMPT,
                    max_new_tokens=self.lengths,
                    repetition_guard=False,
                    max_batch=self.args.max_batch,
                    token_budget=self.args.token_budget if path == "continuous" else None,
                    schedule=path,
                )
        s = dict(self.clock.cpu_seconds if self.cpu_clock else self.clock.seconds)
        total = s["total"]
        other = s.get("patchify", 0.0) + s.get("vision", 0.0) + s.get("prefill", 0.0)
        other += s.get("capture", 0.0)
        row = {
            "pages": len(self.images),
            "tokens": sum(len(t) for t in self.tokens),
            "seconds": total,
            "wall_s": self.clock.seconds["total"],
            "cpu_s": self.clock.cpu_seconds["total"],
            "vision_s": s.get("patchify", 0.0) + s.get("vision", 0.0),
            "prefill_s": s.get("prefill", 0.0),
            "decode_s": total - other,
            "capture_s": s.get("capture", 0.0),
            "decode_steps": len(self.rows),
            "mean_rows_per_step": sum(self.rows) / max(len(self.rows), 1),
        }
        return row, self.tokens

    def _worker(self) -> None:
        """The device worker's way (`runner.job_stream.JobStream`, as a worker process runs it):
        batches of B pages, at most `JOBS_PER_WORKER` out at once, the next sent the moment one
        is answered (a coordinator thread); every page carries its drawn budget."""
        size = self.args.max_batch
        options = WorkerOptions(
            model_dir="",
            dtype=None,
            impl="native",
            prompt=PROMPT,
            max_new_tokens=max(self.lengths),
            repetition_guard=False,
            max_batch=size,
            token_budget=self.args.token_budget,
        )
        session = ModelSession(self.rec, options, 0.0)
        stream = session.stream
        done: dict[tuple[int, int], list[int]] = {}
        collected, self.tokens = self.tokens, []

        def with_budgets(feed):
            def budgeted(n: int, block: bool) -> list | None:
                got = feed(n, block)
                if got is None:
                    return None
                return [(key, im, self.lengths[key[0] * size + key[1]]) for key, im in got]

            for key, recognition in stream(budgeted):
                done[key] = self.tokens.pop()
                yield key, recognition

        session.stream = with_budgets
        jobs = [
            (start // size, self.images[start : start + size])
            for start in range(0, len(self.images), size)
        ]
        tasks: queue.Queue = queue.Queue()
        out = threading.Semaphore(JOBS_PER_WORKER)
        failed: list = []

        def coordinator() -> None:
            for job in jobs:
                out.acquire()
                tasks.put(job)
            tasks.put(None)

        def answer(result) -> None:
            if not isinstance(result, JobDone):
                failed.append(result)
            out.release()

        thread = threading.Thread(target=coordinator, daemon=True)
        thread.start()
        JobStream(session, tasks.get, answer).serve()
        thread.join()
        if failed:
            raise RuntimeError(f"worker path: {failed[0]}")
        self.tokens = collected + [done[divmod(i, size)] for i in range(len(self.images))]


def _no_stop(special: Any) -> Any:
    """The same special tokens, but no stop ids: every page runs to its own budget."""

    class NoStop(type(special)):
        @property
        def stop_ids(self) -> tuple[int, ...]:
            return ()

    return NoStop(**asdict(special))


def _sync(device: Any) -> None:
    from pipeline.model.devices import synchronize

    synchronize(device)


def summarise(rounds: dict[str, list[dict]], max_batch: int) -> list[dict[str, Any]]:
    rows = []
    for path, samples in rounds.items():
        row: dict[str, Any] = {"path": path, "max_batch": max_batch}
        for field, value in samples[0].items():
            row[field] = value if isinstance(value, int) else median([s[field] for s in samples])
        row["pages_per_s"] = row["pages"] / row["seconds"]
        row["pages_per_s_wall"] = row["pages"] / row["wall_s"]
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["occupancy"] = row["mean_rows_per_step"] / max_batch
        row["seconds_all_rounds"] = [s["seconds"] for s in samples]
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["speedup"] = row["pages_per_s"] / base["pages_per_s"]
        row["speedup_wall"] = row["pages_per_s_wall"] / base["pages_per_s_wall"]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    threads = benchdata.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-continuous-") as tmp:
        rec = benchdata.build_recognizer(args.size, args.device, args.dtype, Path(tmp))
        bench = Bench(rec, args)
        rounds: dict[str, list[dict]] = {p: [] for p in args.paths}
        first: list[list[int]] | None = None
        mismatches: list[dict[str, Any]] = []
        for r in range(args.warmup + args.repeats):
            for path in args.paths if r % 2 == 0 else args.paths[::-1]:
                measured, tokens = bench.run(path)
                first = first if first is not None else tokens
                for page, (got, want) in enumerate(zip(tokens, first, strict=True)):
                    if got != want or len(got) != bench.lengths[page]:
                        mismatches.append({"round": r, "path": path, "page": page})
                if r >= args.warmup:
                    rounds[path].append(measured)
                print(
                    f"round {r}{' (warm-up)' if r < args.warmup else ''}: {path:>10}  "
                    f"{measured['seconds']:.2f} s",
                    file=sys.stderr,
                )
        rows = summarise(rounds, args.max_batch)
    identical = not mismatches
    columns = {
        "path": "path",
        "max_batch": "max batch",
        "pages": "pages",
        "tokens": "tokens",
        "seconds": "s",
        "pages_per_s": "pages/s",
        "speedup": "x static",
        "vision_s": "vision s",
        "prefill_s": "prefill s",
        "decode_s": "decode s",
        "decode_steps": "steps",
        "capture_s": "capture s",
        "occupancy": "rows/step / B",
        "wall_s": "wall s",
        "speedup_wall": "x static (wall)",
    }
    clock = "CPU time" if bench.cpu_clock else "wall time"
    title = (
        f"{args.size} model, {rec.dtype} on {rec.device}, {args.pages} pages, lengths "
        f"{min(bench.lengths)}-{max(bench.lengths)} (sum {sum(bench.lengths)}), "
        f"{threads} threads, medians of {args.repeats}, figures in {clock}"
    )
    benchlib.print_table(list(columns.values()), [[r.get(f) for f in columns] for r in rows], title)
    goals = [
        Goal(
            f"{row['path']} vs static at max batch {args.max_batch} (pages/s)",
            ">= 1.5x",
            f"{row['speedup']:.2f}x",
            row["speedup"] >= 1.5,
        )
        for row in rows[1:]
    ]
    goals += [
        Goal(
            "identical tokens",
            "all pages",
            "yes" if identical else f"{len(mismatches)} pages differ",
            identical,
        ),
    ]
    benchlib.print_goals(goals)
    settings = {k: v for k, v in vars(args).items() if k != "results_dir"}
    settings.update(
        clock="cpu" if bench.cpu_clock else "wall",
        threads=threads,
        dtype=rec.dtype,
        device=rec.device,
        length_mix=LENGTH_MIX,
        lengths=bench.lengths,
        num_parameters=rec.num_parameters,
    )
    path = benchlib.write_results(
        NAME,
        args.results_dir,
        settings,
        rows,
        goals,
        extra={"tokens_identical": identical, "mismatches": mismatches[:50]},
    )
    print(f"wrote {path}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
