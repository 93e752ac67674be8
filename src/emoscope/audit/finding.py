"""The ``Finding`` record: one observation, an optional claim, its controls and a verdict.

The verdict is never typed in by hand: it is decided by the checklist of the finding's kind
(``checklists.yaml``) from the controls that ran. Only records read back from a ledger keep
the verdict they were written with (pass ``context={"stored": True}`` to ``model_validate``).
"""

from __future__ import annotations

import datetime as _dt
import math
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = ["SCHEMA_VERSION", "Verdict", "Observation", "Control", "Provenance", "Finding"]

#: Version of the JSON layout of a finding; written on every ledger line.
SCHEMA_VERSION = 3

#: ``ships``: a claim that passed its checklist; ``holds``: an observation (no claim) that did.
Verdict = Literal["ships", "holds", "needs controls", "fails"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class Observation(_Model):
    """What was measured: ``metric`` = ``value`` (optional ``interval`` (lo, hi)) over ``n`` items.

    >>> Observation(metric="accuracy", value=0.91, interval=(0.88, 0.94), n=400).describe()
    'accuracy = 0.91 [0.88, 0.94], n=400'
    """

    metric: str
    value: float
    interval: tuple[float, float] | None = None
    n: int | None = None
    #: what ``n`` counts (prompts, concepts, texts per class, ...): the units the value is
    #: computed on, after any held-out split; checked against the kind's minimum in checklists.yaml
    unit: str = ""
    #: the uncorrected p-value of the test behind a claim; a run corrects across its claims (Holm)
    p_value: float | None = None
    #: the smallest p-value the deciding test's design can give (a rank among k draws: 1/(k+1)); a
    #: claim whose floor is above the level the run correction asks of it needs more draws, not luck
    p_floor: float | None = None
    #: how many cells (layers, strengths, ...) a "best of" choice searched; 1 when nothing was chosen
    n_searched: int | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _nan_from_null(cls, v: Any) -> Any:  # JSON has no NaN: a stored NaN value reads back as null
        return math.nan if v is None else v

    @field_validator("interval", mode="before")
    @classmethod
    def _nan_bounds_from_null(cls, v: Any) -> Any:
        return tuple(math.nan if x is None else x for x in v) if isinstance(v, (list, tuple)) else v

    @field_validator("interval")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (v[0] <= v[1] or any(math.isnan(x) for x in v)):
            raise ValueError(f"interval must be (lo, hi) with lo <= hi, got {v}")
        return v

    def describe(self) -> str:
        text = f"{self.metric} = {_fmt(self.value)}"
        if self.interval is not None:
            text += f" [{_fmt(self.interval[0])}, {_fmt(self.interval[1])}]"
        if self.n is not None:
            text += f", n={self.n}"
        return text


class Control(_Model):
    """One control that ran: its ``value``, whether it ``passed`` (``None``: ran, not judged),
    the ``threshold`` it was judged against and a free-text ``note``.

    >>> Control(name="length_baseline", value=0.97, passed=False, threshold=0.9).passed
    False
    """

    name: str
    value: float | str | None = None
    passed: bool | None = None
    threshold: float | str | None = None
    note: str = ""


class Provenance(_Model):
    """Where a finding came from. ``RunContext.add_finding`` fills this in."""

    run_id: str = ""
    spec_hash: str = ""
    stage: str = ""
    created_at: str = Field(default_factory=_now)


class Finding(_Model):
    """An observation, an optional claim about what it means, and the controls behind it.

    ``verdict`` and ``reasons`` are computed from the checklist of ``kind``:

    >>> f = Finding(kind="probe", claim="layer 12 encodes joy",
    ...             observation=Observation(metric="accuracy", value=0.98),
    ...             controls=[Control(name="length_baseline", value=0.97, passed=False)])
    >>> f.verdict
    'fails'
    >>> f.reasons[0]
    'length-only baseline 0.97 explains the probe accuracy 0.98'

    Without a claim a finding is an observation: it still gets a verdict, but it never blocks
    ``emoscope audit``.
    """

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    kind: str
    observation: Observation
    claim: str | None = None
    controls: list[Control] = Field(default_factory=list)
    verdict: Verdict | None = None
    reasons: list[str] = Field(default_factory=list)
    #: the version of checklists.yaml the verdict was decided with
    checklist_version: int | None = None
    provenance: Provenance = Field(default_factory=Provenance)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from emoscope.audit.checklist import checklist_kinds

        kinds = checklist_kinds()
        if v not in kinds:
            raise ValueError(f"unknown finding kind {v!r}; known: {', '.join(kinds)}")
        return v

    @field_validator("claim")
    @classmethod
    def _blank_claim_is_none(cls, v: str | None) -> str | None:
        return v if v and v.strip() else None

    @model_validator(mode="after")
    def _decide(self, info: ValidationInfo) -> Finding:
        from emoscope.audit.checklist import assess, checklist_version

        stored = bool(info.context and info.context.get("stored"))
        if stored and self.verdict is not None:
            return self  # a ledger record keeps the verdict it was written with
        verdict, reasons = assess(self)
        if self.verdict is not None and self.verdict != verdict:
            raise ValueError(
                f"verdict {self.verdict!r} contradicts the {self.kind} checklist ({verdict!r}: "
                f"{'; '.join(reasons) or 'all required controls passed'}); leave verdict unset"
            )
        self.verdict = verdict
        self.reasons = reasons
        self.checklist_version = checklist_version()
        return self

    @property
    def is_claim(self) -> bool:
        """True when the finding says what its number means (and so can block an audit)."""
        return self.claim is not None

    @property
    def blocks(self) -> bool:
        """True for a claim whose verdict is not ``ships``."""
        return self.is_claim and self.verdict != "ships"

    def with_updates(self, **fields: Any) -> Finding:
        """A copy with ``fields`` replaced and the verdict decided again.

        >>> f = Finding(kind="extraction", observation=Observation(metric="norm", value=3.0))
        >>> f.with_updates(id="extract-000").id
        'extract-000'
        """
        data = self.model_dump()
        data.update(fields)
        data["verdict"] = None
        data["checklist_version"] = None
        return Finding.model_validate(data)


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)
