"""Placebo runs: the pipeline's own false-positive rate, measured by decoys.

``emoscope placebo`` re-runs an analysis with every candidate — a concept vector, a head set, a
patch source — replaced by a *decoy*: one more random draw, drawn the way that stage's random
controls are drawn. A decoy has nothing to find, so every claim it ships is a false positive of
the whole pipeline: its search, its controls and the run's correction together. How often each
finding kind ships over N decoys is that rate, and it must stay near the level (5%).

A stage that supports decoys (``decoys: N`` in its section) runs its sweep once with the decoys
beside its random controls, then judges each decoy *as if it were the run's only candidate*: the
stage's own finding code on a view of the sweep in which the decoy takes the candidate's place,
and the run correction (``core.claims.correct_run``) over that decoy's findings alone (a real run
has at least those tests in its family, so this is the least correction it could get: the rate is
an upper bound). :func:`judge_decoys` turns those findings into the rows of the table
``placebo_decoys_<stage>``; the ``placebo`` stage collects every such table of the run into
``placebo_rates`` (:func:`ship_rates`) and the figure (:func:`rates_figure`).

>>> from emoscope.audit import Finding, Observation
>>> f = Finding(kind="other", observation=Observation(metric="m", value=1.0, p_value=0.5))
>>> judge_decoys("steer", {"decoy-0": [f]})[["stage", "decoy", "kind", "n_tested", "ships"]].values.tolist()
[['steer', 'decoy-0', 'other', 1, False]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from emoscope.audit import Finding
from emoscope.core.claims import correct_run
from emoscope.core.stats import binomial_interval

__all__ = ["DECOY_COLUMNS", "RATE_COLUMNS", "decoy_name", "judge_decoys", "ship_rates", "rates_figure",
           "alternate_kinds"]

DECOY_COLUMNS = ["stage", "decoy", "decoy_kind", "kind", "n_findings", "n_tested", "min_p", "verdicts", "ships"]
RATE_COLUMNS = ["kind", "stages", "n_decoys", "n_ship", "rate", "lo", "hi", "alpha"]


def decoy_name(i: int) -> str:
    """The name decoy ``i`` runs under (never a vector name a user would pick).

    >>> decoy_name(3)
    'decoy-3'
    """
    return f"decoy-{int(i)}"


def alternate_kinds(n: int, random_kind: str) -> list[str]:
    """The random kind of each of ``n`` decoys: the stage's kind, or alternating when it runs both.

    >>> alternate_kinds(3, "both")
    ['isotropic', 'covariance', 'isotropic']
    """
    kinds = ["isotropic", "covariance"] if random_kind == "both" else [random_kind]
    return [kinds[i % len(kinds)] for i in range(int(n))]


def judge_decoys(stage: str, decoys: Mapping[str, Sequence[Finding]], *, alpha: float = 0.05,
                 kinds: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per (decoy, finding kind): whether any finding of that kind ships once the run
    correction runs over the decoy's findings, with the smallest raw p and the verdicts."""
    rows = []
    for name, found in decoys.items():
        corrected = correct_run(list(found), alpha).findings
        by_kind: dict[str, list[Finding]] = {}
        for f in corrected:
            by_kind.setdefault(f.kind, []).append(f)
        for kind, fs in by_kind.items():
            ps = [f.observation.p_value for f in fs if f.observation.p_value is not None]
            rows.append({"stage": stage, "decoy": name, "decoy_kind": (kinds or {}).get(name, ""), "kind": kind,
                         "n_findings": len(fs), "n_tested": len(ps), "min_p": min(ps) if ps else np.nan,
                         "verdicts": "; ".join(str(f.verdict) for f in fs),
                         "ships": any(f.verdict == "ships" for f in fs)})
    return pd.DataFrame(rows, columns=DECOY_COLUMNS)


def ship_rates(decoys: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per finding kind: decoys judged, decoys with a claim that shipped, the rate with its exact
    (Clopper-Pearson) 95% interval.

    >>> d = pd.DataFrame({"stage": "steer", "decoy": ["a", "b"], "kind": "steering", "ships": [False, True]})
    >>> ship_rates(d)[["kind", "n_decoys", "n_ship", "rate"]].values.tolist()
    [['steering', 2, 1, 0.5]]
    """
    rows = []
    for kind, g in decoys.groupby("kind", sort=True):
        per = g.groupby(["stage", "decoy"])["ships"].any()
        n, k = int(per.size), int(per.sum())
        iv = binomial_interval(k, n)
        rows.append({"kind": kind, "stages": ", ".join(sorted(g["stage"].astype(str).unique())), "n_decoys": n,
                     "n_ship": k, "rate": iv.point, "lo": iv.lo, "hi": iv.hi, "alpha": alpha})
    return pd.DataFrame(rows, columns=RATE_COLUMNS)


def rates_figure(rates: pd.DataFrame) -> Any:
    """Ship rate per finding kind with its interval, against the level."""
    from emoscope.core.figures import new_figure

    fig = new_figure(6.0, 0.9 + 0.45 * max(1, len(rates)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rates))
    r = rates.reset_index(drop=True)
    ax.errorbar(r["rate"], y, xerr=[r["rate"] - r["lo"], r["hi"] - r["rate"]], fmt="o", color="#2c3e50", capsize=3)
    alpha = float(r["alpha"].iloc[0]) if len(r) else 0.05
    ax.axvline(alpha, color="#c0392b", ls="--", lw=1, label=f"level {alpha:g}")
    for i, row in r.iterrows():
        ax.text(1.0, i, f"  {int(row['n_ship'])}/{int(row['n_decoys'])}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=8)
    ax.set_yticks(y, list(r["kind"]))
    ax.set_xlim(0, max(0.25, float(r["hi"].max()) + 0.05) if len(r) else 0.25)
    ax.set_xlabel("share of decoys whose claim ships (95% interval)")
    ax.set_title("placebo: how often a decoy (one more random draw) ships", fontsize=9)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    return fig
