"""Findings of kind ``heads``.

Ablation and patching. One finding per method (``zero``, ``mean``, ``patch``) and metric asked
for (``proj_gen`` and ``target_score`` by default). Nothing is chosen among cells here: every
(method, metric) that ran is a tested hypothesis, each records its deciding p whether or not it
makes a claim, and the run-level Holm correction (``emoscope.core.claims``) runs over all of them.
The heads themselves, when they are ``top:K`` of a screen, were chosen on the screening texts (a
labelled dataset), never on the generation prompts the effect is measured on (``n_searched`` is
1; the note names the screen). Observation: the chosen set's mean change minus the mean over the
``k`` random sets, with the 95% prediction interval of one more set
(``emoscope.heads.effects``), ``n`` = prompts, ``unit="prompts"``, ``p_floor`` the smallest p the
deciding test can give. Controls:

- ``random_heads``: the unit is the head set: the chosen set's mean change against the ``k``
  random sets' (``core.draws.draw_test``); passes when its p < ``alpha``; unjudged when the
  design cannot reach ``alpha`` (the note says how many sets would);
- ``multi_token_outputs``: the chosen configuration's outputs average at least
  ``MIN_MEAN_TOKENS`` generated tokens;
- ``seed_spread``: :func:`emoscope.heads.effects.seed_spread`.

Screening. One observation (no claim: a screen shows where a direction is written, not what
removing it does): the top head's difference with its Holm-adjusted permutation p over the heads
screened (``n_searched``), ``n`` = texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from emoscope.core.draws import DEFAULT_DRAW_TEST
from emoscope.heads.effects import effect_row, metric_label, seed_spread
from emoscope.steering.regimes import MIN_MEAN_TOKENS

__all__ = ["intervention_findings", "screen_finding", "draws_figures"]
_VERB = {"zero": "zero-ablating", "mean": "mean-ablating", "patch": "patching from the source"}


def intervention_findings(table: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str], *, heads: str,
                          chosen_from: str, alpha: float = 0.05, alternative: str = "two-sided", seed: int = 0,
                          max_new_tokens: int | None = None, match: str = "the same number per layer", n_boot: int = 2000,
                          what: str = "", test: str = DEFAULT_DRAW_TEST) -> tuple[list[Any], list[str]]:
    """Findings and one summary line per (method, metric) of an ablation or patching sweep table.
    ``match``: how the random sets were matched to the chosen heads, in words (``select.describe_match``)."""
    from emoscope.audit import Control, Finding, Observation

    findings, lines = [], []
    chosen_rows = table[table["kind"] == "chosen"]
    n_heads = int(chosen_rows["n_heads"].iloc[0]) if len(chosen_rows) else 0
    for method in methods:
        mt = chosen_rows[chosen_rows["method"] == method]
        mean_tokens = float(mt["n_tokens"].mean()) if len(mt) else 0.0
        multi = bool((max_new_tokens is None or max_new_tokens > 1) and mean_tokens >= MIN_MEAN_TOKENS)
        for metric in metrics:
            if metric not in table or not table[metric].notna().any():
                continue
            row = effect_row(table, method, metric, alternative=alternative, n_boot=n_boot, seed=seed, test=test,
                             alpha=alpha)
            t = row["draws"]
            spread = seed_spread(table, method, metric, seed=seed)
            k = row["k"]
            against = f"random sets of {n_heads} heads ({match}, never a chosen head)"
            note = (t.describe(against, searched=False)
                    + f". The chosen heads' own change: {row['mean_change']:.3g} [{row['change_lo']:.3g}, "
                      f"{row['change_hi']:.3g}] over {row['n']} prompts")
            controls = [
                Control(name="random_heads", value=float(t.p), passed=t.passed, threshold=alpha, note=note),
                Control(name="multi_token_outputs", value=mean_tokens, threshold=f">= {MIN_MEAN_TOKENS:g} tokens",
                        passed=multi, note="mean generated tokens of the chosen heads' outputs"
                        + (f" (up to {max_new_tokens})" if max_new_tokens else "")
                        + "; the effect is measured on multi-token text, not one next-token step"),
                Control(name="seed_spread", value=spread.sd, passed=spread.passed,
                        threshold=f"same sign, sd < {spread.sd_share:g} x |mean|", note=spread.note()),
            ]
            verb = _VERB.get(method, method)
            label = metric_label(metric)
            claim = None
            if t.passed:
                way = "raises" if row["effect"] > 0 else "lowers"
                claim = (f"{verb} heads {heads} {way} the {label} more than {verb} {n_heads} random heads "
                         f"would ({what}{row['n']} prompts, against {k} random sets; heads {chosen_from})")
            interval = ((float(row["effect_lo"]), float(row["effect_hi"]))
                        if np.isfinite([row["effect_lo"], row["effect_hi"]]).all() else None)
            findings.append(Finding(kind="heads", claim=claim, controls=controls, observation=Observation(
                metric=f"{label} change, {verb} heads {heads} minus the mean of {k} random sets of the same count "
                       f"(heads {chosen_from}; interval: 95% prediction range of one more random set)",
                value=float(row["effect"]), interval=interval, n=int(row["n"]), unit="prompts",
                p_value=float(t.p) if np.isfinite(t.p) else None, p_floor=float(t.floor), n_searched=1)))
            lines.append(f"{method} {metric}: effect {row['effect']:.3g} [{row['effect_lo']:.3g}, "
                         f"{row['effect_hi']:.3g}] vs {k} random sets, p={t.p:.2g}, n={row['n']} prompts, "
                         f"rank {row['rank']}/{k + 1}")
    return findings, lines


def draws_figures(table: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str], *,
                  alternative: str = "two-sided", test: str = DEFAULT_DRAW_TEST, alpha: float = 0.05) -> dict[Any, Any]:
    """One figure per (method, metric) with random sets, in the order ``intervention_findings``
    records its findings: each random set's mean change as a dot, the chosen set as a line."""
    from emoscope.core.draws import draws_figure

    out = {}
    for method in methods:
        for m in metrics:
            if m not in table or not table[m].notna().any():
                continue
            t = effect_row(table, method, m, alternative=alternative, n_boot=0, test=test, alpha=alpha)["draws"]
            if t.k:
                out[method, m] = draws_figure({metric_label(m): t}, title=f"{_VERB.get(method, method)}: each random "
                                              "set (dots) and the chosen heads (line)",
                                              xlabel="mean change over prompts")
    return out


def screen_finding(table: pd.DataFrame, meta: dict, *, alpha: float = 0.05) -> Any:
    """The screen as one observation: the top head's difference, Holm-adjusted p, heads searched."""
    from emoscope.audit import Control, Finding, Observation

    top = table.sort_values("rank").iloc[0]
    n_sig = int((table["p_holm"] < alpha).sum())
    return Finding(kind="heads", controls=[
        Control(name="null_distribution", value=float(top["p_holm"]), threshold=alpha,
                passed=bool(top["p_holm"] < alpha),
                note=f"{meta['n_permutations']} label permutations (p floor {meta['min_p']:.2g}), Holm across "
                     f"{len(table)} heads; {n_sig} heads have p_holm < {alpha:g}")],
        observation=Observation(
            metric=f"head {int(top['layer'])}.{int(top['head'])}: mean direct contribution along the "
                   f"{meta['emotion']} vector (layer {int(top['direction_layer'])}) on {meta['emotion']} minus "
                   f"{meta['baseline']} texts, top of {len(table)} heads screened ({meta['alternative']})",
            value=float(top["diff"]), n=int(meta["n_texts"]), unit="texts",
            p_value=float(top["p_holm"]), n_searched=int(len(table))))
