"""Greedy-output comparisons shared by the decode tests (patching, heads): outputs are compared
through the first end-of-sequence token, and a difference is excused only at a floating-point
near-tie of the reference (its logit margin at the first differing step below ``NEAR_TIE``)."""

from __future__ import annotations

NEAR_TIE = 1e-3


def trim(tokens, stop):
    """Token ids through the first end-of-sequence token."""
    out = []
    for t in tokens:
        out.append(int(t))
        if int(t) in stop:
            break
    return out


def first_difference(got, ref):
    """The first step where two token lists differ (they must differ)."""
    return next(i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b)


def same_or_near_tie(got, ref_tokens, ref_scores, stop):
    """``"same"``, or ``"near-tie"`` when ``got`` leaves the reference only where the reference's
    own scores ``(steps, vocab)`` rank its token above ours by less than ``NEAR_TIE``; else fails."""
    ref = trim(ref_tokens, stop)
    if got == ref:
        return "same"
    step = first_difference(got, ref)
    gap = float(ref_scores[step, ref[step]] - ref_scores[step, got[step]])
    assert 0 <= gap < NEAR_TIE, f"outputs differ at step {step} with logit gap {gap:.2e}: a bug, not a near-tie"
    return "near-tie"
