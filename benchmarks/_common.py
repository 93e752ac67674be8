"""Shared benchmark helpers: thread pinning, timing, JSON output, bench prompts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
