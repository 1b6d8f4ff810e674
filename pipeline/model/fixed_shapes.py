"""The continuous batch's decode step at fixed shapes, so that a device can capture it as a graph.

A decode step changes shape at every step: its key length grows by one and its rows change as
pages stop and come. So every step launches each kernel of each layer from Python (about 15 per
layer), which on a GPU costs far more than the memory the step reads at small batches
(BENCHMARKS.md, GPU section: 18 ms per step at batch 1 where the bytes take 0.35 ms). Here the
step runs over a few shapes instead:
- rows: the live rows rounded up to a power of two (at most the batch's slots). The extra rows
  are free slots of the `SlotCache` (live rows are always rows `0..n-1`): they are fed token 0
  at position 0, which writes only their own slot 0, and their logits are dropped;
- keys: the longest row's keys rounded up to `KEY_BUCKET`, at most the cache's capacity; the key
  mask, built inside the step from the positions, hides each row's slots past its end;
- tokens and positions are copied into fixed buffers; the cache is allocated whole up front and
  kept from batch to batch (`KeptStep`), the rotary table for all of it built at once, so no
  step allocates what a graph keeps.
On CUDA each (rows, keys) shape is captured once as a CUDA graph and then replayed: one launch
per step instead of hundreds; on an Ascend NPU the same through torch_npu's `NPUGraph` (written
to its documented API, not yet run on an NPU). Elsewhere the same step runs eagerly; on the CPU
that is what the tests check (every page gets the tokens it gets decoded alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pipeline.model.decoder import NativeDecoder
from pipeline.model.kv_slots import CacheView, SlotCache

# Keys are rounded up to a multiple of this: at most this many padded keys per row and step,
# and a row of up to 6,200 positions (the published model's largest page) needs 25 shapes.
KEY_BUCKET = 256

Step = Callable[[], torch.Tensor]


def row_bucket(rows: int, slots: int) -> int:
    """The rows a step over `rows` live rows runs: the next power of two, at most `slots`."""
    size = 1
    while size < rows:
        size *= 2
    return min(size, slots)


def key_bucket(keys: int, capacity: int) -> int:
    """The keys a step whose longest row has `keys` keys attends over (`capacity` at most)."""
    return min(-(-keys // KEY_BUCKET) * KEY_BUCKET, capacity)


def graph_api(device: torch.device):
    """The device module whose graphs capture steps on `device`, or None (steps run eagerly):
    `torch.cuda` on CUDA; on an Ascend NPU, torch_npu's `torch.npu`, whose `NPUGraph` has the
    same capture and replay calls (aclgraph; torch_npu is looked up, never imported)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda
    npu = getattr(torch, "npu", None)
    if device.type == "npu" and all(hasattr(npu, n) for n in ("NPUGraph", "graph", "Stream")):
        return npu
    return None


class FixedShapeStep:
    """`forward_step` for a continuous batch over its own `SlotCache`, at bucketed shapes.

    The cache is allocated whole (`slots` rows of `cache.max_capacity` positions) and never
    moves, so shapes captured over it stay valid for as long as the instance lives. `captured`
    counts the graphs captured, for benchmarks and tests.
    """

    def __init__(self, decoder: NativeDecoder, cache: SlotCache) -> None:
        self.decoder = decoder
        self.cache = cache
        self.slots = cache.k.shape[1]
        device = cache.k.device
        self.tokens = torch.zeros(self.slots, dtype=torch.long, device=device)
        self.positions = torch.zeros(self.slots, dtype=torch.long, device=device)
        self.graphs = graph_api(device)  # None: steps run eagerly
        self.captured = 0
        self.steps: dict[tuple[int, int], Step] = {}
        self.pool = self.graphs.graph_pool_handle() if self.graphs else None
        # The rotary table for every position the cache can hold, built now: a step that grew
        # it would leave captured graphs reading a freed table.
        decoder.rope(self.positions[:1], cache.max_capacity, cache.k.dtype)

    def fits(self, slots: int, positions: int, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether a batch of `slots` rows of `positions` positions can use this cache."""
        k = self.cache.k
        return (
            self.slots == slots
            and self.cache.capacity >= positions
            and k.device == device
            and k.dtype == dtype
        )

    def __call__(
        self, positions: torch.Tensor, row_lengths: Sequence[int], tokens: torch.Tensor
    ) -> torch.Tensor:
        """Logits `(n, vocab)` for the `n` live rows (rows `0..n-1` of the cache), as
        `GenerationEngine.forward_step` gives them."""
        n = len(row_lengths)
        rows = row_bucket(n, self.slots)
        keys = key_bucket(max(row_lengths) + 1, self.cache.capacity)
        self.tokens[:n].copy_(tokens)
        self.positions[:n].copy_(positions)
        if rows > n:
            self.tokens[n:rows].zero_()
            self.positions[n:rows].zero_()
        step = self.steps.get((rows, keys))
        if step is None:
            step = self.steps[(rows, keys)] = self._build(self.cache.view(rows), rows, keys)
        return step()[:n]

    def _build(self, view: CacheView, rows: int, keys: int) -> Step:
        def run() -> torch.Tensor:
            return self._forward(view, rows, keys)

        if self.graphs is None:
            return run
        self.captured += 1
        return capture_graph(self.graphs, run, self.pool)

    def _forward(self, view: CacheView, rows: int, keys: int) -> torch.Tensor:
        dec = self.decoder
        positions = self.positions[:rows]
        slots = torch.arange(keys, device=positions.device)
        mask = (slots[None, :] <= positions[:, None])[:, None, None, :]
        hidden = dec.decode(dec.embed(self.tokens[:rows]), positions, view, keys, mask)
        return dec.logits(hidden, dec.step_linear)


class KeptStep:
    """An engine's fixed-shape step, kept from one continuous batch to the next.

    A device worker's stream is one batch for a whole run, but `recognize` lists are one batch
    per call; keeping the cache and its captured graphs while the rows and positions still fit
    spares each call a new cache and new captures. Positions are rounded up to `KEY_BUCKET`
    (within the model's) so calls with slightly different pages still fit. Holds the cache
    between calls: memory `recognize(max_batch=..., token_budget=...)` bounds anyway.
    """

    def __init__(self) -> None:
        self.step: FixedShapeStep | None = None

    def for_batch(
        self,
        decoder: NativeDecoder,
        slots: int,
        positions: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> FixedShapeStep:
        if self.step is not None and self.step.fits(slots, positions, device, dtype):
            return self.step
        self.step = None  # let the old cache go before the new one is allocated
        size = max(positions, key_bucket(positions, decoder.max_positions))
        cache = SlotCache(
            decoder.num_layers,
            slots,
            decoder.num_kv_heads,
            decoder.head_dim,
            size,
            size,
            device,
            dtype,
        )
        self.step = FixedShapeStep(decoder, cache)
        return self.step


def capture_graph(api, run: Step, pool: object) -> Step:
    """Capture `run` as a device graph (`api`: `torch.cuda` or `torch.npu`); return a replay
    that gives its (reused) output tensor.

    One eager call on a side stream first, so lazy set-up (library handles, workspaces) happens
    outside the capture; it computes exactly what the replay then computes again (the cache
    writes are the same values at the same places). The output is overwritten by the next replay
    of any graph in the pool: the caller reads it before stepping again.
    """
    side = api.Stream()
    side.wait_stream(api.current_stream())
    with api.stream(side):
        run()
    api.current_stream().wait_stream(side)
    graph = api.CUDAGraph() if api is torch.cuda else api.NPUGraph()
    with api.graph(graph, pool=pool):
        out = run()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay
