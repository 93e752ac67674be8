"""Shared benchmark helpers: thread pinning, timing, logging, load average, JSON output, bench
prompts, and the greedy-agreement check (outputs trimmed at end-of-sequence, a difference
excused only at a near-tie of the reference)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


NEAR_TIE = 1e-3  # a greedy difference whose reference logit gap is below this is a floating-point near-tie


def sayer(name: str) -> Callable[[str], None]:
    """``say(msg)``: a timestamped progress line on stderr, tagged ``[name bench HH:MM:SS]``."""

    def say(msg: str) -> None:
        print(f"[{name} bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return say


def load_avg() -> list[float]:
    """The 1, 5 and 15 minute load averages (other jobs on the machine), or ``[]``."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def trim(seq: Sequence[int], stop: Collection[int]) -> list[int]:
    """Token ids through the first end-of-sequence token."""
    out = []
    for t in seq:
        out.append(int(t))
        if int(t) in stop:
            break
    return out


def agreement(got_rows: Sequence[Sequence[int]], ref_rows: Sequence[Sequence[int]], stop: Collection[int],
              gap: Callable[[int, int, int], float], near_tie: float = NEAR_TIE) -> dict[str, Any]:
    """Row-by-row greedy agreement of ``got_rows`` with ``ref_rows`` (both trimmed at ``stop``).

    A row that differs counts as ``near_tie`` when ``gap(row, step, got_token)``, the reference's
    logit gap at the first differing step (NaN when unknown), is below ``near_tie``; otherwise as a
    mismatch (the first ten are listed).
    """
    same = near = 0
    bad = []
    for r, (g, ref) in enumerate(zip(got_rows, ref_rows, strict=True)):
        g, ref = trim(g, stop), trim(ref, stop)
        if g == ref:
            same += 1
            continue
        step = next((i for i, (a, b) in enumerate(zip(g, ref, strict=False)) if a != b), min(len(g), len(ref)))
        d = float(gap(r, step, g[step])) if step < min(len(g), len(ref)) else float("nan")
        if d < near_tie:
            near += 1
        else:
            bad.append({"row": r, "step": step, "gap": d})
    return {"rows": len(got_rows), "identical": same, "near_tie": near, "mismatch": len(bad), "mismatches": bad[:10]}


def pin_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def write_json(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    from emoscope._io import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, payload)
    print(json.dumps(payload, indent=2))
    return path


def bench_prompts(tokenizer, n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    """``n`` prompts of ``lo``–``hi`` tokens, built by joining built-in sentences."""
    import random

    from emoscope.datasets import load_dataset

    pool = load_dataset("emotions-basic").texts + load_dataset("neutral-corpus").texts
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        target = rng.randint(lo, hi)
        words: list[str] = []
        while len(tokenizer(" ".join(words))["input_ids"]) < target:
            words.extend(rng.choice(pool).split())
        ids = tokenizer(" ".join(words))["input_ids"][:target]
        out.append(tokenizer.decode(ids).strip())
    return out
