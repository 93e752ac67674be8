"""``strengths: auto``: a short pilot finds where a vector stops giving intact output, and the
strength grid of the sweep is built around that point.

The pilot is one small batched ``SteeringSweep``: the vector and its negation at each layer over a
geometric ladder of strengths (``LADDER``, 1/16 .. 4 in the sweep's unit, doubling), on a few
prompts (``PILOT_PROMPTS``), greedy, with no random controls and only the scorers the broken
regimes read (repetition, perplexity, script; ``REGIME_SCORERS``). It generates as many tokens as
the sweep will (``max_new_tokens``): a loop that shows only after 16 tokens is a break the sweep
sees, so a shorter pilot places the break too high (gemma3-270m, at 16 tokens, looked intact at
strengths where at 32 it loops). Every output gets its regime from the sweep's own rules
(``regimes.classify_regimes``), and the shares are read as the sweep reads them
(``regimes.regime_shares``).

**Break point** of a layer and sign: the smallest rung from which on a strict majority of the
pilot outputs is broken (repetitive collapse or explosive, ``regimes.BROKEN``) at that rung *and
every larger one tried*. A lone broken rung below an intact one is the noise of a few prompts, not
the break. Prompts whose unsteered output is already broken tell nothing about where steering
breaks it and are left out of the shares. A layer and sign that never breaks on the ladder has no
break point (the note says so).

**Grid** (``grid_from_breaks``): with ``lo`` the smallest break point over layers and signs and
``hi`` the largest, the positive strengths are ``lo/8, lo/4, lo/2`` (below every break point,
doubling: no effect at the bottom, the surgical regime, where the vector has one, just below the
break) and ``lo, 2 lo, ...`` up to ``hi`` (every layer's own break point is on the grid, so every
layer has a strength where it broke in the pilot), mirrored for the negated vector. One grid serves
every layer because the sweep runs one grid. When every layer and sign breaks at the same rung
that is 4 strengths per sign, 8 non-zero cells per layer, the size of the old fixed default; the
three regimes a sweep exists to find are bracketed instead of guessed. Without any break point the
grid ends at the ladder's top rung.

>>> grid_from_breaks({(10, 1): 0.5, (10, -1): 0.5, (15, 1): 1.0, (15, -1): 0.5})
[-1.0, -0.5, -0.25, -0.125, -0.0625, 0.0625, 0.125, 0.25, 0.5, 1.0]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BeforeValidator

from emoscope.steering.regimes import BROKEN, RegimeThresholds, regime_shares

__all__ = ["AUTO", "Strengths", "check_strengths", "LADDER", "PILOT_PROMPTS", "PILOT_TOKENS", "REGIME_SCORERS",
           "Pilot", "run_pilot", "break_points", "grid_from_breaks", "pilot_prompts"]

AUTO = "auto"
#: the pilot's strengths (in the sweep's unit), doubling: 1/16 .. 4
LADDER = tuple(2.0 ** k for k in range(-4, 3))
PILOT_PROMPTS = 6  # a small model loops unsteered on about one prompt in four; those are left out
PILOT_TOKENS = 32  # the sweep's default max_new_tokens; the stage passes the sweep's own
#: the scorers whose columns the broken regimes read, and the column each gives the pilot's target
REGIME_SCORERS = {"script": "script_leakage", "repetition": "rep4", "perplexity": "perplexity"}
_BELOW = 3  # grid strengths below the smallest break point, each half the next


def check_strengths(value: Any) -> Any:
    """A strengths option: ``"auto"``, or a non-empty list of finite numbers (one number is a
    list of one). Anything else is a ``ValueError`` with one line saying what is accepted.

    >>> check_strengths("auto"), check_strengths([-1, 0, "2"]), check_strengths(0.5)
    ('auto', [-1.0, 0.0, 2.0], [0.5])
    >>> check_strengths("big")
    Traceback (most recent call last):
    ...
    ValueError: strengths must be 'auto' or a list of numbers such as [-1, -0.5, 0, 0.5, 1]
    """
    wanted = "strengths must be 'auto' or a list of numbers such as [-1, -0.5, 0, 0.5, 1]"
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        raise ValueError(wanted)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(wanted)
    out = []
    for v in value:
        try:
            s = float(v) if not isinstance(v, bool) else None
        except (TypeError, ValueError):
            s = None
        if s is None:
            raise ValueError(wanted)
        if not np.isfinite(s):
            raise ValueError("strengths must be finite numbers")
        out.append(s)
    return out


#: the type of a ``strengths`` option: ``"auto"`` (the pilot chooses) or explicit strengths
Strengths = Annotated[list[float] | Literal["auto"], BeforeValidator(check_strengths)]


def pilot_prompts(prompts: Sequence[str], n_used: int, k: int = PILOT_PROMPTS) -> list[str]:
    """The pilot's prompts: the ``k`` prompts after the ``n_used`` the sweep runs, so the grid is
    not chosen on the prompts the finding selects its cell on and reports; the first ``k`` when the
    set has no more.

    >>> pilot_prompts(list("abcdefg"), 2, k=4), pilot_prompts(list("abc"), 3, k=4)
    (['c', 'd', 'e', 'f'], ['a', 'b', 'c'])
    """
    rest = list(prompts[n_used:])
    return rest[:k] if len(rest) >= k else list(prompts[:k])


@dataclass
class Pilot:
    """What the pilot found: the ``grid`` (non-zero strengths, symmetric when it ran the negated
    vector), ``breaks[(layer, sign)]`` (the break point, ``None`` where the ladder never broke it),
    ``table`` (per layer and signed strength tried: ``n`` prompts counted, ``intact_share``,
    ``collapse_share``, ``explosive_share``, the ``break_point`` of that layer and sign, and
    ``in_grid``), and its cost."""

    grid: list[float]
    breaks: dict[tuple[int, int], float | None]
    table: pd.DataFrame
    n_prompts: int
    n_left_out: int  # prompts whose unsteered output was already broken
    max_new_tokens: int
    rows: int
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """Lines for the run's notes: the cost, the break points per layer, the grid chosen."""
        rungs = self.meta.get("ladder", LADDER)
        ladder = ", ".join(f"{s:g}" for s in rungs)
        out = [f"strengths auto: pilot of {self.rows} generations ({self.n_prompts} prompts x {self.max_new_tokens} "
               f"tokens, ladder {ladder} and its negation, no random controls) in {self.seconds:.1f} s"]
        if self.n_left_out:
            out.append(f"strengths auto: {self.n_left_out} pilot prompt(s) left out: their unsteered output is "
                       "already broken")
        for layer in sorted({layer for layer, _ in self.breaks}):
            parts = []
            for sign in (1, -1):
                if (layer, sign) in self.breaks:
                    b = self.breaks[layer, sign]
                    where = f"breaks at {b:g}" if b is not None else f"never broke up to {max(rungs):g}"
                    parts.append(f"{'+' if sign > 0 else '-'} {where}")
            out.append(f"strengths auto: layer {layer}: " + "; ".join(parts))
        out.append("strengths auto: grid " + ", ".join(f"{s:g}" for s in self.grid)
                   + " (3 strengths below the smallest break point, doubling, then every rung up to the largest)")
        return out


def break_points(table: pd.DataFrame) -> dict[tuple[int, int], float | None]:
    """``{(layer, sign): break point}`` from a pilot table (``layer``, signed ``strength``,
    ``intact_share``): the smallest rung from which on the broken share (``1 - intact_share``) is
    above one half at every larger rung; ``None`` when the top rung is not broken.

    >>> t = pd.DataFrame({"layer": 3, "strength": [0.25, 0.5, 1.0, 2.0], "intact_share": [0.0, 1.0, 0.25, 0.0]})
    >>> break_points(t)
    {(3, 1): 1.0}
    """
    out: dict[tuple[int, int], float | None] = {}
    for (layer, sign), g in table.assign(sign=np.sign(table["strength"]).astype(int)).groupby(["layer", "sign"]):
        if sign == 0:
            continue
        g = g.assign(mag=g["strength"].abs()).sort_values("mag")
        broken = (1.0 - g["intact_share"].to_numpy(float)) > 0.5
        b = None
        for i in range(len(g) - 1, -1, -1):  # from the top rung down, while it stays broken
            if not broken[i]:
                break
            b = float(g["mag"].iloc[i])
        out[int(layer), int(sign)] = b
    return out


def _nice(x: float) -> float:
    return float(f"{x:.6g}")  # exact for the doubling ladder down to 2**-10


def grid_from_breaks(breaks: Mapping[tuple[int, int], float | None], ladder: Sequence[float] = LADDER,
                     negate: bool = True) -> list[float]:
    """The sweep's non-zero strengths from the break points (module docstring): ``lo/8, lo/4,
    lo/2`` and ``lo, 2 lo, ...`` up to ``hi``, mirrored when ``negate``. A missing break point
    counts as the ladder's top rung.

    >>> grid_from_breaks({(5, 1): 0.25, (5, -1): None})
    [-4.0, -2.0, -1.0, -0.5, -0.25, -0.125, -0.0625, -0.03125, 0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0]
    >>> grid_from_breaks({(5, 1): 0.5}, negate=False)
    [0.0625, 0.125, 0.25, 0.5]
    """
    top = float(max(ladder))
    points = [top if b is None else float(b) for b in breaks.values()] or [top]
    lo, hi = min(points), max(points)
    pos = [lo / 2.0 ** k for k in range(_BELOW, 0, -1)]
    s = lo
    while s < hi * (1 + 1e-9):
        pos.append(s)
        s *= 2.0
    if pos[-1] < hi * (1 - 1e-9):  # hi off the doubling from lo (a ladder that is not doubling)
        pos.append(hi)
    pos = sorted({_nice(x) for x in pos})
    return sorted({*pos, *([-x for x in pos] if negate else [])})


def _execution(execution: Any) -> Any:
    """The run's execution with its own unit store (``.../units/STAGE/pilot``), so a resumed run
    reads the pilot's units back and chooses the same grid."""
    if execution is None or getattr(execution, "root", None) is None:
        return execution
    return dataclasses.replace(execution, root=Path(execution.root) / "pilot")


def run_pilot(model: Any, vector: Any, layers: Sequence[int], prompts: Sequence[str], *, unit: str = "token_norm",
              positions: str = "generated", mode: str = "add", chat: bool | str = "auto",
              scorers: Sequence[Any] = tuple(REGIME_SCORERS), ladder: Sequence[float] = LADDER,
              max_new_tokens: int = PILOT_TOKENS, negate: bool = True, seed: int = 0, seeds: Sequence[int] = (0,),
              temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, batch_rows: int = 256,
              thresholds: RegimeThresholds | None = None, execution: Any = None, progress: bool = False) -> Pilot:
    """Run the pilot for ``vector`` at ``layers`` on ``prompts`` and choose the sweep's grid.

    ``scorers``: the sweep's scorers; the pilot runs those of them the broken regimes read
    (``REGIME_SCORERS``), so it judges breakage as the sweep will. Deterministic: greedy unless
    ``temperature`` (then seeded by ``seeds[0]``), and with a run's ``execution`` its units are
    stored (``.../pilot``), so ``--resume`` gets the same grid.

    >>> pilot = run_pilot(model, joy, [10, 15], prompts[:4])          # doctest: +SKIP
    >>> pilot.grid                                                      # doctest: +SKIP
    [-0.5, -0.25, -0.125, -0.0625, 0.0625, 0.125, 0.25, 0.5]
    """
    from emoscope.steering.sweep import SteeringSweep

    names = [str(s) for s in scorers]
    use = [s for s in REGIME_SCORERS if s in names]
    target = REGIME_SCORERS[use[0]] if use else "pilot"  # no scorer: a NaN column (nothing can break)
    t0 = time.perf_counter()
    sweep = SteeringSweep(model, vector, layers, list(ladder), list(prompts), list(seeds)[:1], max_new_tokens,
                          positions=positions, mode=mode, unit=unit, n_random=0, seed=seed, negate=negate,
                          temperature=temperature, top_k=top_k, top_p=top_p, chat=chat, batch_rows=batch_rows,
                          scorers=use, target=target, thresholds=thresholds, progress=progress,
                          execution=_execution(execution))
    res = sweep.run()
    seconds = time.perf_counter() - t0
    t = res.table
    base = t[t["kind"] == "baseline"]
    ok = set(base.loc[~base["regime"].isin(BROKEN), "prompt_id"])
    shares = regime_shares(t, "vector")  # on the prompts whose unsteered output is intact
    table = pd.DataFrame({"layer": shares["layer"].astype(int), "strength": shares["strength"].astype(float),
                          "n": shares["n"].astype(int),
                          "intact_share": 1.0 - shares[list(BROKEN)].sum(axis=1),
                          "collapse_share": shares["repetitive collapse"], "explosive_share": shares["explosive"]},
                         columns=["layer", "strength", "n", "intact_share", "collapse_share", "explosive_share"])
    if ok:
        breaks = break_points(table)
    else:  # every unsteered output already broken: nothing to measure the break against
        breaks = {(int(layer), sign): None for layer in sweep.layers for sign in ((1, -1) if negate else (1,))}
    grid = grid_from_breaks(breaks, ladder, negate=negate)
    sign = np.sign(table["strength"].to_numpy(float)).astype(int)
    table["break_point"] = [breaks.get((int(layer), int(sg))) for layer, sg in zip(table["layer"], sign, strict=True)]
    table["break_point"] = table["break_point"].astype(float)
    table["in_grid"] = [any(abs(s - g) <= 1e-9 * max(1.0, abs(g)) for g in grid) for s in table["strength"]]
    return Pilot(grid=grid, breaks=breaks, table=table, n_prompts=len(prompts), n_left_out=len(prompts) - len(ok),
                 max_new_tokens=max_new_tokens, rows=len(t), seconds=seconds,
                 meta={"ladder": [float(x) for x in ladder], "decode_seconds": res.meta["decode_seconds"],
                       "scorers": use, "unit": unit})
