"""Findings, their checklists and the append-only ledger.

A ``Finding`` separates what was observed (a metric and its interval) from what is claimed
about it, lists the controls that ran, and gets a verdict from the checklist of its kind
(``checklists.yaml``): ``ships`` (a claim that passed), ``holds`` (an observation that passed),
``needs controls`` or ``fails``.

>>> from emoscope.audit import Finding, Observation, Control
>>> f = Finding(kind="probe", claim="joy is linearly decodable at layer 12",
...             observation=Observation(metric="accuracy", value=0.98, n=400),
...             controls=[Control(name="length_baseline", value=0.97, passed=False)])
>>> f.verdict, f.reasons
('fails', ['length-only baseline 0.97 explains the probe accuracy 0.98'])
"""

from __future__ import annotations

from emoscope.audit.checklist import checklists
from emoscope.audit.finding import Control, Finding, Observation, Verdict
from emoscope.audit.ledger import Ledger
from emoscope.audit.summary import describe_counts, format_findings, verdict_counts

__all__ = [
    "Finding",
    "Observation",
    "Control",
    "Verdict",
    "Ledger",
    "checklists",
    "format_findings",
    "verdict_counts",
    "describe_counts",
]
