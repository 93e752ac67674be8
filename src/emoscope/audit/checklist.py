"""Checklists: what a claim of each kind needs, read from ``checklists.yaml``.

The rule, in order:

1. A control that ran and did not pass (``passed=False``) -> ``fails``; the reason names it.
2. Otherwise a required control that is missing, or that ran without an outcome
   (``passed=None``; also any control listed under ``judged_when_present``), or an ``n`` below the kind's minimum (``min_n``; n counts the units the
   value is computed on, after any held-out split) -> ``needs controls``; the reason names it.
3. Otherwise -> ``ships`` for a claim, ``holds`` for an observation (a number that passed its
   checks, with nothing claimed about what it means).

An observation never blocks an audit.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from emoscope.audit.finding import Control, Finding

__all__ = ["ControlSpec", "Checklist", "checklists", "checklist_kinds", "checklist_version", "canonical_control",
           "rules_out", "assess"]


@dataclass(frozen=True)
class ControlSpec:
    """One control the checklists know: its canonical ``name``, ``label`` and failure text."""

    name: str
    label: str
    aliases: tuple[str, ...]
    fails: str
    rules_out: str = ""


@dataclass(frozen=True)
class Checklist:
    """The controls a claim of ``kind`` requires; ``claims=False``: a claim can never ship."""

    kind: str
    description: str
    required: tuple[str, ...]
    claims: bool = True
    min_n: int | None = None
    n_unit: str = ""


@functools.lru_cache(maxsize=1)
def _raw() -> dict[str, Any]:
    return yaml.safe_load(resources.files("emoscope.audit").joinpath("checklists.yaml").read_text("utf-8"))


@functools.lru_cache(maxsize=1)
def _table() -> tuple[dict[str, ControlSpec], dict[str, Checklist], dict[str, str]]:
    raw = _raw()
    controls = {
        name: ControlSpec(name, c["label"], tuple(c.get("aliases", ())), c.get("fails", ""), c.get("rules_out", ""))
        for name, c in raw["controls"].items()
    }
    kinds = {
        kind: Checklist(kind, k.get("description", ""), tuple(k.get("required", ())), k.get("claims", True),
                        (k.get("min_n") or {}).get("n"), (k.get("min_n") or {}).get("unit", ""))
        for kind, k in raw["kinds"].items()
    }
    lookup: dict[str, str] = {}
    for spec in controls.values():
        for alias in (spec.name, *spec.aliases):
            lookup[_norm(alias)] = spec.name
    for ck in kinds.values():
        unknown = [r for r in ck.required if r not in controls]
        if unknown:  # a broken data file is a bug in emoscope, not a user error
            raise RuntimeError(f"checklists.yaml: kind {ck.kind!r} requires unknown controls {unknown}")
    return controls, kinds, lookup


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def checklists() -> dict[str, Checklist]:
    """All checklists by kind.

    >>> checklists()["similarity"].required
    ('null_distribution', 'length_control', 'heldout_selection', 'seed_spread', 'shared_presence')
    """
    return dict(_table()[1])


def checklist_version() -> int:
    """The version of ``checklists.yaml`` findings are judged with (recorded on each finding).

    >>> checklist_version() >= 2
    True
    """
    return int(_raw().get("version", 1))


def rules_out(name: str) -> str:
    """The sentence saying what control ``name`` rules out ("" for a control no checklist knows).

    >>> rules_out("length-only")
    'prompt length alone (token and character counts) does not explain the accuracy'
    """
    canon = canonical_control(name)
    return _table()[0][canon].rules_out if canon else ""


def checklist_kinds() -> list[str]:
    """The kinds a finding may have.

    >>> "probe" in checklist_kinds()
    True
    """
    return list(_table()[1])


def canonical_control(name: str) -> str | None:
    """The canonical name of a control, or ``None`` if no checklist knows it.

    >>> canonical_control("Length-only")
    'length_baseline'
    """
    return _table()[2].get(_norm(name))


def _label(control: Control) -> str:
    canon = canonical_control(control.name)
    return _table()[0][canon].label if canon else control.name


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return "?" if x is None else str(x)


def _failure_reason(control: Control, finding: Finding) -> str:
    canon = canonical_control(control.name)
    template = _table()[0][canon].fails if canon else ""
    fields = {
        "label": _label(control),
        "value": _fmt(control.value),
        "threshold": _fmt(control.threshold),
        "metric": finding.observation.metric,
        "observed": _fmt(finding.observation.value),
        "note": control.note,
    }
    if template:
        reason = template.format(**fields)
    else:
        reason = f"{fields['label']} did not pass ({fields['value']}"
        reason += f" vs threshold {fields['threshold']})" if control.threshold is not None else ")"
    if control.note:
        reason += f" — {control.note}"
    return reason


def assess(finding: Finding) -> tuple[str, list[str]]:
    """Decide ``(verdict, reasons)`` for ``finding`` from its kind's checklist.

    >>> from emoscope.audit import Finding, Observation, Control
    >>> f = Finding(kind="similarity", claim="joy and sadness are opposite",
    ...             observation=Observation(metric="cosine", value=-0.7),
    ...             controls=[Control(name="null_distribution", value=0.1, passed=True)])
    >>> assess(f)[0]
    'needs controls'
    >>> assess(f)[1][0]
    'missing control: length control'
    """
    ck = _table()[1][finding.kind]
    reasons: list[str] = []
    for c in finding.controls:
        if c.passed is False:
            reasons.append(_failure_reason(c, finding))
    if reasons:
        return "fails", reasons

    seen: dict[str, Control] = {}
    for c in finding.controls:
        seen.setdefault(canonical_control(c.name) or _norm(c.name), c)
    controls = _table()[0]
    for req in ck.required:
        if req not in seen:
            reasons.append(f"missing control: {controls[req].label}")
        elif seen[req].passed is None:
            reasons.append(f"control without an outcome: {controls[req].label} ran but was not judged")
    for name in _raw().get("judged_when_present", ()):
        if name in seen and name not in ck.required and seen[name].passed is None:
            note = f" — {seen[name].note}" if seen[name].note else ""
            reasons.append(f"control without an outcome: {controls[name].label} ran but was not judged{note}")
    if ck.min_n is not None:
        n = finding.observation.n
        unit = finding.observation.unit or ck.n_unit
        if n is None:
            reasons.append(f"n not recorded: a {finding.kind} finding needs n >= {ck.min_n} {ck.n_unit}")
        elif n < ck.min_n:
            reasons.append(f"n too small: {n} {unit} (at least {ck.min_n} {ck.n_unit} needed)")
    if finding.claim is not None and not ck.claims:
        reasons.append(f"kind {finding.kind!r} has no checklist; record the claim under a specific kind")
    if reasons:
        return "needs controls", reasons
    return ("ships" if finding.claim is not None else "holds"), reasons
