"""Yardsticks: a published number beside the one a run measured, judged by one stated rule.

A spec that replicates a paper lists, under ``yardsticks:``, what the paper reported, how it
defined it, which quantity of the run corresponds, and the band the reported result implies::

    yardsticks:
      - name: aligned overlap
        paper: cross-model replication on GPT-2, Pythia-160M and GPT-Neo-125M
        reported: "0.96–0.99"
        definition: cos² overlap of emotion vectors after a linear map fitted on neutral residuals
        here: matched cos² of model A's emotion vectors mapped by ridge, relative depth 0.5
        rule: {within: [0.96, 0.99], tolerance: 0.03}
        measure: {table: alignment, where: {map: ridge, vectors: raw, depth: 0.5}, value: matched_cos2}

The rule (``RULE``): *reproduced* when the measured interval lies inside the band (the reported
range widened by the tolerance, or the side of a threshold), *contradicted* when it lies wholly
outside it, *inconclusive* when it straddles a bound or nothing was measured. A direction
measured with a p-value but no interval is reproduced when p < α on the expected side,
contradicted when p < α on the other side, inconclusive otherwise; a value with neither is
compared as a point and marked "no interval".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from emoscope.audit import Finding
    from emoscope.report.runview import RunView

__all__ = ["Rule", "Measure", "Yardstick", "Measured", "YardResult", "RULE", "ALPHA", "MAX_YARDSTICKS",
           "parse_yardsticks", "judge", "measure", "evaluate"]

ALPHA = 0.05
MAX_YARDSTICKS = 32
RULE = ("reproduced: the measured interval lies inside the band the paper's result implies (its value or range "
        "widened by the stated tolerance, or the side of a threshold); contradicted: the interval lies wholly "
        f"outside it; inconclusive: it straddles a bound, or nothing was measured. A direction measured with a "
        f"p-value but no interval: reproduced when p < {ALPHA} on the expected side, contradicted when p < {ALPHA} "
        "on the other side, inconclusive otherwise. A value with neither is compared as a point (marked "
        "'no interval'). p is the run's own, uncorrected p for that quantity: the findings above give the verdicts "
        "after the correction across the run's tests.")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(v: float | None, what: str) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {v}")
    return v


class Rule(_Strict):
    """The band the reported result implies: ``within: [lo, hi]`` (± ``tolerance``), ``above: x``
    or ``below: x``."""

    within: tuple[float, float] | None = None
    above: float | None = None
    below: float | None = None
    tolerance: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _one(self) -> Rule:
        given = [k for k in ("within", "above", "below") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a rule needs exactly one of within: [lo, hi], above: x or below: x")
        if self.within is not None:
            lo, hi = (_finite(x, "within") for x in self.within)
            if lo > hi:  # type: ignore[operator]
                raise ValueError(f"within: [lo, hi] needs lo <= hi, got {list(self.within)}")
        elif self.tolerance:
            raise ValueError("tolerance goes with within: [lo, hi] only")
        _finite(self.above, "above")
        _finite(self.below, "below")
        _finite(self.tolerance, "tolerance")
        return self

    @property
    def band(self) -> tuple[float, float]:
        if self.within is not None:
            return self.within[0] - self.tolerance, self.within[1] + self.tolerance
        if self.above is not None:
            return self.above, math.inf
        return -math.inf, float(self.below)  # type: ignore[arg-type]

    @property
    def is_direction(self) -> bool:
        return self.within is None

    def describe(self) -> str:
        if self.within is not None:
            text = f"within {self.within[0]:g}–{self.within[1]:g}"
            return text + (f" (± {self.tolerance:g})" if self.tolerance else "")
        return f"above {self.above:g}" if self.above is not None else f"below {self.below:g}"


class FindingSelect(_Strict):
    """Findings of ``kind`` (from stage ``stage``, whose metric contains ``metric``)."""

    kind: str = Field(min_length=1, max_length=40)
    stage: str | None = Field(default=None, max_length=80)
    metric: str | None = Field(default=None, max_length=200)


class Measure(_Strict):
    """Where the run's number is: a ``table`` (rows matching ``where``; ``value``, optional
    ``lo``/``hi``/``p``/``n`` columns) or the ``finding`` it recorded."""

    table: str | None = Field(default=None, max_length=100)
    finding: FindingSelect | None = None
    where: dict[str, Scalar] = Field(default_factory=dict, max_length=8)
    value: str | None = Field(default=None, max_length=80)
    lo: str | None = Field(default=None, max_length=80)
    hi: str | None = Field(default=None, max_length=80)
    p: str | None = Field(default=None, max_length=80)
    n: str | None = Field(default=None, max_length=80)
    #: a column saying why a value is missing (e.g. "undefined: widths differ")
    note: str | None = Field(default=None, max_length=80)
    abs: bool = False
    #: each: one line per matching row; binomial: pooled successes (value x n) over the rows,
    #: with a binomial interval; mean: the rows' mean (no interval)
    reduce: Literal["each", "binomial", "mean"] = "each"
    per: list[str] = Field(default_factory=list, max_length=4)

    @field_validator("table")
    @classmethod
    def _table_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"table must be a table name (letters, digits, '_', '.', '-'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _source(self) -> Measure:
        if (self.table is None) == (self.finding is None):
            raise ValueError("measure needs exactly one of table: NAME or finding: {kind: ...}")
        if self.table is not None and not self.value:
            raise ValueError("measure from a table needs value: COLUMN")
        if self.reduce == "binomial" and not self.n:
            raise ValueError("reduce: binomial needs n: COLUMN (the number of outputs behind each rate)")
        return self


class Yardstick(_Strict):
    """One published number and the run quantity that corresponds to it."""

    name: str = Field(min_length=1, max_length=80)
    paper: str = Field(min_length=1, max_length=300)
    reported: str = Field(min_length=1, max_length=200)
    definition: str = Field(default="", max_length=600)
    here: str = Field(default="", max_length=600)
    rule: Rule
    measure: Measure


def parse_yardsticks(raw: Any) -> list[Yardstick]:
    """Validate a spec's ``yardsticks:`` list (``ValueError`` or pydantic's ``ValidationError``).

    >>> parse_yardsticks([{"name": "x", "paper": "p", "reported": "0.9", "rule": {"above": 0.5},
    ...                    "measure": {"table": "t", "value": "v"}}])[0].rule.band
    (0.5, inf)
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(f"yardsticks must be a list of entries, got {type(raw).__name__}")
    if len(raw) > MAX_YARDSTICKS:
        raise ValueError(f"at most {MAX_YARDSTICKS} yardsticks, got {len(raw)}")
    out = [Yardstick.model_validate(x) for x in raw]
    names = [y.name for y in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"yardstick names must be unique; repeated: {', '.join(dup)}")
    return out


@dataclass(frozen=True)
class Measured:
    """One measured line: ``value`` with ``lo``/``hi`` and ``p`` where the run has them."""

    label: str
    value: float | None
    lo: float | None = None
    hi: float | None = None
    p: float | None = None
    note: str = ""

    def describe(self) -> str:
        if self.value is None:
            return self.note or "not measured"
        text = f"{self.value:.3g}"
        if self.lo is not None and self.hi is not None:
            text += f" [{self.lo:.3g}, {self.hi:.3g}]"
        if self.p is not None:
            text += f" (p {self.p:.2g})"
        return text


@dataclass(frozen=True)
class YardResult:
    yardstick: Yardstick
    measured: Measured
    word: str
    why: str


def _inside(x: float, band: tuple[float, float]) -> bool:
    return band[0] <= x <= band[1]


def judge(rule: Rule, m: Measured, alpha: float = ALPHA) -> tuple[str, str]:
    """(word, why) by ``RULE``.

    >>> r = Rule(within=(0.96, 0.99), tolerance=0.03)
    >>> judge(r, Measured("", 0.3, 0.28, 0.40))[0], judge(r, Measured("", 0.97, 0.95, 0.99))[0]
    ('contradicted', 'reproduced')
    >>> judge(r, Measured("", 0.9, 0.8, 1.0))[0], judge(Rule(above=0), Measured("", 0.2, p=0.3))[0]
    ('inconclusive', 'inconclusive')
    """
    if m.value is None:
        return "inconclusive", m.note or "not measured in this run"
    band = rule.band
    if m.lo is not None and m.hi is not None:
        lo, hi = m.lo, m.hi
        what = f"the interval [{lo:.3g}, {hi:.3g}]"
    elif rule.is_direction and m.p is not None:
        side = _inside(m.value, band)
        if m.p < alpha:
            return (("reproduced", f"p {m.p:.2g} < {alpha:g} on the expected side ({rule.describe()})") if side else
                    ("contradicted", f"p {m.p:.2g} < {alpha:g} on the other side ({rule.describe()})"))
        return "inconclusive", f"p {m.p:.2g} ≥ {alpha:g}: no interval, and the test cannot tell"
    else:
        lo = hi = m.value
        what = f"the value {m.value:.3g} (no interval)"
    if band[0] <= lo and hi <= band[1]:
        return "reproduced", f"{what} lies inside the band ({rule.describe()})"
    if hi < band[0] or lo > band[1]:
        return "contradicted", f"{what} lies outside the band ({rule.describe()})"
    return "inconclusive", f"{what} straddles a bound of the band ({rule.describe()})"


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _matches(cell: Any, want: Scalar) -> bool:
    a, b = _num(cell), _num(want)
    if a is not None and b is not None and not isinstance(want, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return str(cell).strip().lower() == str(want).strip().lower()


def _abs_line(m: Measured) -> Measured:
    lo, hi = m.lo, m.hi
    if lo is not None and hi is not None:
        lo, hi = (min(abs(lo), abs(hi)), max(abs(lo), abs(hi))) if lo * hi > 0 else (0.0, max(abs(lo), abs(hi)))
    return Measured(m.label, None if m.value is None else abs(m.value), lo, hi, m.p, m.note)


def _from_table(view: RunView, ms: Measure) -> list[Measured]:
    from emoscope.core.stats import binomial_interval

    found = view.tables_named(ms.table or "")
    if not found:
        return [Measured("", None, note=f"no table {ms.table} in this run")]
    out = []
    for key, name in found:
        df = view.table(name)
        label = key or ""
        cols = [ms.value, *(c for c in (ms.lo, ms.hi, ms.p, ms.n, ms.note) if c), *ms.where, *ms.per]
        missing = [c for c in cols if df is None or c not in df.columns]
        if missing:
            out.append(Measured(label, None, note=f"table {name} has no column {missing[0]}"))
            continue
        rows = [r for r in df.to_dict("records") if all(_matches(r[k], v) for k, v in ms.where.items())]
        if not rows:
            out.append(Measured(label, None, note=f"no row of {name} matches {ms.where}"))
            continue
        if ms.reduce == "binomial":
            pairs = [(_num(r[ms.value]), _num(r[ms.n])) for r in rows]  # type: ignore[index]
            pairs = [(v, n) for v, n in pairs if v is not None and n is not None]
            k, n = sum(round(v * n) for v, n in pairs), sum(int(n) for _, n in pairs)
            if n == 0:
                out.append(Measured(label, None, note=f"no outputs counted in {name}"))
                continue
            iv = binomial_interval(int(k), int(n))
            out.append(Measured(label, float(iv.point), float(iv.lo), float(iv.hi), note=f"{k} of {n} outputs"))
            continue
        if ms.reduce == "mean":
            vals = [v for r in rows if (v := _num(r[ms.value])) is not None]  # type: ignore[index]
            out.append(Measured(label, sum(vals) / len(vals) if vals else None,
                                note=f"mean of {len(vals)} rows" if vals else f"no value in {name}"))
            continue
        for r in rows:
            tag = ", ".join(str(view.label(r[c])) for c in ms.per)
            value = _num(r[ms.value])  # type: ignore[index]
            why = str(r[ms.note]) if ms.note and isinstance(r[ms.note], str) and r[ms.note].strip() else ""
            out.append(Measured(" · ".join(x for x in (label, tag) if x), value,
                                _num(r[ms.lo]) if ms.lo else None, _num(r[ms.hi]) if ms.hi else None,
                                _num(r[ms.p]) if ms.p else None,
                                note="" if value is not None else (why or f"{ms.value} undefined in {name}")))
    return out


def _from_findings(findings: list[Finding], sel: FindingSelect, rename: Any) -> list[Measured]:
    out = []
    for f in findings:
        stage = (f.provenance.stage or "").partition("@")[0]
        if f.kind != sel.kind or (sel.stage and stage != sel.stage) or \
                (sel.metric and sel.metric.lower() not in f.observation.metric.lower()):
            continue
        o = f.observation
        lo, hi = (o.interval if o.interval is not None else (None, None))
        key = (f.provenance.stage or "").partition("@")[2]
        out.append(Measured(key or "", o.value, lo, hi, o.p_value, note=rename(f.id)))
    return out or [Measured("", None, note=f"no {sel.kind} finding" + (f" on '{sel.metric}'" if sel.metric else ""))]


def measure(view: RunView, y: Yardstick) -> list[Measured]:
    """The run's lines for yardstick ``y``."""
    ms = y.measure
    lines = _from_table(view, ms) if ms.table else _from_findings(view.findings, ms.finding, str)  # type: ignore[arg-type]
    return [_abs_line(m) for m in lines] if ms.abs else lines


def evaluate(view: RunView) -> tuple[list[YardResult], str]:
    """Every yardstick of the run's spec, measured and judged; an error line when the spec's
    ``yardsticks:`` cannot be read (the report still renders)."""
    raw = view.spec.get("yardsticks")
    try:
        ys = parse_yardsticks(raw)
    except (ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
        return [], f"yardsticks in spec.yaml could not be read: {str(e).splitlines()[0]}"
    out = []
    for y in ys:
        for m in measure(view, y):
            word, why = judge(y.rule, m)
            out.append(YardResult(y, m, word, why))
    return out, ""
