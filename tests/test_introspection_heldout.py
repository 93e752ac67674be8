"""The introspection finding survives a reviewer: random vectors as distributions (a Mann-Whitney
test over vectors), the reported cell chosen on half the concepts and reported on the other half,
isotropic and covariance-matched random directions, the seed spread, and too few concepts never
holding. Table-level tests plant effects in a per-vector table; sweep-level tests run the tiny
3-layer model of ``tests.helpers.intro_model`` (single-token yes/no spellings)."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from emoscope.errors import InputError
from emoscope.introspection.heldout import N_SPLITS, SPREAD_SHARE, compare_random, heldout_finding
from emoscope.introspection.tables import score_matrix, summary_table
from tests.helpers import QUESTIONS, intro_model

CELLS = [(1, 2.0), (1, 4.0), (2, 2.0), (2, 4.0)]


def _per_vector(effect=0.0, *, n_concepts=24, n_random=10, seed=0, planted_cell=None, random_cov=True):
    """A per-vector table: concept scores ``N(effect, 0.5)`` (only at ``planted_cell`` if given),
    random-vector scores ``N(0, 0.5)`` of both kinds, at every cell of ``CELLS``."""
    rng = np.random.default_rng(seed)
    conds = [("concept", n_concepts), ("random", n_random)] + ([("random_cov", n_random)] if random_cov else [])
    rows = []
    for cond, n in conds:
        for i in range(n):
            for layer, s in CELLS:
                mu = effect if cond == "concept" and (planted_cell is None or (layer, s) == planted_cell) else 0.0
                det, ctl = rng.normal(mu, 0.5), rng.normal(0.0, 0.1)
                rows.append({"condition": cond, "vector": f"{cond}:{i}", "layer": layer, "relative_depth": layer / 3,
                             "strength": s, "detection_diff": det, "detection_shift": det + ctl,
                             "control_shift": ctl, "control_shift_sd": 0.1, "detection_p_yes": 0.5,
                             "score": det})
    return pd.DataFrame(rows)


# -- the random-vector control: a test over vectors -------------------------------------------------
def test_planted_effect_passes_the_random_control_and_no_effect_does_not():
    h = heldout_finding(_per_vector(1.0), seed=0, n_boot=200)
    assert h.random.passed is True and h.random.p_value < 0.05
    assert h.random.n_concepts == h.n == 12 and h.random.n_random == 10
    assert h.random_cov.passed is True  # reported beside it
    null = heldout_finding(_per_vector(0.0), seed=0, n_boot=200)
    assert null.random.passed is False and null.random.p_value >= 0.05


def test_random_control_is_the_mann_whitney_test_of_the_report_concepts():
    from scipy.stats import mannwhitneyu

    pv = _per_vector(0.6, seed=3)
    h = heldout_finding(pv, seed=0, n_boot=200)
    at = pv[(pv.layer == h.layer) & (pv.strength == h.strength)].set_index("vector")
    concepts = at.loc[list(h.report)].score
    rand = at[at.condition == "random"].score
    assert h.random.p_value == pytest.approx(mannwhitneyu(concepts, rand, alternative="greater").pvalue)
    assert h.random.concept_mean == pytest.approx(concepts.mean())
    assert h.random.random_min == pytest.approx(rand.min()) and h.random.random_max == pytest.approx(rand.max())


def test_null_sweeps_rarely_pass_the_random_control():
    passed = [heldout_finding(_per_vector(0.0, seed=s), seed=s, n_boot=0).random.passed for s in range(60)]
    assert np.mean(passed) <= 0.15


def test_rank_floor_leaves_an_unreachable_test_unjudged():
    one = compare_random([5.0], np.arange(10.0))  # best possible rank, floor 1/11
    assert one.floor == pytest.approx(1 / 11) and one.passed is None and "out of reach" in one.describe()
    two = compare_random([50.0, 60.0], np.arange(10.0))  # floor 1/C(12, 2) = 1/66
    assert two.floor == pytest.approx(1 / 66) and two.passed is True
    assert compare_random([1.0, 2.0], []).passed is None


def test_summary_table_compares_with_both_kinds_of_random_vectors():
    s = summary_table(_per_vector(1.0), n_boot=200)
    assert set(s.condition) == {"concept", "random", "random_cov"}
    c = s[s.condition == "concept"]
    assert (c.p_vs_random < 0.05).all() and (c.p_vs_random_cov < 0.05).all()
    assert c.score_minus_random.notna().all() and c.score_minus_random_cov.notna().all()
    r = s[s.condition == "random"]
    assert r.p_vs_random.isna().all() and (r.score_min < r.score).all() and (r.score < r.score_max).all()


# -- held-out selection ------------------------------------------------------------------------------
def test_cell_is_chosen_on_one_half_and_reported_on_the_other():
    pv = _per_vector(1.5, planted_cell=(2, 4.0), seed=1)
    h = heldout_finding(pv, seed=0, n_boot=200)
    assert (h.layer, h.strength) == (2, 4.0) and h.n_searched == 4
    assert set(h.select).isdisjoint(h.report) and len(h.select) + len(h.report) == 24
    # value from the report half only, recomputed from the table
    m, names, cells = score_matrix(pv)
    rep = [names.index(v) for v in h.report]
    sel = [names.index(v) for v in h.select]
    assert h.score.point == pytest.approx(m[rep, cells.index((2, 4.0))].mean())
    assert cells[int(np.argmax(m[sel].mean(0)))] == (2, 4.0)
    assert h.score.lo < h.score.point < h.score.hi and h.p_value < 0.01
    assert "chosen on 12 concepts, reported on 12" in h.selection_note


def test_a_fixed_cell_searches_nothing_and_reports_every_concept():
    pv = _per_vector(1.0)
    h = heldout_finding(pv, focus_layer=1, focus_strength=2.0, seed=0, n_boot=200)
    assert h.n_searched == 1 and h.select == () and h.n == 24 and (h.layer, h.strength) == (1, 2.0)
    assert h.score.point == pytest.approx(score_matrix(pv)[0][:, 0].mean())
    assert "nothing searched" in h.selection_note and "reported on all 24" in h.selection_note
    h = heldout_finding(pv, focus_layer=2, seed=0, n_boot=200)  # layer fixed: strengths searched
    assert h.n_searched == 2 and h.layer == 2 and h.n == 12
    with pytest.raises(InputError, match="no swept cell"):
        heldout_finding(pv, focus_layer=7)


# -- seed spread ---------------------------------------------------------------------------------------
def test_seed_spread_passes_for_a_stable_effect_and_not_for_noise():
    h = heldout_finding(_per_vector(1.0), seed=0, n_boot=200)
    splits = h.splits
    assert (splits.kind == "concept_split").sum() == N_SPLITS and (splits.kind == "random_subset").sum() == N_SPLITS
    assert (splits[splits.kind == "random_subset"].n == 5).all()
    assert h.spread_passed is True and h.spread_threshold == pytest.approx(SPREAD_SHARE * abs(h.score.point))
    assert "no new draws" in h.spread_note
    null = heldout_finding(_per_vector(0.0), seed=0, n_boot=200)
    assert null.spread_passed is False


# -- sweeps on the tiny model ----------------------------------------------------------------------------
def test_defaults_are_ten_random_vectors_of_both_kinds():
    from emoscope.introspection import run_sweep
    from emoscope.introspection.stage import IntrospectOptions

    params = inspect.signature(run_sweep).parameters
    assert params["n_random"].default == IntrospectOptions().n_random == 10
    assert params["random_kind"].default == IntrospectOptions().random_kind == "both"


def test_covariance_matched_random_vectors_appear_as_random_cov_rows():
    from emoscope.introspection import run_sweep

    model = intro_model("llama", True)
    res = run_sweep(model, concepts=["ocean", "bread", "dog"], baseline=["table", "chair"], controls=QUESTIONS[:1],
                    layers=[1, 2], strengths=[2], n_random=3, heads=False, n_boot=100)
    pv = res.per_vector
    assert set(pv.condition) == {"concept", "random", "random_cov"}
    assert sorted(pv[pv.condition == "random_cov"].vector.unique()) == ["random_cov:0", "random_cov:1", "random_cov:2"]
    s = res.summary
    assert (s[s.condition == "random_cov"].n == 3).all() and len(s[s.condition == "random_cov"]) == 2
    # same norm as the concepts at every layer x strength (the bank normalises every vector)
    inj = res.cells[res.cells.condition != "baseline"]
    assert inj.groupby(["layer", "strength"]).scale.nunique().max() == 1
    assert res.meta["random_conditions"] == ["random", "random_cov"]
    assert set(res.meta["massive_dims"]) == {1, 2}
    # isotropic only / covariance only
    iso = run_sweep(model, concepts=["ocean", "bread"], baseline=["table"], controls=QUESTIONS[:1], layers=[1],
                    strengths=[2], n_random=2, random_kind="isotropic", heads=False, n_boot=100)
    assert set(iso.per_vector.condition) == {"concept", "random"} and iso.heldout.random_cov is None
    cov = run_sweep(model, concepts=["ocean", "bread"], baseline=["table"], controls=QUESTIONS[:1], layers=[1],
                    strengths=[2], n_random=2, random_kind="covariance", heads=False, n_boot=100)
    assert set(cov.per_vector.condition) == {"concept", "random_cov"}
    assert cov.heldout.judged_against.condition == "random_cov"
    with pytest.raises(InputError, match="random_kind"):
        run_sweep(model, concepts=["ocean"], layers=[1], strengths=[2], random_kind="gaussian")


def test_covariance_matched_draws_follow_the_covariance():
    from emoscope.introspection.concepts import random_vectors

    cov = np.eye(16)
    cov[3, 3] = 400.0  # one dimension carries almost all the variance
    matched = random_vectors(16, [0], 50, seed=0, cov={0: cov}, prefix="random_cov")
    iso = random_vectors(16, [0], 50, seed=0)
    assert matched[0].name == "random_cov:0" and "covariance" in matched[0].meta["method"]
    share_matched = np.mean([v[0][3] ** 2 for v in matched])
    share_iso = np.mean([v[0][3] ** 2 for v in iso])
    assert share_matched > 0.6 and share_iso < 0.2  # 1/16 expected for isotropic draws
    assert all(abs(np.linalg.norm(v[0]) - 1) < 1e-5 for v in matched)


def test_three_concepts_never_hold_or_ship(tmp_path):
    """An introspection run on 3 concepts: the report half has 1 concept (searched) or the whole
    set of 3 (cell fixed), below the minimum n, and neither finding holds or ships, with or
    without a claim."""
    from emoscope.introspection import run_sweep
    from emoscope.introspection.stage import findings_from_result

    model = intro_model("llama", True)
    kw = dict(concepts=["ocean", "bread", "dog"], baseline=["table", "chair"], controls=QUESTIONS[:2],
              layers=[1, 2], strengths=[1, 4], heads=False, n_boot=200)
    searched = run_sweep(model, **kw)
    fixed = run_sweep(model, focus_layer=2, focus_strength=4, **kw)
    assert searched.heldout.n == 1 and searched.heldout.n_searched == 4
    assert fixed.heldout.n == 3 and fixed.heldout.n_searched == 1
    for res in (searched, fixed):
        for claim in (None, "the model detects injected concepts"):
            (f,) = findings_from_result(res, claim=claim)
            assert f.verdict not in ("holds", "ships"), f.reasons
            assert f.observation.unit == "concepts" and f.observation.n == res.heldout.n
            assert f.observation.n_searched == res.heldout.n_searched
    (f,) = findings_from_result(searched)
    rv = next(c for c in f.controls if c.name == "random_vectors")
    assert rv.passed is None and "1/C(11,1)" in rv.note and "isotropic" in rv.note and "ovariance-matched" in rv.note
    hs = next(c for c in f.controls if c.name == "heldout_selection")
    assert hs.passed is True and hs.note.startswith("chosen on 2 concepts, reported on 1")


def test_stage_finding_records_the_test_that_decides_it():
    from emoscope.introspection.heldout import heldout_finding as hf
    from emoscope.introspection.stage import introspection_finding

    h = hf(_per_vector(1.0), seed=0, n_boot=200)
    f = introspection_finding(h, massive={h.layer: [7]})
    assert f.verdict == "holds", f.reasons  # 12 report concepts, every control passed, no claim
    o = f.observation
    # the p the run corrects over is the comparison with random vectors (worst over kinds), not the
    # score's own Wilcoxon p against 0
    worst = max(h.random.p_value, h.random_cov.p_value)
    assert (o.n, o.unit, o.n_searched) == (12, "concepts", 4) and o.p_value == pytest.approx(worst)
    assert o.p_floor == pytest.approx(max(h.random.floor, h.random_cov.floor)) and o.p_floor < 1e-5
    assert o.value == pytest.approx(h.score.point) and f"layer {h.layer}" in o.metric
    rv = next(c for c in f.controls if c.name == "random_vectors")
    assert "must beat every kind" in rv.note and "massive dimension(s) [7]" in rv.note
    # both kinds ran: the control reports the larger p and passes only when both are beaten
    assert rv.value == pytest.approx(max(h.random.p_value, h.random_cov.p_value)) and rv.threshold == 0.05
    assert rv.passed is (h.random.passed and h.random_cov.passed)
    f = introspection_finding(hf(_per_vector(0.0), seed=0, n_boot=200))
    assert f.verdict == "fails"
