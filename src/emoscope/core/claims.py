"""Correction across a run's claims.

A run that tests many claims (layers, emotions, models, cells) will find some that pass by
chance; slicing until something looks interesting is the failure this guards against. The
ledger is append-only and each stage judges its own findings, so the correction is a view
computed when the run is read (by ``emoscope audit`` and the report): every claim that
carries a p-value gets a ``run_correction`` control with its Holm-adjusted p over all such
claims of the run, and its verdict is decided again with that control in place.

>>> from emoscope.audit import Finding, Observation
>>> claims = [Finding(kind="other", claim=None, observation=Observation(metric="m", value=1.0, p_value=p))
...           for p in (0.01, 0.04)]
>>> correct_claims(claims).n_tested       # observations are not claims: nothing corrected
0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from emoscope.audit import Control, Finding
from emoscope.core.stats import holm

__all__ = ["CorrectedRun", "correct_claims"]


@dataclass(frozen=True)
class CorrectedRun:
    """``findings`` in ledger order, claims with a p-value carrying the run correction;
    ``n_tested``: how many claims the correction ran over; ``alpha``: its level."""

    findings: list[Finding]
    n_tested: int
    alpha: float


def correct_claims(findings: Sequence[Finding], alpha: float = 0.05) -> CorrectedRun:
    """Holm across the claims of a run that carry ``observation.p_value``."""
    tested = [i for i, f in enumerate(findings) if f.is_claim and f.observation.p_value is not None]
    adjusted = holm([findings[i].observation.p_value for i in tested]) if tested else []
    out = list(findings)
    for i, p in zip(tested, adjusted, strict=True):
        f = findings[i]
        note = f"Holm over the run's {len(tested)} tested claims (raw p {f.observation.p_value:.3g})"
        control = Control(name="run_correction", value=float(p), passed=bool(p < alpha), threshold=alpha, note=note)
        kept = [c for c in f.controls if c.name != "run_correction"]
        out[i] = f.with_updates(controls=[*kept, control], provenance=f.provenance)
    return CorrectedRun(out, len(tested), alpha)
