"""Findings of kind ``heads``.

Ablation and patching. One finding per method (``zero``, ``mean``, ``patch``) and metric asked
for (``proj_gen`` and ``target_score`` by default). Nothing is chosen among cells here: every
(method, metric) that ran is reported, on every prompt, and the run-level Holm correction across
claims (``emoscope.core.claims``) accounts for their number. The heads themselves, when they are
``top:K`` of a screen, were chosen on the screening texts (a labelled dataset), never on the
generation prompts the effect is measured on, so the measurement is held out from the choice
(``n_searched`` is 1; the note names the screen). Observation: the effect (chosen change minus
mean random change, per prompt), its bootstrap interval, the per-prompt paired Wilcoxon p,
``n`` = prompts, ``unit="prompts"``. Controls:

- ``random_heads``: passes when the paired p < ``alpha`` and the interval excludes 0 (the
  direction named by ``alternative``); the note gives the chosen set's rank among the ``k``
  random sets and the floor ``1 / (k + 1)`` of that rank p;
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

from emoscope.heads.effects import effect_row, metric_label, seed_spread

__all__ = ["intervention_findings", "screen_finding", "MIN_MEAN_TOKENS"]

MIN_MEAN_TOKENS = 2.0
_VERB = {"zero": "zero-ablating", "mean": "mean-ablating", "patch": "patching from the source"}


def _significant(row: dict, alpha: float) -> bool:
    p, lo, hi = row["p_value"], row["effect_lo"], row["effect_hi"]
    if not (np.isfinite(p) and p < alpha and np.isfinite(lo) and np.isfinite(hi)):
        return False
    alt = row.get("alternative", "two-sided")
    return bool(lo > 0 if alt == "greater" else hi < 0 if alt == "less" else (lo > 0 or hi < 0))


def intervention_findings(table: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str], *, heads: str,
                          chosen_from: str, alpha: float = 0.05, alternative: str = "two-sided", seed: int = 0,
                          max_new_tokens: int | None = None, match: str = "the same number per layer", n_boot: int = 2000,
                          what: str = "") -> tuple[list[Any], list[str]]:
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
            row = effect_row(table, method, metric, alternative=alternative, n_boot=n_boot, seed=seed)
            spread = seed_spread(table, method, metric, seed=seed)
            ok = _significant(row, alpha)
            k = row["k"]
            against = (f"{k} random sets of {n_heads} heads ({match}"
                       f", never a chosen head)")
            note = (f"per-prompt paired Wilcoxon ({row['alternative']}) of the chosen heads' change minus the mean change "
                    f"of {against}, on {row['n']} prompts; passes when p < {alpha:g} and the interval excludes 0. The "
                    f"chosen set's mean change ranks {row['rank']} of {k + 1} among the random sets' (rank p "
                    f"{row['rank_p']:.2g}; a rank among {k} random sets cannot go below p = {row['floor']:.2g})")
            controls = [
                Control(name="random_heads", value=float(row["p_value"]), passed=ok, threshold=alpha, note=note),
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
            if ok:
                way = "raises" if row["effect"] > 0 else "lowers"
                claim = (f"{verb} heads {heads} {way} the {label} more than {verb} {n_heads} random heads "
                         f"({what}paired over {row['n']} prompts; heads {chosen_from})")
            interval = ((float(row["effect_lo"]), float(row["effect_hi"]))
                        if np.isfinite([row["effect_lo"], row["effect_hi"]]).all() else None)
            findings.append(Finding(kind="heads", claim=claim, controls=controls, observation=Observation(
                metric=f"{label} change, {verb} heads {heads} minus {verb} random heads of the same count "
                       f"(mean over {k} sets; heads {chosen_from})",
                value=float(row["effect"]), interval=interval, n=int(row["n"]), unit="prompts",
                p_value=float(row["p_value"]) if np.isfinite(row["p_value"]) else None, n_searched=1)))
            lines.append(f"{method} {metric}: effect {row['effect']:.3g} [{row['effect_lo']:.3g}, "
                         f"{row['effect_hi']:.3g}] vs {k} random sets, p={row['p_value']:.2g}, n={row['n']} prompts, "
                         f"rank {row['rank']}/{k + 1}")
    return findings, lines


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
