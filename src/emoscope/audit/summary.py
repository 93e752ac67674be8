"""Plain-text views of findings, for the terminal (``emoscope audit``)."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Sequence

from emoscope.audit.finding import Control, Finding

__all__ = ["control_badge", "format_findings", "verdict_counts", "describe_counts"]

_MARK = {True: "pass", False: "FAIL", None: "ran"}


def control_badge(c: Control) -> str:
    """``name=value (pass|FAIL|ran)``, for one-line listings.

    >>> control_badge(Control(name="length_baseline", value=0.97, passed=False))
    'length_baseline=0.97 (FAIL)'
    """
    value = f"={c.value:.3g}" if isinstance(c.value, float) else ("" if c.value is None else f"={c.value}")
    return f"{c.name}{value} ({_MARK[c.passed]})"


def verdict_counts(findings: Sequence[Finding], claims_only: bool = False) -> dict[str, int]:
    """How many findings have each verdict.

    >>> verdict_counts([])
    {'ships': 0, 'holds': 0, 'needs controls': 0, 'fails': 0}
    >>> verdict_counts([], claims_only=True)
    {'ships': 0, 'needs controls': 0, 'fails': 0}
    """
    counts = Counter(f.verdict for f in findings if f.is_claim or not claims_only)
    names = ("ships", "needs controls", "fails") if claims_only else ("ships", "holds", "needs controls", "fails")
    return {v: counts.get(v, 0) for v in names}


def describe_counts(findings: Sequence[Finding], n_tested: int | None = None) -> str:
    """One line: how many hypotheses the run's one correction ran over, claims by verdict, and
    observations that hold.

    >>> describe_counts([], n_tested=0)
    '0 hypotheses tested (one Holm family), 0 claims (0 ships, 0 needs controls, 0 fails); 0 observations (0 hold)'
    """
    claims = [f for f in findings if f.is_claim]
    obs = [f for f in findings if not f.is_claim]
    c = verdict_counts(claims, claims_only=True)
    def count(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    text = (f"{count(len(claims), 'claim')} (" + ", ".join(f"{n} {v}" for v, n in c.items()) + f"); "
            f"{count(len(obs), 'observation')} ({sum(f.verdict == 'holds' for f in obs)} hold)")
    if n_tested is not None:
        h = "hypothesis" if n_tested == 1 else "hypotheses"
        text = f"{n_tested} {h} tested (one Holm family), " + text
    return text


def format_findings(findings: Sequence[Finding], width: int = 100) -> str:
    """A readable block per finding: verdict, observation, claim, controls and reasons.

    >>> from emoscope.audit import Observation
    >>> print(format_findings([Finding(id="a", kind="extraction",
    ...       observation=Observation(metric="norm", value=2.0))]))
    [holds] a  extraction  (observation)
      norm = 2
    """
    if not findings:
        return "no findings recorded"
    blocks = []
    for f in findings:
        head = f"[{f.verdict}] {f.id}  {f.kind}" + ("" if f.is_claim else "  (observation)")
        if f.provenance.stage:
            head += f"  stage={f.provenance.stage}"
        lines = [head, f"  {f.observation.describe()}"]
        if f.claim:
            lines += textwrap.wrap(f"claim: {f.claim}", width, initial_indent="  ", subsequent_indent="    ")
        if f.controls:
            lines += textwrap.wrap("controls: " + ", ".join(control_badge(c) for c in f.controls), width,
                                   initial_indent="  ", subsequent_indent="    ")
        for r in f.reasons:
            lines += textwrap.wrap(f"- {r}", width, initial_indent="  ", subsequent_indent="    ")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
