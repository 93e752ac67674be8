"""Yardsticks: the rule that words a reported-vs-measured line, checked by brute force; the
``yardsticks:`` section of a spec (typed, bounded, unknown keys are errors with their line); the
measured lines read from a run's tables and findings; and the built-in specs that carry them."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from emoscope.audit import Finding, Observation
from emoscope.core.stages import unregister_stage
from emoscope.core.stats import binomial_interval
from emoscope.errors import SpecError
from emoscope.report import render_report
from emoscope.report.runview import RunView
from emoscope.report.yardsticks import MAX_YARDSTICKS, Measured, Rule, Yardstick, judge, measure
from emoscope.runs import StageResult, parse_spec, register_stage, run_spec
from emoscope.runs.spec import builtin_specs, load_spec, spec_from_yaml

GRID = np.round(np.arange(0, 1.0001, 0.05), 2)


def _word_by_sets(m: tuple[float, float], band: tuple[float, float]) -> str:
    """The rule by enumeration: the measured interval and the band as sets of grid points."""
    pts = np.round(np.arange(-0.5, 1.5001, 0.01), 2)
    ms = {p for p in pts if m[0] - 1e-9 <= p <= m[1] + 1e-9}
    bs = {p for p in pts if band[0] - 1e-9 <= p <= band[1] + 1e-9}
    if ms <= bs:
        return "reproduced"
    return "contradicted" if not ms & bs else "inconclusive"


def test_rule_matches_enumeration_for_every_interval_and_band():
    checked = 0
    for lo, hi in itertools.combinations_with_replacement(GRID[::2], 2):
        for a, b in itertools.combinations_with_replacement(GRID[::3], 2):
            for tol in (0.0, 0.1):
                rule = Rule(within=(a, b), tolerance=tol)
                word, why = judge(rule, Measured("", (lo + hi) / 2, lo, hi))
                assert word == _word_by_sets((lo, hi), (a - tol, b + tol)), (lo, hi, a, b, tol, why)
                checked += 1
        for t in GRID[::4]:
            for rule, band in ((Rule(above=t), (t, 9.0)), (Rule(below=t), (-9.0, t))):
                word, _ = judge(rule, Measured("", (lo + hi) / 2, lo, hi))
                assert word == _word_by_sets((lo, hi), band)
    assert checked > 1000


def test_a_direction_with_only_a_p_value():
    up = Rule(above=0)
    assert judge(up, Measured("", 0.3, p=0.01))[0] == "reproduced"
    assert judge(up, Measured("", -0.3, p=0.01))[0] == "contradicted"   # significant the other way
    assert judge(up, Measured("", 0.3, p=0.2))[0] == "inconclusive"     # no interval, the test cannot tell
    assert judge(up, Measured("", 0.3, p=0.05))[0] == "inconclusive"    # p < alpha is strict
    assert judge(up, Measured("", None, note="no table x"))[0] == "inconclusive"
    word, why = judge(Rule(within=(0.96, 0.99)), Measured("", 0.3))
    assert word == "contradicted" and "no interval" in why


BASE = "name: t\nmodel: m\nstages: [extract]\n"
ENTRY = ("  - name: a\n    paper: p\n    reported: '0.9'\n    rule: {rule}\n"
         "    measure: {{table: t, value: v}}\n")


@pytest.mark.parametrize("rule, needle", [
    ("{above: 0, below: 1}", "exactly one of within"),
    ("{within: [1, 0]}", "lo <= hi"),
    ("{above: 0, tolerance: 0.1}", "tolerance goes with within"),
    ("{within: [0, .inf]}", "finite"),
    ("{above: .nan}", "finite"),
    ("{within: [0, 1], tolerance: -1}", "greater than or equal to 0"),
])
def test_bad_rules_are_one_line_with_the_line_number(rule, needle):
    with pytest.raises(SpecError, match=needle) as e:
        spec_from_yaml(BASE + "yardsticks:\n" + ENTRY.format(rule=rule), "spec.yaml")
    assert str(e.value).startswith("spec.yaml:8:") and "\n" not in str(e.value)


def test_unknown_keys_and_shapes_are_errors():
    bad = BASE + "yardsticks:\n" + ENTRY.format(rule="{above: 0}").replace("table: t", "tabel: t")
    with pytest.raises(SpecError, match=r"spec.yaml:9: unknown key 'tabel' in yardsticks\[0\]; did you mean 'table'"):
        spec_from_yaml(bad, "spec.yaml")
    with pytest.raises(SpecError, match="did you mean 'yardsticks'"):
        spec_from_yaml(BASE + "yardstick: []\n", "spec.yaml")
    with pytest.raises(SpecError, match="must be a list"):
        spec_from_yaml(BASE + "yardsticks: {a: 1}\n", "spec.yaml")
    with pytest.raises(SpecError, match=r"yardsticks\[0\] must be a mapping"):
        spec_from_yaml(BASE + "yardsticks: [3]\n", "spec.yaml")
    twice = BASE + "yardsticks:\n" + ENTRY.format(rule="{above: 0}") * 2
    with pytest.raises(SpecError, match="spec.yaml:10: yardstick name 'a' is used twice"):
        spec_from_yaml(twice, "spec.yaml")
    many = BASE + "yardsticks:\n" + "".join(ENTRY.format(rule="{above: 0}").replace("name: a", f"name: a{i}")
                                            for i in range(MAX_YARDSTICKS + 1))
    with pytest.raises(SpecError, match=f"at most {MAX_YARDSTICKS} yardsticks"):
        spec_from_yaml(many, "spec.yaml")
    no_value = BASE + "yardsticks:\n" + ENTRY.format(rule="{above: 0}").replace(", value: v", "")
    with pytest.raises(SpecError, match="needs value: COLUMN"):
        spec_from_yaml(no_value, "spec.yaml")
    with pytest.raises(SpecError, match="reduce: binomial needs n"):
        spec_from_yaml(no_value.replace("table: t", "table: t, value: v, reduce: binomial"), "spec.yaml")
    with pytest.raises(SpecError, match="at most 300 characters"):
        spec_from_yaml(BASE + "yardsticks:\n" + ENTRY.format(rule="{above: 0}").replace("paper: p", "paper: " + "p" * 301),
                       "spec.yaml")


def test_yardsticks_round_trip_and_leave_the_spec_hash_alone():
    plain = spec_from_yaml(BASE)
    with_y = spec_from_yaml(BASE + "yardsticks:\n" + ENTRY.format(rule="{within: [0.9, 1.0], tolerance: 0.05}"))
    assert with_y.hash == plain.hash  # they change what the report compares with, not what runs
    again = spec_from_yaml(with_y.to_yaml())
    assert again.to_dict() == with_y.to_dict() and again.yardsticks[0].rule.band == pytest.approx((0.85, 1.05))


def test_builtin_specs_that_replicate_papers_carry_yardsticks():
    carried = {name: load_spec(name).yardsticks for name in builtin_specs()}
    names = {n: [y.name for y in ys] for n, ys in carried.items()}
    assert {"aligned overlap", "raw overlap", "peak relative depth", "PC1 tracks valence"} <= set(names["cross-model"])
    assert {"generation over comprehension (separation)", "steering success rate"} <= set(names["extraction-modes"])
    assert any("random vectors" in n for n in names["introspection"])
    aligned = next(y for y in carried["cross-model"] if y.name == "aligned overlap")
    assert aligned.rule.within == (0.96, 0.99) and "0.96–0.99" in aligned.reported
    gen = next(y for y in carried["extraction-modes"] if "separation" in y.name)
    assert "p = 0.007" in gen.reported and gen.rule.above == 0
    success = next(y for y in carried["extraction-modes"] if y.name == "steering success rate")
    assert "92%" in success.reported and success.definition and success.here


# -- measuring a run -------------------------------------------------------------------------------------------------
def _stage(ctx):
    ctx.write_table("rates", pd.DataFrame({"arm": ["g", "g", "r"], "success_rate": [0.5, 0.25, 1.0],
                                           "n_outputs": [10, 8, 4], "model": ["m", "m", "m"]}))
    ctx.write_table("space", pd.DataFrame({"pc": ["pc1", "pc1"], "model": ["a", "b"], "r": [-0.7, 0.2],
                                           "p": [0.01, 0.6]}))
    ctx.write_table("overlap", pd.DataFrame({"map": ["raw"], "overlap": [float("nan")],
                                             "note": ["undefined: widths differ (576 vs 640)"]}))
    ctx.add_finding(Finding(kind="extraction", observation=Observation(metric="gap over random", value=0.3,
                                                                        interval=(0.1, 0.5), p_value=0.004)))
    return StageResult(summary="planted")


@pytest.fixture
def planted(tmp_path):
    register_stage("fake-yard", replace=True)(_stage)
    ys = [{"name": "pooled", "paper": "p", "reported": "92%", "rule": {"within": [0.92, 0.92], "tolerance": 0.05},
           "measure": {"table": "rates", "where": {"arm": "g"}, "value": "success_rate", "n": "n_outputs",
                       "reduce": "binomial"}},
          {"name": "pc1", "paper": "p", "reported": "r 0.81", "rule": {"above": 0},
           "measure": {"table": "space", "where": {"pc": "pc1"}, "value": "r", "p": "p", "abs": True, "per": ["model"]}},
          {"name": "gap", "paper": "p", "reported": "far above", "rule": {"above": 0},
           "measure": {"finding": {"kind": "extraction", "metric": "over random"}}},
          {"name": "raw", "paper": "p", "reported": "0.13–0.15", "rule": {"within": [0.13, 0.15]},
           "measure": {"table": "overlap", "where": {"map": "raw"}, "value": "overlap", "note": "note"}},
          {"name": "typo", "paper": "p", "reported": "x", "rule": {"above": 0},
           "measure": {"table": "rates", "value": "sucess_rate"}}]
    rd = run_spec(parse_spec({"name": "y", "model": "fake", "stages": ["fake-yard"], "yardsticks": ys}),
                  tmp_path / "run")
    yield rd
    unregister_stage("fake-yard")


def test_measure_pools_splits_and_reads_findings(planted):
    view = RunView.load(planted.root)
    ys = {y["name"]: Yardstick.model_validate(y) for y in view.spec["yardsticks"]}
    (pooled,) = measure(view, ys["pooled"])
    k, n = round(0.5 * 10) + round(0.25 * 8), 18  # successes and outputs of arm g, by hand
    iv = binomial_interval(k, n)
    assert pooled.value == pytest.approx(k / n) and (pooled.lo, pooled.hi) == pytest.approx((iv.lo, iv.hi))
    assert pooled.note == f"{k} of {n} outputs"
    assert judge(ys["pooled"].rule, pooled)[0] == "contradicted"  # 0.39 [≈0.2, ≈0.6] is nowhere near 0.92
    a, b = measure(view, ys["pc1"])
    assert (a.label, a.value, b.label, b.value) == ("a", 0.7, "b", 0.2)  # |r|, one line per model
    assert judge(ys["pc1"].rule, a)[0] == "reproduced" and judge(ys["pc1"].rule, b)[0] == "inconclusive"
    (gap,) = measure(view, ys["gap"])
    assert (gap.value, gap.lo, gap.hi, gap.p) == (0.3, 0.1, 0.5, 0.004)
    (raw,) = measure(view, ys["raw"])
    assert raw.value is None and judge(ys["raw"].rule, raw) == ("inconclusive", "undefined: widths differ (576 vs 640)")
    (typo,) = measure(view, ys["typo"])
    assert typo.value is None and "no column sucess_rate" in typo.note


def test_a_hand_broken_yardstick_section_still_renders_the_report(planted):
    text = planted.spec_path.read_text().replace("reduce: binomial", "reduce: sometimes")
    planted.spec_path.write_text(text)
    page = render_report(planted.root)
    assert "yardsticks in spec.yaml could not be read" in page and 'id="findings-table"' in page
