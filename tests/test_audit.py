"""Findings, checklists and the append-only ledger (no model needed)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from emoscope.audit import (
    Control,
    Finding,
    Ledger,
    Observation,
    checklists,
    format_findings,
    verdict_counts,
)
from emoscope.audit.finding import SCHEMA_VERSION
from emoscope.errors import RunDirError

REQUIRED = {
    "probe": ["shuffled_labels", "length_baseline", "bow_baseline", "seed_spread", "heldout_layer_choice"],
    "similarity": ["null_distribution", "length_control", "heldout_selection", "seed_spread", "shared_presence"],
    "steering": ["random_vectors", "multi_token_outputs", "fluency", "heldout_selection", "seed_spread"],
    "introspection": ["control_questions", "logit_difference", "random_vectors", "heldout_selection", "seed_spread"],
}


def obs(value: float = 0.9, metric: str = "accuracy") -> Observation:
    return Observation(metric=metric, value=value, interval=(value - 0.02, value + 0.02), n=200)


def passing(kind: str) -> list[Control]:
    return [Control(name=c, value=0.5, passed=True) for c in REQUIRED[kind]]


def test_checklist_table_has_the_required_controls_per_kind():
    table = checklists()
    for kind, required in REQUIRED.items():
        assert list(table[kind].required) == required


@pytest.mark.parametrize("kind", sorted(REQUIRED))
def test_claim_with_all_controls_passed_ships(kind):
    f = Finding(kind=kind, claim="it means something", observation=obs(), controls=passing(kind))
    assert f.verdict == "ships" and f.reasons == []
    assert not f.blocks


@pytest.mark.parametrize("kind", sorted(REQUIRED))
def test_each_missing_control_gives_needs_controls_naming_it(kind):
    from emoscope.audit import checklist

    for missing in REQUIRED[kind]:
        controls = [c for c in passing(kind) if c.name != missing]
        f = Finding(kind=kind, claim="c", observation=obs(), controls=controls)
        label = checklist._table()[0][missing].label
        assert f.verdict == "needs controls"
        assert f.reasons == [f"missing control: {label}"]
        assert f.blocks


@pytest.mark.parametrize("kind", sorted(REQUIRED))
def test_each_failed_control_gives_fails(kind):
    for failed in REQUIRED[kind]:
        controls = [c if c.name != failed else Control(name=failed, value=0.97, passed=False)
                    for c in passing(kind)]
        f = Finding(kind=kind, claim="c", observation=obs(0.98), controls=controls)
        assert f.verdict == "fails", (kind, failed)
        assert len(f.reasons) == 1 and "0.97" in f.reasons[0]


def test_planted_probe_claim_explained_by_length_fails_with_named_reason():
    controls = passing("probe")
    controls[1] = Control(name="length_baseline", value=0.97, passed=False, threshold=0.9)
    f = Finding(kind="probe", claim="layer 12 encodes joy", observation=Observation(metric="accuracy", value=0.98),
                controls=controls)
    assert f.verdict == "fails"
    assert f.reasons == ["length-only baseline 0.97 explains the probe accuracy 0.98"]


def test_planted_probe_claim_missing_bow_needs_controls():
    controls = [c for c in passing("probe") if c.name != "bow_baseline"]
    f = Finding(kind="probe", claim="layer 12 encodes joy", observation=obs(), controls=controls)
    assert f.verdict == "needs controls"
    assert f.reasons == ["missing control: bag-of-words baseline"]


def test_fails_takes_precedence_and_lists_every_failure():
    f = Finding(kind="steering", claim="steering makes text joyful", observation=obs(0.4, "joy score"),
                controls=[Control(name="random_vectors", value=0.38, passed=False),
                          Control(name="fluency", value=3.1, passed=False, threshold=1.5, note="explosive")])
    assert f.verdict == "fails"
    assert f.reasons[0] == "random vectors of the same norm are not beaten (test 0.38, threshold ?): they match the joy score 0.4"
    assert "fluency 3.1" in f.reasons[1] and f.reasons[1].endswith("— explosive")


def test_control_that_ran_without_outcome_needs_controls():
    controls = passing("similarity")
    controls[1] = Control(name="length_control", value=0.31)
    f = Finding(kind="similarity", claim="joy ~ excitement", observation=obs(0.71, "cosine"), controls=controls)
    assert f.verdict == "needs controls"
    assert "length control ran but was not judged" in f.reasons[0]


def test_control_aliases_and_spelling_are_normalised():
    controls = [Control(name="Shuffled labels", passed=True), Control(name="length-only", passed=True),
                Control(name="bag of words", passed=True), Control(name="seeds", passed=True),
                Control(name="held-out", passed=True)]
    assert Finding(kind="probe", claim="c", observation=obs(), controls=controls).verdict == "ships"


def test_observation_never_blocks_but_still_gets_a_verdict():
    f = Finding(kind="probe", observation=obs(), controls=[Control(name="length_baseline", value=0.97, passed=False)])
    assert not f.is_claim and f.verdict == "fails" and not f.blocks
    g = Finding(kind="similarity", observation=obs(), claim="   ")
    assert g.claim is None and g.verdict == "needs controls" and not g.blocks


def test_unknown_failed_control_still_fails():
    f = Finding(kind="probe", claim="c", observation=obs(), controls=[*passing("probe"),
                Control(name="nullspace", value=0.88, passed=False, threshold=0.6)])
    assert f.verdict == "fails" and f.reasons == ["nullspace did not pass (0.88 vs threshold 0.6)"]


def test_other_kind_claim_cannot_ship_and_an_observation_that_passes_holds():
    assert Finding(kind="other", claim="x", observation=obs()).verdict == "needs controls"
    assert Finding(kind="extraction", observation=obs()).verdict == "holds"
    # the same controls: "ships" for a claim, "holds" for an observation, counted apart
    claim = Finding(kind="probe", claim="c", observation=obs(), controls=passing("probe"))
    seen = Finding(kind="probe", observation=obs(), controls=passing("probe"))
    assert (claim.verdict, seen.verdict) == ("ships", "holds")
    assert verdict_counts([claim, seen]) == {"ships": 1, "holds": 1, "needs controls": 0, "fails": 0}


@pytest.mark.parametrize("kind, n, need", [("introspection", 4, 10), ("steering", 6, 20), ("probe", 12, 20),
                                           ("similarity", 19, 20)])
def test_n_below_the_kinds_minimum_needs_controls(kind, n, need):
    small = Observation(metric="m", value=1.0, interval=(0.9, 1.1), n=n)
    f = Finding(kind=kind, claim="c", observation=small, controls=passing(kind))
    assert f.verdict == "needs controls" and f.reasons == [f.reasons[0]] and "n too small" in f.reasons[0]
    assert f"at least {need}" in f.reasons[0]
    enough = Finding(kind=kind, claim="c", observation=small.model_copy(update={"n": need}), controls=passing(kind))
    assert enough.verdict == "ships"
    unknown = Finding(kind=kind, claim="c", observation=small.model_copy(update={"n": None}), controls=passing(kind))
    assert unknown.verdict == "needs controls" and "n not recorded" in unknown.reasons[0]
    # a failed control still decides first
    failed = [Control(name=REQUIRED[kind][0], value=0.9, passed=False), *passing(kind)[1:]]
    assert Finding(kind=kind, claim="c", observation=small, controls=failed).verdict == "fails"


def test_findings_record_the_checklist_version_and_every_control_says_what_it_rules_out():
    from emoscope.audit.checklist import _table, checklist_version, rules_out

    f = Finding(kind="probe", claim="c", observation=obs(), controls=passing("probe"))
    assert f.checklist_version == checklist_version() >= 2
    assert all(rules_out(name) for name in _table()[0])  # one sentence per control
    assert rules_out("no such control") == ""


def test_run_correction_is_one_holm_family_over_every_tested_finding_claim_or_not():
    from emoscope.core.claims import correct_run
    from emoscope.core.stats import holm

    ps = [0.001, 0.02, 0.03, 0.04, 0.5]
    fs = [Finding(id=f"c{i}", kind="probe", claim=f"claim {i}", controls=passing("probe"),
                  observation=obs().model_copy(update={"p_value": p})) for i, p in enumerate(ps)]
    # an observation whose test did not come out significant still counts in the family
    fs.append(Finding(id="o", kind="probe", observation=obs().model_copy(update={"p_value": 0.3}),
                      controls=passing("probe")))
    fs.append(Finding(id="d", kind="extraction", observation=obs()))  # a description: no test, not counted
    run = correct_run(fs)
    assert run.n_tested == 6 and run.n_claims == 5
    assert run.describe().startswith("6 hypotheses tested") and run.describe().endswith("5 claims")
    adjusted = holm([*ps, 0.3])
    got = [next(c for c in f.controls if c.name == "run_correction").value for f in run.findings[:6]]
    assert got == pytest.approx(adjusted.tolist())
    assert [f.verdict for f in run.findings[:5]] == ["ships" if p < 0.05 else "fails" for p in adjusted[:5]]
    assert [f.verdict for f in fs[:5]] == ["ships"] * 5  # alone, each looked fine
    assert run.findings[5].verdict == "fails"  # the observation's corrected test did not pass
    assert run.findings[6].verdict == "holds" and not any(c.name == "run_correction" for c in run.findings[6].controls)


def test_a_design_whose_floor_is_above_the_corrected_level_needs_draws_not_luck():
    from emoscope.core.claims import correct_run

    def tested(p: float, floor: float | None) -> Finding:
        return Finding(kind="probe", claim="c", controls=passing("probe"),
                       observation=obs().model_copy(update={"p_value": p, "p_floor": floor}))

    # a rank among 20 draws (floor 1/21) in a family of 3: Holm asks for p < 0.0167 of the best one
    run = correct_run([tested(1 / 21, 1 / 21), tested(0.5, 1 / 21), tested(0.4, None)])
    ctl = next(c for c in run.findings[0].controls if c.name == "run_correction")
    assert ctl.passed is None and run.findings[0].verdict == "needs controls"
    assert "at least 60 draws" in ctl.note and "cannot reach" in ctl.note
    assert next(c for c in run.findings[2].controls if c.name == "run_correction").passed is False
    # with enough draws the same floor logic stays out of the way
    run = correct_run([tested(1 / 101, 1 / 101), tested(0.5, 1 / 101)])
    assert run.findings[0].verdict == "ships"


def test_verdict_cannot_be_set_by_hand_and_kind_must_be_known():
    with pytest.raises(ValidationError, match="contradicts"):
        Finding(kind="probe", claim="c", observation=obs(), verdict="ships")
    with pytest.raises(ValidationError, match="unknown finding kind"):
        Finding(kind="vibes", observation=obs())
    with pytest.raises(ValidationError):
        Observation(metric="m", value=1.0, interval=(2.0, 1.0))


def _findings(n: int) -> list[Finding]:
    return [Finding(id=f"f{i}", kind="probe", claim=f"claim {i}", observation=obs(0.5 + i / 100),
                    controls=passing("probe")[: i % 6]) for i in range(n)]


def test_ledger_appends_without_touching_earlier_bytes(tmp_path):
    ledger = Ledger(tmp_path / "findings.jsonl")
    first = _findings(5)
    ledger.extend(first[:2])
    before = ledger.path.read_bytes()
    for f in first[2:]:
        ledger.append(f)
    after = ledger.path.read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    lines = after.decode().splitlines()
    assert len(lines) == 5
    assert all(json.loads(line)["schema_version"] == SCHEMA_VERSION for line in lines)
    back = ledger.read()
    assert [f.model_dump() for f in back] == [f.model_dump() for f in first]
    assert len(ledger) == 5 and ledger.ids() == {f"f{i}" for i in range(5)}


def test_ledger_keeps_stored_verdicts(tmp_path):
    ledger = Ledger(tmp_path / "findings.jsonl")
    ledger.append(_findings(1)[0])
    record = json.loads(ledger.path.read_text())
    record["verdict"], record["reasons"] = "ships", ["judged under an older checklist"]
    ledger.path.write_text(json.dumps(record) + "\n")
    assert ledger.read()[0].reasons == ["judged under an older checklist"]


def test_missing_ledger_is_empty(tmp_path):
    assert Ledger(tmp_path / "none.jsonl").read() == []


@pytest.mark.parametrize("bad, message", [
    ("{not json\n", "findings.jsonl:3: not valid JSON"),
    ("[1, 2]\n", "findings.jsonl:3: expected a JSON object"),
    ('{"schema_version": 99, "kind": "probe"}\n', "findings.jsonl:3: schema_version 99"),
    ('{"schema_version": 1, "kind": "probe"}\n', "findings.jsonl:3: observation: Field required"),
])
def test_corrupt_ledger_line_is_a_one_line_error_with_its_number(tmp_path, bad, message):
    ledger = Ledger(tmp_path / "findings.jsonl")
    ledger.extend(_findings(2))
    with open(ledger.path, "a") as fh:
        fh.write(bad)
    with pytest.raises(RunDirError) as err:
        ledger.read()
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_text_summary_and_counts():
    fs = _findings(6)
    counts = verdict_counts(fs, claims_only=True)
    assert counts["ships"] == 1 and counts["needs controls"] == 5
    text = format_findings(fs)
    assert "[ships] f5" in text and "missing control: shuffled-label baseline" in text
    assert format_findings([]) == "no findings recorded"
