"""The run summary is written from the findings: planted ledgers where every claim ships, every
claim fails, the verdicts are mixed, and nothing is claimed. Each sentence is checked against the
ledger it came from (counts, the deciding control and its value), and the report's first screen
carries exactly these sentences."""

from __future__ import annotations

import html as html_lib
import re

import pytest

from emoscope.audit import Control, Finding, Observation
from emoscope.core.stages import unregister_stage
from emoscope.report.headline import run_summary, short_metric
from emoscope.runs import StageResult, parse_spec, register_stage, run_spec


def _alignment(claim: str, value: float) -> Finding:  # a claim that ships: every control passed, n = 12
    return Finding(kind="alignment", claim=claim,
                   observation=Observation(metric="identification accuracy (centred)", value=value,
                                           interval=(value - 0.1, min(1.0, value + 0.1)), n=12, unit="emotions"),
                   controls=[Control(name="identification", value=value, passed=True),
                             Control(name="shuffled_pairing", value=0.08, passed=True),
                             Control(name="heldout_fit", value=0.3, passed=True)])


def _probe_fails(layer: int, bow: float, acc: float) -> Finding:
    return Finding(kind="probe", claim=f"the four classes are decodable at layer {layer}",
                   observation=Observation(metric=f"held-out accuracy at layer {layer} (chosen among 30 layers)",
                                           value=acc, n=40),
                   controls=[Control(name="bow_baseline", value=bow, passed=False),
                             Control(name="shuffled_labels", value=0.26, passed=True)])


def _random_fails(value: float) -> Finding:
    return Finding(kind="steering", claim="the vector makes outputs more joyful",
                   observation=Observation(metric="nrc_joy change over random", value=0.02, n=30),
                   controls=[Control(name="random_vectors", value=value, passed=False)])


def _needs() -> Finding:
    return Finding(kind="similarity", claim="joy and sadness point apart",
                   observation=Observation(metric="cosine", value=-0.6, n=50),
                   controls=[Control(name="null_distribution", value=0.01, passed=True)])


def _obs(metric: str, value: float, kind: str = "extraction") -> Finding:
    return Finding(kind=kind, observation=Observation(metric=metric, value=value, n=400))


def _check_shape(sentences: list[str]) -> None:
    assert 2 <= len(sentences) <= 4, sentences
    assert all(s.endswith(".") and (s[0].isupper() or s[0] in "“0123456789") for s in sentences)
    assert len(set(sentences)) == len(sentences)


def test_all_ship():
    ledger = [_alignment("the map carries smollm's vectors onto gemma's", 0.83),
              _alignment("the map carries gemma's vectors onto smollm's", 0.75), _obs("mean norm", 21.6)]
    s = run_summary(ledger)
    _check_shape(s)
    assert s[0].startswith("All 2 claims ship: “The map carries smollm's vectors onto gemma's”")
    assert "identification accuracy 0.83 [0.73, 0.93]" in s[0]  # the parenthetical aside is dropped
    assert s[1] == ("Their controls rule out what all vectors share, a map that ignores which text is which "
                    "and overfitting the map.")
    assert not any("fail" in x for x in s)


def test_all_fail():
    ledger = [_probe_fails(19, 0.95, 0.99), _probe_fails(12, 0.91, 0.97), _random_fails(0.4)]
    s = run_summary(ledger)
    _check_shape(s)
    assert s[0] == "No claim ships: 3 fail."
    assert s[1] == ("“The four classes are decodable at layer 19” does not ship: held-out accuracy at layer 19 is "
                    "0.99, but bag-of-words features reach 0.95, so the probe may be reading words, not emotion.")
    # the other two, counted by their deciding control (values dropped)
    assert s[2] == "2 more claims fail, on: bag-of-words baseline, random vectors."


def test_mixed():
    ledger = [_obs("mean norm", 21.6), _probe_fails(19, 0.95, 0.99), _alignment("the map carries it", 0.9),
              _needs(), _obs("peak relative depth", 0.56, kind="depth")]
    s = run_summary(ledger)
    _check_shape(s)
    n_claims = sum(f.is_claim for f in ledger)
    n_ships = sum(f.verdict == "ships" for f in ledger)
    assert s[0].startswith(f"{n_ships} of {n_claims} claims ships: “The map carries it”")
    assert any("does not ship" in x and "bag-of-words features reach 0.95" in x for x in s)
    needs = next(x for x in s if "needs more" in x)
    assert needs.startswith("1 claim needs more before it can ship — missing: length control")


def test_observations_only():
    ledger = [_obs("mean residual norm, layer 29 / layer 0", 21.6),
              _obs("relative depth of the probe's peak", 0.63, kind="depth"),
              Finding(kind="similarity", observation=Observation(metric="cosine", value=0.2, n=50),
                      controls=[Control(name="null_distribution", value=0.4, passed=False)])]
    s = run_summary(ledger)
    _check_shape(s)
    holds = sum(f.verdict == "holds" for f in ledger)
    assert s[0] == f"This run makes no claims; it records 3 observations, {holds} of which pass their checks."
    # depth comes before the descriptive norm
    assert s[1] == ("Observed without a claim: relative depth of the probe's peak 0.63; "
                    "mean residual norm, layer 29 / layer 0 21.6.")
    assert "chance explains it" in s[2] and "cosine 0.2" in s[2]


def test_empty_ledger_and_short_metric():
    assert run_summary([]) == ["No findings were recorded."]
    assert short_metric("a (b) c (d)") == "a c"


@pytest.fixture
def planted_run(tmp_path):
    def stage(ctx):
        ctx.add_finding(_probe_fails(19, 0.95, 0.99))
        ctx.add_finding(_obs("mean norm", 21.6))
        return StageResult(summary="planted")

    register_stage("fake-summary", replace=True)(stage)
    rd = run_spec(parse_spec({"name": "s", "model": "fake", "stages": ["fake-summary"]}), tmp_path / "run")
    yield rd
    unregister_stage("fake-summary")


def test_the_report_opens_with_these_sentences(planted_run):
    page = planted_run.report_path.read_text()
    lede = page.split('class="lede"', 1)[1].split('<div class="counts">', 1)[0]
    shown = [html_lib.unescape(x) for x in re.findall(r"<p>(.*?)</p>", lede)]
    assert shown == run_summary(planted_run.findings().findings)
