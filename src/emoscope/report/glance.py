"""Findings at a glance: one row per finding, its evidence folded beneath it.

A row holds the verdict, one sentence of observation (value, interval, n), the control that
decided the verdict in a few words, and the stage. The claim, each control with its value and
note, and any reason no control explains go into the folded part. A failed control's reason
already quotes the control's note, so the note is shown once, inside the reason.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from emoscope.audit import Control, Finding
from emoscope.audit.checklist import canonical_control

__all__ = ["ControlLine", "FindingRow", "finding_rows", "fmt", "control_phrase", "observation_sentence",
           "deciding_control"]


@functools.lru_cache(maxsize=1)
def _phrases() -> dict[str, dict[str, str]]:
    text = resources.files("emoscope.report").joinpath("phrases.yaml").read_text("utf-8")
    return dict(yaml.safe_load(text)["controls"])


def control_phrase(name: str, part: str) -> str:
    """The report's words for control ``name`` (any alias): ``short``, ``fails`` or ``rules``;
    "" when the phrase table does not know it.

    >>> control_phrase("bag_of_words", "short")
    'bag-of-words baseline'
    """
    canon = canonical_control(name) or name
    return _phrases().get(canon, {}).get(part, "")


def fmt(x: Any) -> str:
    """A number in three significant digits (integers as they are); "" for None or NaN.

    >>> fmt(0.98765), fmt(12), fmt(None), fmt(float("nan")), fmt(1234.5)
    ('0.988', '12', '', '', '1.23e+03')
    """
    if x is None or isinstance(x, bool):
        return "" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.3g}"
    return str(x)


def observation_sentence(f: Finding) -> str:
    """The observation in one sentence: metric, value, interval and n with its unit.

    >>> from emoscope.audit import Observation
    >>> observation_sentence(Finding(kind="extraction", observation=Observation(
    ...     metric="accuracy", value=0.912, interval=(0.88, 0.94), n=40, unit="texts")))
    'accuracy 0.912 [0.88, 0.94], n = 40 texts'
    """
    o = f.observation
    text = f"{o.metric} {fmt(o.value)}"
    if o.interval is not None:
        text += f" [{fmt(o.interval[0])}, {fmt(o.interval[1])}]"
    if o.n is not None:
        text += f", n = {o.n}" + (f" {o.unit}" if o.unit else "")
    return text


def _short(c: Control) -> str:
    return control_phrase(c.name, "short") or c.name.replace("_", " ")


_NEEDS = [  # the checklist's reasons for "needs controls", in a few words
    (re.compile(r"^missing control: (.+)$"), r"missing: \1"),
    (re.compile(r"^control without an outcome: (.+?) ran but was not judged$"), r"not judged: \1"),
    (re.compile(r"^n too small: (\S+) (.+?) \(at least (\S+) .*needed\)$"), r"n too small: \1 of \3 \2"),
    (re.compile(r"^n not recorded.*$"), "n not recorded"),
    (re.compile(r"^kind '(.+?)' has no checklist.*$"), r"no checklist for \1"),
]


def deciding_control(f: Finding) -> tuple[str, str]:
    """(css class, a few words): the control or requirement that decided the verdict.

    >>> from emoscope.audit import Observation
    >>> deciding_control(Finding(kind="probe", claim="x", observation=Observation(metric="a", value=0.9),
    ...                          controls=[Control(name="bow", value=0.95, passed=False)]))
    ('c-fail', 'bag-of-words baseline 0.95')
    """
    failed = [c for c in f.controls if c.passed is False]
    if failed:
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        value = fmt(failed[0].value) if isinstance(failed[0].value, (int, float)) else ""
        return "c-fail", f"{_short(failed[0])}{' ' + value if value else ''}{more}"
    if f.verdict == "needs controls" and f.reasons:
        r = f.reasons[0]
        for pat, rep in _NEEDS:
            if pat.match(r):
                r = pat.sub(rep, r)
                break
        more = f" (+{len(f.reasons) - 1} more)" if len(f.reasons) > 1 else ""
        return "c-ran", r + more
    passed = [c for c in f.controls if c.passed is True]
    if passed:
        return "c-pass", f"{len(passed)} control{'s' if len(passed) != 1 else ''} passed"
    return "muted", "descriptive (no controls needed)" if not f.is_claim else "no controls"


@dataclass(frozen=True)
class ControlLine:
    """One control in the folded part: ``mark`` pass / FAIL / ran; ``text``: its reason when
    it failed (the reason quotes the note), else its note."""

    mark: str
    cls: str
    name: str
    value: str
    threshold: str
    text: str


@dataclass
class FindingRow:
    """What the findings table shows of one finding."""

    finding: Finding
    anchor: str
    verdict: str
    observation: str
    decider: str
    decider_cls: str
    stage: str
    stage_anchor: str = ""
    controls: list[ControlLine] = field(default_factory=list)
    other_reasons: list[str] = field(default_factory=list)
    figures: list[Any] = field(default_factory=list)  # draws_ figures of this finding (report.figures.Figure)

    @property
    def has_details(self) -> bool:
        return bool(self.finding.claim or self.controls or self.other_reasons or self.figures)


def _assign_reasons(f: Finding) -> tuple[dict[int, str], list[str]]:
    """Match each reason to the failed control it was written for (the checklist writes one per
    failed control, in order, ending with the control's note); the rest stay unassigned."""
    free = list(f.reasons)
    out: dict[int, str] = {}
    for i, c in enumerate(f.controls):
        if c.passed is not False:
            continue
        label = _short(c)
        for r in free:
            if (c.note and c.note in r) or label.lower() in r.lower() or c.name.replace("_", " ") in r.lower():
                out[i] = r
                free.remove(r)
                break
    return out, free


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-") or "x"


def finding_rows(findings: list[Finding]) -> list[FindingRow]:
    """One ``FindingRow`` per finding, in ledger order."""
    rows = []
    for f in findings:
        reasons, free = _assign_reasons(f)
        lines = []
        for i, c in enumerate(f.controls):
            mark, cls = {True: ("pass", "c-pass"), False: ("FAIL", "c-fail"), None: ("ran", "c-ran")}[c.passed]
            lines.append(ControlLine(mark, cls, c.name, fmt(c.value) if not isinstance(c.value, str) else c.value,
                                     fmt(c.threshold) if not isinstance(c.threshold, str) else c.threshold,
                                     reasons.get(i, c.note)))
        cls, words = deciding_control(f)
        rows.append(FindingRow(f, "finding-" + _slug(f.id), f.verdict or "", observation_sentence(f), words, cls,
                               f.provenance.stage or "-", controls=lines, other_reasons=free))
    return rows
