"""The injection sweep's cells as work units (``emoscope.core.executor``).

A unit is ``batches_per_unit`` consecutive batches of ``score_cells`` (one layer's cells,
sorted as ``cell_batches`` sorts them), so it keeps the batching, the shared prefix KV cache
and the early-block replay; the batches are exactly those of one ``score_cells`` call over
every cell, so the numbers are too. The prefix cache and the uninjected pass over the trials
are computed once per process (per worker on Ray) and reused by every unit it runs. A unit's
id hashes the model, the trials, the vector bank, the ablation directions, the answer tokens,
the batch size and the unit's cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoscope.core.executor import Execution, Result, Task, Unit, run_units, unit_id
from emoscope.introspection.cells import (
    CellScorer,
    CellScores,
    Injection,
    cell_batches,
    shared_prefix_length,
)
from emoscope.introspection.measure import AnswerTokens
from emoscope.introspection.trials import Trial

__all__ = ["score_units", "cell_units", "BATCHES_PER_UNIT"]

BATCHES_PER_UNIT = 2


@dataclass
class _Shared:
    """What every unit of one sweep needs; the scorer is built in each process, never shipped."""

    trials: list[Trial]
    bank: np.ndarray
    tokens: AnswerTokens
    ablate: dict[int, np.ndarray] | None
    batch_size: int
    scorer: Any = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "scorer": None}


def _score_unit(model: Any, shared: _Shared, cells: list[Injection]) -> Result:
    if shared.scorer is None or shared.scorer.model is not model:
        shared.scorer = CellScorer(model, shared.trials, shared.bank, shared.tokens, ablate=shared.ablate)
    s = shared.scorer.score(cells, batch_size=shared.batch_size)
    return {"logit_diff": s.logit_diff, "p_yes": s.p_yes, "p_no": s.p_no, "lens": s.lens}


def cell_units(model: Any, trials: Sequence[Trial], cells: Sequence[Injection], bank: np.ndarray,
               tokens: AnswerTokens, *, batch_size: int, ablate: dict[int, np.ndarray] | None = None,
               batches_per_unit: int = BATCHES_PER_UNIT) -> tuple[list[Unit], list[list[int]]]:
    """The units of a sweep and, per unit, the indices of its cells in ``cells``."""
    fingerprint = unit_id("introspect-cells", getattr(model, "name", ""), getattr(model, "weights_sha256", ""),
                          [[list(t.ids), t.window_start] for t in trials], bank, list(tokens.ids),
                          ablate or {}, batch_size)
    batches = cell_batches(cells, trials, batch_size, skip=True)
    groups: list[list[int]] = []
    for b in batches:
        layer = cells[b[0]].layer
        prev = groups[-1] if groups else None
        if prev is not None and cells[prev[0]].layer == layer and len(prev) < batches_per_unit * batch_size:
            prev.extend(b)
        else:
            groups.append(list(b))
    units = []
    for idx in groups:
        part = [cells[i] for i in idx]
        units.append(Unit(unit_id(fingerprint, part), part, size=len(part)))
    return units, groups


def score_units(model: Any, trials: Sequence[Trial], cells: Sequence[Injection], bank: np.ndarray,
                tokens: AnswerTokens, *, batch_size: int = 64, ablate: dict[int, np.ndarray] | None = None,
                execution: Execution | None = None, progress: bool = False) -> CellScores:
    """``score_cells`` over every cell, run as work units on ``execution`` (default: in process,
    nothing stored), merged back into the order of ``cells``."""
    bank = np.asarray(bank, dtype=np.float32)
    ablate = {int(k): np.asarray(v, dtype=np.float32) for k, v in ablate.items()} if ablate else None
    units, groups = cell_units(model, trials, cells, bank, tokens, batch_size=batch_size, ablate=ablate)
    shared = _Shared(list(trials), bank, tokens, ablate, batch_size)
    task = Task("introspect-cells", _score_unit, shared, state=model)
    results = run_units(task, units, execution, progress=progress)
    n = len(cells)
    out = CellScores(np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32),
                     np.empty((n, model.n_layers), np.float32), None, shared_prefix_length(trials))
    for idx, r in zip(groups, results, strict=True):
        out.logit_diff[idx], out.p_yes[idx], out.p_no[idx], out.lens[idx] = (
            r["logit_diff"], r["p_yes"], r["p_no"], r["lens"])
    shared.scorer = None
    return out
