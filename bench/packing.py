"""Vision encoder: packed varlen sequence (the pipeline's) vs a padded batch, same weights.

Packed: every patch of every page in ONE `(T, patch_dim)` sequence, attention block-diagonal per
page (`VisionEncoder.forward`). Padded: the usual batch layout, each page's patches padded to
the longest page `(B, L_max, patch_dim)` with a key-padding mask; the encoder has no such mode,
so it is written here over the encoder's own modules. The outputs must agree on real patches.

Pages: a mix of real page shapes (A4, landscape letter, a book spread, a register column, an
index card, a line strip, a label photo...), sized by the processor to the `--size` config's
token budget exactly as the pipeline does.

    python bench/packing.py --size full --threads 1
    python bench/packing.py --device cuda --dtype bfloat16 --size full --pages 32
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import benchdata
import benchlib
from benchlib import Goal, median

NAME = "packing"


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument(
        "--size", default="full", choices=benchdata.SIZES, help="token budget of this config"
    )
    p.add_argument("--pages", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.pages, args.repeats, args.warmup, args.threads = "tiny", 4, 1, 0, 1
    return args


def padded_forward(encoder: Any, patches: Any, grids: list[tuple[int, int]]) -> Any:
    """The encoder's arithmetic on a padded batch; returns the real patches' features, packed."""
    import torch

    from pipeline.model.attention import attention
    from pipeline.model.vision import apply_rotary, patch_positions

    device = patches.device
    counts = [r * c for r, c in grids]
    batch, longest = len(grids), max(counts)
    mask = (
        torch.arange(longest, device=device)[None, :] < torch.tensor(counts, device=device)[:, None]
    )
    x = patches.new_zeros(batch, longest, patches.shape[1])
    x[mask] = patches
    positions = torch.zeros(batch, longest, 2, dtype=torch.long, device=device)
    positions[mask] = patch_positions(grids, device)
    cos, sin = encoder.rotary(positions.view(-1, 2))
    heads, head_dim = encoder.config.num_heads, encoder.config.head_dim
    x = encoder.patch_embed(x)
    for block in encoder.blocks:
        attn = block.attn
        qkv = attn.qkv(block.norm1(x)).view(batch * longest, 3, heads, head_dim)
        q, k, v = qkv.unbind(dim=1)
        q = apply_rotary(q, cos, sin).view(batch, longest, heads, head_dim).transpose(1, 2)
        k = apply_rotary(k, cos, sin).view(batch, longest, heads, head_dim).transpose(1, 2)
        v = v.view(batch, longest, heads, head_dim).transpose(1, 2)
        out = attention(q, k, v, key_mask=mask)  # (B, H, L, D)
        x = x + attn.proj(out.transpose(1, 2).reshape(batch, longest, -1))
        x = x + block.mlp(block.norm2(x))
    return encoder.norm(x)[mask]


def build(args: Any):
    import torch

    from pipeline.model.devices import resolve_device, resolve_dtype
    from pipeline.model.processor import Processor
    from pipeline.model.tokenizer import TextTokenizer, build_byte_level_tokenizer
    from pipeline.model.vision import VisionEncoder

    config = benchdata.bench_config(args.size)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    encoder = VisionEncoder(config.vision)
    for name, param in encoder.named_parameters():  # synthetic.py's vision initialisation
        torch.nn.init.normal_(param, std=0.02) if param.dim() > 1 else torch.nn.init.zeros_(param)
        if "norm" in name and name.endswith("weight"):
            torch.nn.init.ones_(param)
    encoder = encoder.to(device=device, dtype=dtype).eval()
    processor = Processor(
        config, TextTokenizer(build_byte_level_tokenizer(), config.special_tokens)
    )
    scale = 0.1 if args.quick else 1.0
    pixels = processor.images(benchdata.page_mix(args.pages, scale=scale))
    return encoder, pixels.patches.to(device=device, dtype=dtype), list(pixels.grids), device, dtype


def main(argv: list[str] | None = None) -> int:
    import torch

    from pipeline.model.attention import sdpa_backends
    from pipeline.model.devices import inference, synchronize

    args = arguments(argv)
    threads = benchdata.set_threads(args.threads)
    encoder, patches, grids, device, dtype = build(args)
    counts = [r * c for r, c in grids]
    real, padded_tokens = sum(counts), len(counts) * max(counts)
    modes = {
        "packed varlen": lambda: encoder(patches, grids),
        "padded + key mask": lambda: padded_forward(encoder, patches, grids),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    with inference(device, dtype), sdpa_backends(device):  # as Recognizer.recognize runs
        for r in range(args.warmup + args.repeats):
            for mode in list(modes)[r % 2 :] + list(modes)[: r % 2]:  # interleaved
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                synchronize(device)
                started, cpu_started = time.perf_counter(), time.process_time()
                outputs[mode] = modes[mode]()
                synchronize(device)
                elapsed = time.perf_counter() - started
                if device.type == "cpu":  # CPU time: waiting for a shared core does not count
                    elapsed = time.process_time() - cpu_started
                if device.type == "cuda":
                    peaks[mode] = torch.cuda.max_memory_allocated() / 2**30
                print(f"round {r}: {mode} {elapsed:.3f} s", file=sys.stderr)
                if r >= args.warmup:
                    times[mode].append(elapsed)
    packed_out, padded_out = outputs["packed varlen"].float(), outputs["padded + key mask"].float()
    max_diff = (packed_out - padded_out).abs().max().item()
    scale = packed_out.abs().max().item()
    tolerance = 1e-3 if dtype == torch.float32 else 5e-2
    agree = max_diff <= tolerance * max(1.0, scale)
    base = median(times["packed varlen"])
    rows = []
    for mode, samples in times.items():
        tokens = real if mode.startswith("packed") else padded_tokens
        rows.append(
            {
                "mode": mode,
                "pages": len(grids),
                "tokens_computed": tokens,
                "padding_tokens": tokens - real,
                "padding_fraction": (tokens - real) / tokens,
                "seconds": median(samples),
                "seconds_all_rounds": samples,
                "real_tokens_per_s": real / median(samples),
                "time_vs_packed": median(samples) / base,
                **({"peak_cuda_gib": peaks[mode]} if mode in peaks else {}),
            }
        )
    title = f"vision encoder, {args.size} budget ({max(counts)} max tokens/page), {dtype} on {device}, {threads} threads, medians of {args.repeats}, in {'CPU' if device.type == 'cpu' else 'wall'} time"
    headers = ["mode", "pages", "tokens", "padding", "pad %", "s", "real tok/s", "x packed"]
    fields = [
        "mode",
        "pages",
        "tokens_computed",
        "padding_tokens",
        "padding_fraction",
        "seconds",
        "real_tokens_per_s",
        "time_vs_packed",
    ]
    benchlib.print_table(headers, [[r[f] for f in fields] for r in rows], title)
    print("tokens per page:", counts)
    print(
        f"outputs agree on real patches: {'yes' if agree else 'NO'} (max abs diff {max_diff:.2e}, max |x| {scale:.2f})"
    )
    goals = [
        Goal(
            "padded output == packed output on real patches",
            f"max diff <= {tolerance:g} x max|x|",
            f"{max_diff:.2e}",
            agree,
        ),
    ]
    benchlib.print_goals(goals)
    settings = {k: v for k, v in vars(args).items() if k != "results_dir"}
    settings.update(
        threads=threads, dtype=str(dtype), device=str(device), tokens_per_page=counts, grids=grids
    )
    path = benchlib.write_results(
        NAME, args.results_dir, settings, rows, goals, extra={"max_abs_diff": max_diff}
    )
    print(f"wrote {path}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
