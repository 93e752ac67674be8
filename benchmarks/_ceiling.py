"""What a workload could take on this machine at best: its FLOP count at the measured matmul rate.

Every benchmark reports, beside emoscope's time and its baselines', the workload's **ceiling**:

- ``bare``: the same arithmetic with no hooks, no edits and ideal batching, timed here (each
  benchmark says what it runs: a hook-free decoder forward over length-sorted batches, one decode of
  every row with no edit, ...);
- ``flops``: the workload's matrix-multiply FLOPs (every linear layer of every block per token
  that runs, the unembedding per position projected, attention's two products per token and
  context column) divided by the rate ``torch.nn.functional.linear`` reaches on this machine at the
  model's own weight shapes and the workload's number of rows per matmul (``matmul_rate``),
  in the model's dtype (float32 and bfloat16 are both measured and reported).

The ceiling is the smaller of the two times; ``fraction`` = ceiling / emoscope's time. Neither
bound counts elementwise work (norms, rotary embeddings, softmax), so 100% is out of reach; a
fraction near the bare one shows that emoscope adds little beyond the model's own work.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["linear_shapes", "matmul_rate", "Flops", "ceiling_summary", "summary"]


def linear_shapes(model: Any) -> list[tuple[int, int]]:
    """``(out, in)`` of every 2-D weight of one decoder block (GPT-2's ``Conv1D`` stores ``(in, out)``)."""
    shapes = []
    for mod in model.blocks[0].modules():
        w = getattr(mod, "weight", None)
        if w is None or w.dim() != 2 or mod is model.embed:
            continue
        out_f, in_f = (w.shape[1], w.shape[0]) if type(mod).__name__ == "Conv1D" else (w.shape[0], w.shape[1])
        shapes.append((int(out_f), int(in_f)))
    return shapes


def matmul_rate(model: Any, rows: int, dtype: Any = None, *, min_seconds: float = 0.2,
                vocab: bool = True) -> float:
    """GFLOP/s of ``F.linear`` over one block's weight shapes (and the unembedding) at ``rows``
    rows per matmul, in ``dtype`` (default: the model's), on the model's device; each shape is run
    in proportion to its use, repeated for at least ``min_seconds``."""
    import torch
    import torch.nn.functional as F

    dtype = dtype or model.dtype
    dev = model.device
    shapes = linear_shapes(model) + ([(model.vocab_size, model.d_model)] if vocab else [])
    gen = torch.Generator(device="cpu").manual_seed(0)
    mats = [(torch.randn(rows, i, generator=gen).to(dev, dtype), torch.randn(o, i, generator=gen).to(dev, dtype))
            for o, i in shapes]
    flops = sum(2.0 * rows * o * i for o, i in shapes)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        for x, w in mats:  # warm-up
            F.linear(x, w)
        sync()
        n, t0 = 0, time.perf_counter()
        while True:
            for x, w in mats:
                F.linear(x, w)
            n += 1
            sync()
            if time.perf_counter() - t0 >= min_seconds and n >= 2:
                break
    return flops * n / (time.perf_counter() - t0) / 1e9


class Flops:
    """A FLOP tally of one workload for ``model``: ``tokens(n, blocks, ctx)`` adds ``n`` positions
    run through ``blocks`` decoder blocks attending over ``ctx`` columns on average; ``unembed(n)``
    adds ``n`` positions projected onto the vocabulary."""

    def __init__(self, model: Any) -> None:
        self.block = 2.0 * sum(o * i for o, i in linear_shapes(model))  # per token per block
        self.attn = 4.0 * max(model.n_heads, 1) * model.head_dim          # per token per block per context column
        self.vocab = 2.0 * model.vocab_size * model.d_model               # per projected position
        self.n_layers = model.n_layers
        self.total = 0.0

    def tokens(self, n: float, blocks: float | None = None, ctx: float = 0.0) -> Flops:
        blocks = self.n_layers if blocks is None else blocks
        self.total += n * blocks * (self.block + self.attn * ctx)
        return self

    def unembed(self, n: float) -> Flops:
        self.total += n * self.vocab
        return self


def ceiling_summary(flops: float, rates: dict[str, float], dtype: str, bare_s: float | None,
                    bare_what: str) -> dict[str, Any]:
    """The ceiling block of a benchmark's JSON: both bounds, and the smaller as ``seconds``."""
    flop_s = flops / (rates[dtype] * 1e9) if rates.get(dtype) else None
    options = {k: v for k, v in (("bare", bare_s), ("flops", flop_s)) if v}
    kind = min(options, key=options.get) if options else None
    return {"seconds": options.get(kind) if kind else None, "kind": kind, "bare_seconds": bare_s,
            "bare": bare_what, "flops": flops, "flop_seconds": flop_s, "matmul_gflops": rates, "dtype": dtype}


def summary(workload: str, emoscope_s: float, baselines_s: dict[str, float | None],
            ceiling: dict[str, Any] | None) -> dict[str, Any]:
    """The block ``run_all.py`` tabulates: every benchmark's JSON carries it as ``summary``."""
    c = ceiling["seconds"] if ceiling else None
    return {"workload": workload, "emoscope_s": emoscope_s,
            "baselines_s": {k: v for k, v in baselines_s.items() if v is not None},
            "ceiling_s": c, "ceiling_kind": ceiling["kind"] if ceiling else None,
            "fraction_of_ceiling": (c / emoscope_s) if c and emoscope_s else None,
            "speedup": {k: v / emoscope_s for k, v in baselines_s.items() if v and emoscope_s}}


def rates_for(model: Any, rows: int, min_seconds: float = 0.2) -> dict[str, float]:
    """``matmul_rate`` in float32 and bfloat16 (and the model's dtype if another), keyed by name."""
    import torch

    out = {}
    for dt in dict.fromkeys([torch.float32, torch.bfloat16, model.dtype]):
        out[str(dt).replace("torch.", "")] = round(matmul_rate(model, rows, dt, min_seconds=min_seconds), 2)
    return out
