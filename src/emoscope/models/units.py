"""Batched decoding as work units (``emoscope.core.executor``): one unit per batch of rows.

``decode_units`` splits the rows of a ``decode_rows`` call into the chunks of ``batch_rows``
rows that ``decode_rows`` itself would run (so batching, the shared prompt prefill and the
greedy outputs are those of one call) and runs each chunk as a work unit: in process, or on
Ray workers that each load the model once. Every unit prefills the same prompts, so a unit
needs nothing from another. A unit's id hashes the model, the prompts, the window, the
sampling settings and the unit's rows (their prompts, seeds and edits).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emoscope.core.executor import Execution, Result, Task, Unit, run_units, unit_id
from emoscope.models.decode import Decoded, RowEdits, Sampling, decode_rows
from emoscope.models.interventions import Window

__all__ = ["decode_units"]


def _edits_to(edits: RowEdits, device: Any) -> RowEdits:
    """``edits`` with every tensor on ``device``."""
    return RowEdits(**{f.name: {k: v.to(device) for k, v in getattr(edits, f.name).items()}
                       for f in dataclasses.fields(RowEdits)})


@dataclass
class _Shared:
    prompts: list[list[int]]
    row_prompt: list[int]
    edits: RowEdits            # on the CPU; each unit moves its rows to the model's device
    window: Window
    max_new_tokens: int
    sampling: Sampling
    row_seeds: list[int]
    shared_prefix: list[int] | None
    first_value: Any = None
    share_prefill: bool | None = None
    clean_perplexity: bool = False


def _decode_unit(model: Any, shared: _Shared, rows: tuple[int, int]) -> Result:
    lo, hi = rows
    idx = torch.arange(lo, hi)
    first = np.full(hi - lo, np.nan, dtype=np.float64)

    def first_step(sub: torch.Tensor, logits: torch.Tensor) -> None:
        first[sub.numpy()] = shared.first_value(logits).double().cpu().numpy()

    dec = decode_rows(model, shared.prompts, shared.row_prompt[lo:hi], _edits_to(shared.edits.take(idx), model.device),
                      shared.window, max_new_tokens=shared.max_new_tokens, sampling=shared.sampling,
                      row_seeds=shared.row_seeds[lo:hi], batch_rows=hi - lo,
                      shared_prefix=None if shared.shared_prefix is None else shared.shared_prefix[lo:hi],
                      first_step=first_step if shared.first_value is not None else None,
                      share_prefill=shared.share_prefill, clean_perplexity=shared.clean_perplexity)
    extra = {"perplexity": dec.perplexity} if shared.clean_perplexity else {}
    return {**extra, "first": first, "tokens": np.asarray([t for toks in dec.tokens for t in toks], dtype=np.int64),
            "lengths": np.asarray([len(t) for t in dec.tokens], dtype=np.int64),
            "gaps": np.concatenate([np.asarray(g, np.float32) for g in dec.gaps]) if dec.gaps else np.zeros(0, np.float32),
            "seconds": np.asarray(dec.seconds), "batches": np.asarray(dec.batches),
            "prefill_rows": np.asarray(dec.prefill_rows)}


def decode_units(model: Any, prompts: Sequence[Sequence[int]], row_prompt: Sequence[int], edits: RowEdits,
                 window: Window, *, max_new_tokens: int, sampling: Sampling | None = None,
                 row_seeds: Sequence[int] | None = None, batch_rows: int = 256,
                 shared_prefix: Sequence[int] | None = None, share_prefill: bool | None = None,
                 first_value: Any = None, clean_perplexity: bool = False,
                 execution: Execution | None = None, name: str = "decode", progress: bool = False) -> Decoded:
    """``decode_rows`` over every row, one work unit per ``batch_rows`` rows, on ``execution``
    (default: in process, nothing stored). Returns the same ``Decoded`` as one ``decode_rows``
    call (``seconds``, ``prefill_rows``: summed over the units; ``batches``: the units).

    ``first_value(logits) -> (rows,)``, when given, reduces the float32 logits of the first
    generated token (the next-token view of the same edited forward) to one number per row inside
    the unit (a worker never ships vocabulary-sized logits); ``Decoded.first`` holds them. It must
    be picklable (a module-level function or a ``functools.partial`` of one) to run on Ray.
    It is part of the units' ids through its name and arguments. ``clean_perplexity``: each unit
    also scores its rows' outputs under the unedited model (``decode_rows``; ``Decoded.perplexity``)."""
    n = len(row_prompt)
    sampling = sampling if sampling is not None else Sampling()
    seeds = [int(s) for s in row_seeds] if row_seeds is not None else [0] * n
    cpu = _edits_to(edits, "cpu")
    shared = _Shared([list(map(int, p)) for p in prompts], [int(r) for r in row_prompt], cpu, window,
                     int(max_new_tokens), sampling, seeds, None if shared_prefix is None else [int(x) for x in shared_prefix],
                     first_value, share_prefill, bool(clean_perplexity))
    fingerprint = unit_id(name, getattr(model, "name", ""), getattr(model, "weights_sha256", ""), shared.prompts,
                          window.spec, shared.max_new_tokens, dataclasses.astuple(sampling), _describe(first_value),
                          share_prefill, *(["clean_perplexity"] if clean_perplexity else []))
    units = []
    for lo in range(0, n, batch_rows):
        hi = min(lo + batch_rows, n)
        idx = torch.arange(lo, hi)
        sub = cpu.take(idx)
        content = [shared.row_prompt[lo:hi], seeds[lo:hi],
                   None if shared.shared_prefix is None else shared.shared_prefix[lo:hi],
                   {f.name: getattr(sub, f.name) for f in dataclasses.fields(RowEdits)}]
        units.append(Unit(unit_id(fingerprint, content), (lo, hi), size=hi - lo))
    results = run_units(Task(name, _decode_unit, shared, state=model), units, execution, progress=progress)
    tokens: list[list[int]] = []
    gaps: list[np.ndarray] = []
    first = np.concatenate([r["first"] for r in results]) if results else np.zeros(0)
    seconds, prefill = 0.0, 0
    for r in results:
        ends = np.cumsum(r["lengths"])
        starts = ends - r["lengths"]
        tokens += [r["tokens"][a:b].tolist() for a, b in zip(starts, ends, strict=True)]
        gaps += [r["gaps"][a:b] for a, b in zip(starts, ends, strict=True)]
        seconds += float(r["seconds"])
        prefill += int(r["prefill_rows"])
    return Decoded(tokens=tokens, gaps=gaps, seconds=seconds, prefill_rows=prefill, batches=len(units),
                   first=first if first_value is not None else None,
                   perplexity=np.concatenate([r["perplexity"] for r in results]) if clean_perplexity and results
                   else None)


def _describe(fn: Any) -> Any:
    """What identifies a ``first_value`` reducer in a unit id: its qualified name and, for a
    ``functools.partial``, its arguments."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        return [_describe(fn.func), list(fn.args), dict(fn.keywords)]
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
