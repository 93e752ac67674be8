"""The run summary: two to four sentences written from the findings, never typed by hand.

In order of what a reader needs first: what ships (and what its controls rule out), what
fails and why (the deciding control in plain words, from ``phrases.yaml``), what still needs
controls, and what was observed without a claim.

>>> from emoscope.audit import Finding, Observation, Control
>>> f = Finding(kind="probe", claim="the classes are decodable at layer 19",
...             observation=Observation(metric="held-out accuracy at layer 19", value=0.99, n=40),
...             controls=[Control(name="bow_baseline", value=0.95, passed=False)])
>>> print(" ".join(run_summary([f])))
No claim ships: the one claim fails. “The classes are decodable at layer 19” does not ship: held-out accuracy at layer 19 is 0.99, but bag-of-words features reach 0.95, so the probe may be reading words, not emotion.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from emoscope.audit import Finding
from emoscope.report.glance import control_phrase, deciding_control, fmt

__all__ = ["run_summary", "short_metric"]

#: observation kinds a reader looks at first when nothing is claimed (descriptive ones last)
_KIND_ORDER = ("alignment", "depth", "emotion_space", "similarity", "probe", "steering", "introspection",
               "patching", "heads", "other", "extraction")


def short_metric(metric: str) -> str:
    """The metric without its parenthetical asides.

    >>> short_metric("held-out accuracy at layer 0 (chosen among 3 layers on the dev rows)")
    'held-out accuracy at layer 0'
    >>> short_metric("corr(token count, residual norm) at layer 12")
    'corr(token count, residual norm) at layer 12'
    """
    text = re.sub(r"\s+\([^()]*\)", "", metric)  # an aside follows a space; "corr(a, b)" is kept
    return re.sub(r"\s+", " ", text).strip(" ,;") or metric


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _value(f: Finding) -> str:
    o = f.observation
    text = fmt(o.value)
    if o.interval is not None:
        text += f" [{fmt(o.interval[0])}, {fmt(o.interval[1])}]"
    return text


def _quote(claim: str, limit: int = 140) -> str:
    claim = claim.strip().rstrip(".")
    if len(claim) > limit:
        claim = claim[: limit - 1].rsplit(" ", 1)[0] + "…"
    return f"“{_cap(claim)}”"


def _why(f: Finding) -> str:
    """Why a finding failed, in plain words: its first failed control's phrase, else its reason."""
    failed = [c for c in f.controls if c.passed is False]
    if failed:
        c = failed[0]
        phrase = control_phrase(c.name, "fails")
        if phrase:
            value = fmt(c.value) if not isinstance(c.value, str) else c.value
            return "but " + phrase.format(value=value or "?")
    return "but " + (f.reasons[0] if f.reasons else "a control did not pass")


def _ships(ships: list[Finding], n_claims: int, text: Callable[[str], str]) -> list[str]:
    if not ships:
        return []
    if len(ships) == n_claims:
        head = "The one claim ships" if n_claims == 1 else f"All {n_claims} claims ship"
    else:
        head = f"{len(ships)} of {n_claims} claims ship{'s' if len(ships) == 1 else ''}"
    named = "; ".join(f"{_quote(text(f.claim or ''))} ({short_metric(text(f.observation.metric))} {_value(f)})"
                      for f in ships[:2])
    more = f", and {_count(len(ships) - 2, 'more')}" if len(ships) > 2 else ""
    out = [f"{head}: {named}{more}."]
    rules = []
    for f in ships:
        for c in f.controls:
            r = control_phrase(c.name, "rules")
            if c.passed and r and r not in rules:
                rules.append(r)
    if rules:
        whose = "Its" if len(ships) == 1 else "Their"
        out.append(f"{whose} controls rule out {_join(rules[:4])}" + (" among others." if len(rules) > 4 else "."))
    return out


def _fails(fails: list[Finding], text: Callable[[str], str]) -> list[str]:
    if not fails:
        return []
    lead = fails[0]
    out = [f"{_quote(text(lead.claim or ''))} does not ship: {short_metric(text(lead.observation.metric))} is "
           f"{_value(lead)}, {text(_why(lead))}."]
    if len(fails) > 1:
        by = Counter(_bare(deciding_control(f)[1]) for f in fails[1:])
        on = ", ".join(f"{k} ({n})" if n > 1 else k for k, n in by.most_common(3))
        out.append(f"{_count(len(fails) - 1, 'more claim')} fail{'s' if len(fails) == 2 else ''}, on: {on}.")
    return out


def _needs(needs: list[Finding]) -> list[str]:
    if not needs:
        return []
    why = Counter(deciding_control(f)[1].split(" (+")[0] for f in needs)
    on = "; ".join(f"{k} ({n})" if n > 1 else k for k, n in why.most_common(3))
    verb = "needs" if len(needs) == 1 else "need"
    return [f"{_count(len(needs), 'claim')} {verb} more before {'it' if len(needs) == 1 else 'they'} can ship — {on}."]


def _not_passing(obs: list[Finding], text: Callable[[str], str]) -> list[str]:
    """Observations that did not pass their checks, counted by stage and deciding control."""
    bad = [f for f in obs if f.verdict in ("fails", "needs controls")]
    if not bad:
        return []
    by = Counter(f"{text(f.provenance.stage or f.kind)} ({_bare(deciding_control(f)[1])})" for f in bad)
    listed = ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in by.most_common(4)) + (", …" if len(by) > 4 else "")
    return [f"{len(bad)} of {_count(len(obs), 'observation')} do not pass their checks: {listed}."]


def _bare(decider: str) -> str:
    """A deciding control without its value and "(+n more)"."""
    return re.sub(r"\s[-+\d.e]+$", "", decider.split(" (+")[0])


def _observed(obs: list[Finding], text: Callable[[str], str]) -> list[str]:
    held = [f for f in obs if f.verdict == "holds"]
    if not held:
        return []
    rank = {k: i for i, k in enumerate(_KIND_ORDER)}
    pick = sorted(held, key=lambda f: rank.get(f.kind, len(rank) - 1))[:2]
    listed = "; ".join(f"{short_metric(text(f.observation.metric))} {_value(f)}" for f in pick)
    return [f"Observed without a claim: {listed}."]


def run_summary(findings: Sequence[Finding], rename: Callable[[str], str] | None = None) -> list[str]:
    """Two to four sentences on what the run found (``rename``: shortens model names in text).

    An empty ledger gets one sentence saying so.
    """
    text = rename or (lambda s: s)
    claims = [f for f in findings if f.is_claim]
    obs = [f for f in findings if not f.is_claim]
    if not findings:
        return ["No findings were recorded."]
    ships = [f for f in claims if f.verdict == "ships"]
    fails = [f for f in claims if f.verdict == "fails"]
    needs = [f for f in claims if f.verdict == "needs controls"]
    out: list[str] = []
    if not claims:
        bad = [f for f in obs if f.verdict in ("fails", "needs controls")]
        head = f"This run makes no claims; it records {_count(len(obs), 'observation')}"
        ok = len(obs) - len(bad)
        head += f", {ok} of which pass{'es' if ok == 1 else ''} their checks." if bad else ", and all pass their checks."
        out.append(head)
        out += _observed(obs, text)
        if bad:
            f = bad[0]
            out.append(f"Not passing: {short_metric(text(f.observation.metric))} {_value(f)}, {text(_why(f))}."
                       if f.verdict == "fails" else
                       f"Not passing: {short_metric(text(f.observation.metric))} {_value(f)} ({deciding_control(f)[1]}).")
        return out[:4]
    if not ships:
        parts = []
        if fails:
            parts.append("the one claim fails" if len(claims) == 1 else f"{len(fails)} fail")
        if needs:
            parts.append("the one claim needs controls" if len(claims) == 1 else f"{len(needs)} need controls")
        out.append("No claim ships: " + " and ".join(parts) + ".")
    out += _ships(ships, len(claims), text)
    out += _fails(fails, text)
    out += _needs(needs)
    out += _not_passing(obs, text)
    out += _observed(obs, text)
    return out[:4]
