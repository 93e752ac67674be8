"""One correction over everything a run tested.

A run that tests many hypotheses (layers, emotions, models, cells, methods, metrics) will find
some that pass by chance; slicing until something looks interesting is the failure this guards
against. So every finding that tests a hypothesis records the p-value of the test that decides
it (``Observation.p_value``) *whether or not it makes a claim*, and Holm runs over all of them:
a run of six null tests is one family of six, not the one or two that happened to pass their own
test first.

The ledger is append-only and each stage judges its own findings, so the correction is a view
computed when the run is read (by ``emoscope audit`` and the report): every tested finding gets a
``run_correction`` control with its Holm-adjusted p over the family, and its verdict is decided
again with that control in place. A design that cannot reach the level the correction asks of it
(``Observation.p_floor`` above ``alpha / m``, e.g. a rank among too few random draws) is not a
failure of the claim but of the design: its ``run_correction`` is left unjudged ("needs
controls"), with the number of draws that would reach it.

>>> from emoscope.audit import Finding, Observation
>>> tested = [Finding(kind="other", observation=Observation(metric="m", value=1.0, p_value=p))
...           for p in (0.01, 0.04)]
>>> run = correct_run(tested)
>>> run.n_tested, run.n_claims, [c.value for f in run.findings for c in f.controls]
(2, 0, [0.02, 0.04])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from emoscope.audit import Control, Finding
from emoscope.core.stats import holm

__all__ = ["CorrectedRun", "correct_run", "correct_claims", "is_tested"]


def is_tested(f: Finding) -> bool:
    """True for a finding that tests a hypothesis (it records the deciding p-value)."""
    p = f.observation.p_value
    return p is not None and not math.isnan(p)


@dataclass(frozen=True)
class CorrectedRun:
    """``findings`` in ledger order, every tested one carrying the run correction; ``n_tested``:
    the size of the Holm family; ``n_claims``: findings that make a claim; ``alpha``: the level."""

    findings: list[Finding]
    n_tested: int
    alpha: float
    n_claims: int = 0

    def describe(self) -> str:
        """``"N hypotheses tested, M claims"``, the line the summary opens with.

        >>> CorrectedRun([], 1, 0.05, 0).describe()
        '1 hypothesis tested (one Holm family, alpha 0.05), 0 claims'
        """
        h = "hypothesis" if self.n_tested == 1 else "hypotheses"
        c = "claim" if self.n_claims == 1 else "claims"
        return f"{self.n_tested} {h} tested (one Holm family, alpha {self.alpha:g}), {self.n_claims} {c}"


def _needed(floor: float, level: float) -> int | None:
    """Draws a rank design needs so that 1/(k+1) < level (None when the floor is not a rank's)."""
    if not (0 < floor < 1) or abs(1 / floor - round(1 / floor)) > 1e-6:
        return None
    return int(math.floor(1.0 / level + 1e-9))


def correct_run(findings: Sequence[Finding], alpha: float = 0.05) -> CorrectedRun:
    """Holm across every finding of a run that records a p-value (see the module doc)."""
    tested = [i for i, f in enumerate(findings) if is_tested(f)]
    m = len(tested)
    adjusted = holm([findings[i].observation.p_value for i in tested]) if tested else []
    out = list(findings)
    for i, p in zip(tested, adjusted, strict=True):
        f = findings[i]
        obs = f.observation
        note = f"Holm over the run's {m} tested hypotheses (raw p {obs.p_value:.3g})"
        passed: bool | None = bool(p < alpha)
        floor = obs.p_floor
        if not passed and floor is not None and floor * m >= alpha:
            passed = None
            note += (f"; the test's design cannot reach the level Holm may ask of it (its smallest p, "
                     f"{floor:.3g}, is not below alpha/m = {alpha / m:.3g})")
            need = _needed(floor, alpha / m)
            if need is not None:
                note += f": a rank among random draws needs at least {need} draws here"
        control = Control(name="run_correction", value=float(p), passed=passed, threshold=alpha, note=note)
        kept = [c for c in f.controls if c.name != "run_correction"]
        out[i] = f.with_updates(controls=[*kept, control], provenance=f.provenance)
    return CorrectedRun(out, m, alpha, sum(1 for f in findings if f.is_claim))


def correct_claims(findings: Sequence[Finding], alpha: float = 0.05) -> CorrectedRun:
    """The former name of :func:`correct_run` (it now corrects over every tested finding)."""
    return correct_run(findings, alpha)
