"""Two runs side by side: which findings changed verdict, value or controls.

Findings are matched by kind, stage and subject. The subject is the finding's metric with the
run's model names replaced by their place in the run (``M0`` is the spec's ``model``, ``M1``
the next) and free-standing numbers (layer indices, counts, shares) replaced by ``#``, so the
same finding matches across models and layers; findings with the same subject are paired in
ledger order. When the two runs were judged with different checklist versions, the page says
so, names the controls one side's findings carry and the other's lack, and re-judges the
older side with the current checklist to tell a verdict the checklist moved from one the data
moved.

>>> subject("held-out accuracy at layer 19 (chosen among 30 layers)", {"smollm2-135m": "M0"})
'held-out accuracy at layer # (chosen among # layers)'
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from emoscope.audit import Finding
from emoscope.audit.checklist import canonical_control, checklist_version
from emoscope.report.glance import fmt
from emoscope.report.runview import RunView, split_stage

__all__ = ["subject", "Pair", "Comparison", "compare_runs", "format_comparison", "render_comparison"]

_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def subject(metric: str, models: dict[str, str]) -> str:
    """``metric`` with model names replaced (``models``: name -> placeholder) and numbers as ``#``."""
    text = metric
    for name in sorted(models, key=len, reverse=True):
        text = text.replace(name, models[name])
    return _NUMBER.sub("#", text)


def _placeholders(view: RunView) -> dict[str, str]:
    out = {}
    for i, key in enumerate(view.keys or [""]):
        if key:
            out[key] = f"M{i}"
    for i, name in enumerate(view.models):
        out[name] = f"M{i}"
    return out


def _keys(view: RunView) -> list[tuple[Any, ...]]:
    """One matching key per finding of ``view``, in ledger order."""
    models = _placeholders(view)
    seen: Counter[tuple[Any, ...]] = Counter()
    out = []
    for f in view.findings:
        base, key = split_stage(f.provenance.stage or "")
        slot = view.slot(key)
        k = (f.kind, base, slot, subject(f.observation.metric, models))
        out.append((*k, seen[k]))
        seen[k] += 1
    return out


def _value(f: Finding | None) -> str:
    if f is None:
        return ""
    o = f.observation
    text = fmt(o.value)
    if o.interval is not None:
        text += f" [{fmt(o.interval[0])}, {fmt(o.interval[1])}]"
    return text


def _controls(f: Finding) -> dict[str, bool | None]:
    return {canonical_control(c.name) or c.name: c.passed for c in f.controls}


_MARK = {True: "pass", False: "FAIL", None: "ran"}


@dataclass
class Pair:
    """One finding in run A, run B or both."""

    kind: str
    stage: str
    subject: str
    a: Finding | None
    b: Finding | None
    flipped: list[str] = field(default_factory=list)
    checklist_note: str = ""
    wording: str = ""  # set when the pair was matched by kind and stage only

    @property
    def notes(self) -> list[str]:
        return self.flipped + [x for x in (self.wording, self.checklist_note) if x]

    @property
    def status(self) -> str:
        if self.a is None:
            return "only in B"
        if self.b is None:
            return "only in A"
        return "verdict changed" if self.a.verdict != self.b.verdict else "same verdict"

    @property
    def changed(self) -> bool:
        return self.status != "same verdict" or bool(self.flipped)

    @property
    def verdicts(self) -> str:
        a = self.a.verdict if self.a else "—"
        b = self.b.verdict if self.b else "—"
        return f"{a} → {b}" if a != b else str(a)

    @property
    def values(self) -> tuple[str, str]:
        return _value(self.a), _value(self.b)

    @property
    def label(self) -> str:
        f = self.b or self.a
        return f.observation.metric if f is not None else self.subject


@dataclass
class Comparison:
    """Two runs compared (see ``compare_runs``)."""

    a: RunView
    b: RunView
    pairs: list[Pair]
    checklist: list[str]

    def counts(self) -> dict[str, int]:
        c = Counter(p.status for p in self.pairs)
        c["controls flipped"] = sum(bool(p.flipped) for p in self.pairs if p.a and p.b)
        return {k: c.get(k, 0) for k in ("same verdict", "verdict changed", "controls flipped", "only in A",
                                          "only in B")}

    def headline(self) -> str:
        c = self.counts()
        matched = c["same verdict"] + c["verdict changed"]
        if not any(p.changed for p in self.pairs):
            return f"No changes: all {matched} findings match, with the same verdicts and controls."
        parts = [f"{c['verdict changed']} of {matched} matched findings changed verdict"]
        if c["controls flipped"]:
            parts.append(f"{c['controls flipped']} had a control flip")
        if c["only in A"] or c["only in B"]:
            parts.append(f"{c['only in A']} only in A, {c['only in B']} only in B")
        return "; ".join(parts) + "."


def _describe(view: RunView) -> str:
    m = view.manifest
    models = ", ".join(view.keys or view.models)
    return f"{m.spec_name} ({view.rd.root}) · run {m.run_id} · models {models} · seed {m.seeds.get('spec', '?')}"


def _checklist_notes(a: RunView, b: RunView, pairs: list[Pair]) -> list[str]:
    va, vb = a.checklist_versions, b.checklist_versions
    if va == vb:
        return [f"Both runs were judged with checklist version {', '.join(map(str, va)) or '?'}."] if va else []
    notes = [f"The checklist changed: A was judged with version {', '.join(map(str, va)) or '?'}, B with "
             f"{', '.join(map(str, vb)) or '?'} (this emoscope has version {checklist_version()})."]
    by_kind: dict[str, tuple[set[str], set[str]]] = {}
    for p in pairs:
        f = p.a or p.b
        sa, sb = by_kind.setdefault(f.kind, (set(), set()))  # type: ignore[union-attr]
        if p.a is not None:
            sa.update(_controls(p.a))
        if p.b is not None:
            sb.update(_controls(p.b))
    for kind, (sa, sb) in sorted(by_kind.items()):
        only_b, only_a = sorted(sb - sa), sorted(sa - sb)
        if only_b or only_a:
            notes.append(f"{kind}: controls only in B: {', '.join(only_b) or 'none'}; only in A: "
                         f"{', '.join(only_a) or 'none'}.")
    return notes


def _rejudge(p: Pair) -> None:
    """For a verdict change across checklist versions: would the current checklist give A the
    verdict B got?"""
    a, b = p.a, p.b
    if a is None or b is None or a.verdict == b.verdict:
        return
    now = a.with_updates(provenance=a.provenance).verdict
    if now == b.verdict:
        p.checklist_note = f"A re-judged with checklist {checklist_version()} is also {now}: the checklist moved it"
    else:
        p.checklist_note = f"A re-judged with checklist {checklist_version()} is {now}: the data moved it"


def _pair(fa: Finding, fb: Finding, p: Pair, versions_differ: bool) -> Pair:
    ca, cb = _controls(fa), _controls(fb)
    p.flipped = [f"{n}: {_MARK[ca[n]]} → {_MARK[cb[n]]}" for n in ca if n in cb and ca[n] != cb[n]]
    p.flipped += [f"{n}: added" for n in cb if n not in ca] + [f"{n}: dropped" for n in ca if n not in cb]
    if versions_differ:
        _rejudge(p)
    return p


def compare_runs(run_a: str | os.PathLike[str], run_b: str | os.PathLike[str]) -> Comparison:
    """Match the findings of two run directories (one-line ``RunDirError`` for a bad one).

    First by kind, stage, model and subject; then the findings left on both sides, by kind,
    stage and model in ledger order (the subject was worded differently, e.g. by another
    version of the stage: the pair says so)."""
    a, b = RunView.load(run_a), RunView.load(run_b)
    ka, kb = _keys(a), _keys(b)
    index_b = {k: i for i, k in enumerate(kb)}
    versions_differ = a.checklist_versions != b.checklist_versions
    pairs: dict[int, Pair] = {}
    used: set[int] = set()
    for i, (k, fa) in enumerate(zip(ka, a.findings, strict=True)):
        j = index_b.get(k)
        if j is not None:
            used.add(j)
            pairs[i] = _pair(fa, b.findings[j], Pair(k[0], k[1], k[3], fa, b.findings[j]), versions_differ)
    left_b: dict[tuple[Any, ...], list[int]] = {}
    for j, k in enumerate(kb):
        if j not in used:
            left_b.setdefault(k[:3], []).append(j)
    for i, (k, fa) in enumerate(zip(ka, a.findings, strict=True)):
        if i in pairs:
            continue
        js = left_b.get(k[:3])
        if js:
            j = js.pop(0)
            used.add(j)
            p = _pair(fa, b.findings[j], Pair(k[0], k[1], k[3], fa, b.findings[j]), versions_differ)
            p.wording = f"matched by kind and stage: A words it \"{fa.observation.metric}\""
            pairs[i] = p
        else:
            pairs[i] = Pair(k[0], k[1], k[3], fa, None)
    out = [pairs[i] for i in range(len(ka))]
    out += [Pair(k[0], k[1], k[3], None, fb) for j, (k, fb) in enumerate(zip(kb, b.findings, strict=True))
            if j not in used]
    return Comparison(a, b, out, _checklist_notes(a, b, out))


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def format_comparison(c: Comparison, *, all_rows: bool = False, width: int = 120) -> str:
    """The comparison for a terminal: one line per finding (verdicts, kind and stage, the
    finding), its values beneath, then the controls that flipped (changed findings only unless
    ``all_rows``)."""
    lines = [f"A: {_describe(c.a)}", f"B: {_describe(c.b)}", *c.checklist, c.headline()]
    rows = [p for p in c.pairs if all_rows or p.changed]
    if not rows:
        return "\n".join(lines)
    head = f"{'verdict A → B':<28} {'kind · stage':<26} finding"
    lines += ["", head, "-" * min(width, 100)]
    for p in rows:
        va, vb = p.values
        lines.append(f"{_cut(p.verdicts, 28):<28} {_cut(p.kind + ' · ' + p.stage, 26):<26} "
                     f"{_cut(p.label, max(20, width - 56))}")
        lines.append(f"{'':<4}A {va or '—'}   B {vb or '—'}   ({p.status})")
        lines += [f"{'':<4}{_cut(x, width - 4)}" for x in p.notes]
    return "\n".join(lines)


def render_comparison(c: Comparison) -> str:
    """The comparison as one self-contained HTML page."""
    from emoscope import __version__
    from emoscope.core.manifest import now
    from emoscope.report.build import report_css, template_env

    return template_env().get_template("compare.html").render(
        c=c, a=_describe(c.a), b=_describe(c.b), counts=c.counts(), css=report_css(), version=__version__, written=now())
