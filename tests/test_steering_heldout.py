"""Steering findings that survive a reviewer: the best cell is chosen on half the prompts and
reported on the other half, random controls are distributions (a rank, two kinds), the effect is
checked across seeds, and a sweep with few prompts cannot ship."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emoscope.core.stats import binomial_interval, min_pvalue
from emoscope.steering import RegimeThresholds, SteeringResult, SteeringSweep
from emoscope.steering.findings import seed_spread, select_cell, steering_findings
from emoscope.steering.plots import dose_response_figure
from emoscope.steering.regimes import prompt_effects, success_table

from .conftest import tiny_model

LAYERS = (3, 5)
STRENGTHS = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)


def planted(effect: float, n_prompts: int = 40, k: int = 3, kinds=("isotropic",), noise: float = 0.05,
            seed: int = 0, at_layer: int = 5) -> pd.DataFrame:
    """A sweep table (one seed per prompt) whose vector moves the target by ``effect`` in the
    intended direction at ``at_layer`` (every strength) and by nothing elsewhere; random vectors
    move it by nothing. Every output is fluent and 16 tokens long."""
    rng = np.random.default_rng(seed)
    cells = [(layer, s) for layer in LAYERS for s in STRENGTHS]
    names = [("vector", "joy", "")] + [("random", ("random-" if kd == "isotropic" else "random-cov-") + str(j), kd)
                                       for kd in kinds for j in range(k)]
    rows = [("baseline", "baseline", "", -1, 0.0, p) for p in range(n_prompts)]
    rows += [(kind, name, kd, layer, s, p) for p in range(n_prompts) for layer, s in cells for kind, name, kd in names]
    df = pd.DataFrame(rows, columns=["kind", "vector", "random_kind", "layer", "strength", "prompt_id"])
    df["seed"] = 0
    hit = (df["kind"] == "vector") & (df["layer"] == at_layer)
    change = noise * rng.standard_normal(len(df)) + np.where(hit, np.sign(df["strength"]) * effect, 0.0)
    df["target_change"] = np.where(df["kind"] == "baseline", 0.0, change)
    df["target_score"] = 0.5 + df["target_change"]
    df["regime"] = np.where(hit & (effect > 0), "surgical", "no effect")
    df["n_tokens"], df["ppl_ratio"] = 16, 1.0
    return df


def _result(df: pd.DataFrame, n_boot: int = 2000) -> SteeringResult:
    return SteeringResult(table=df, success=success_table(df, "target", n_boot=n_boot), target="target",
                          thresholds=RegimeThresholds())


def test_a_planted_effect_ships_with_every_control_passing():
    df = planted(0.2, kinds=("isotropic", "covariance"))
    findings, summary = steering_findings(_result(df), alpha=0.05, seed=0, max_new_tokens=16,
                                          massive_dims={5: [7], 3: []})
    f = findings[0]
    obs = f.observation
    assert obs.n == 20 and obs.unit == "prompts" and obs.n_searched == len(LAYERS) * len(STRENGTHS)
    assert "layer 5" in obs.metric and obs.value == pytest.approx(0.2, abs=0.05) and obs.interval[0] > 0
    assert obs.p_value < 1e-3
    assert {c.name: c.passed for c in f.controls} == {"random_vectors": True, "heldout_selection": True,
                                                      "multi_token_outputs": True, "fluency": True,
                                                      "seed_spread": True}
    assert f.claim is not None and f.verdict == "ships", f.reasons
    notes = {c.name: c.note for c in f.controls}
    assert "per-prompt paired Wilcoxon of vector change minus mean random change (unit: prompt)" in notes["random_vectors"]
    assert "no Bonferroni" in notes["random_vectors"] and f"cannot go below p = {min_pvalue(3):.2g}" in notes["random_vectors"]
    assert "isotropic random vectors" in notes["random_vectors"] and "covariance-matched random vectors" in notes["random_vectors"]
    assert "massive dimensions [7]" in notes["random_vectors"]
    assert notes["heldout_selection"].startswith("cell chosen on 20 prompts, reported on 20")
    assert "random 1 of the 3 random vectors" in notes["seed_spread"]
    assert "held-out effect" in summary


def test_success_table_ranks_the_vector_among_random_vectors_of_each_kind():
    s = success_table(planted(0.2, k=4, kinds=("isotropic", "covariance")), "target", n_boot=200)
    hit = s[s.layer == 5]
    assert (hit.random_kind == "isotropic").all() and (hit.n == 40).all() and (hit.n_random == 4).all()
    assert (hit["rank"] == 1).all() and np.allclose(hit.rank_p, min_pvalue(4))  # the floor, however strong
    assert (hit.rank_cov == 1).all() and (hit.effect_cov > 0.15).all() and (hit.p_value_cov < 1e-3).all()
    assert (hit.p_value < 1e-6).all()  # the per-prompt Wilcoxon is not bounded by k
    cov_only = success_table(planted(0.2, kinds=("covariance",)), "target", n_boot=0)
    assert (cov_only.random_kind == "covariance").all() and "effect_cov" not in cov_only


def test_selection_uses_only_fluent_cells_of_the_selection_half():
    df = planted(0.2)
    broken = (df.kind == "vector") & (df.layer == 5) & (df.strength == 2.0)
    df.loc[broken, "target_change"] += 1.0  # the largest effect, but collapsed text
    df.loc[broken, "regime"] = "repetitive collapse"
    c = select_cell(df, "joy", against="isotropic", seed=3)
    assert (c.layer, c.strength) != (5, 2.0) and c.layer == 5 and c.n_candidates == c.n_cells - 1
    assert set(c.select_prompts).isdisjoint(c.report_prompts) and len(c.report_prompts) == 20
    assert prompt_effects(df, "joy").shape == (40, 12)


def test_pure_noise_searched_for_its_best_cell_ships_at_the_test_level_only_when_held_out():
    """Pure noise, 12 cells, 40 prompts, 3 random vectors, 200 sweeps. The held-out test of the
    chosen cell passes at about its level; the best cell tested on all prompts passes far more often."""
    n_sims, alpha = 200, 0.05
    heldout = ships = naive = 0
    for sim in range(n_sims):
        df = planted(0.0, noise=1.0, seed=1000 + sim)
        res = _result(df, n_boot=200)
        findings, _ = steering_findings(res, alpha=alpha, seed=sim, n_boot=200, n_seeds=3)
        f = findings[0]
        heldout += next(c.passed for c in f.controls if c.name == "random_vectors")
        ships += f.verdict == "ships"
        best = res.success.sort_values("effect", ascending=False).iloc[0]  # every cell is fluent here
        naive += bool(best.p_value < alpha and best.effect_lo > 0)
    h, sh, nv = (binomial_interval(x, n_sims) for x in (heldout, ships, naive))
    print(f"\nfalse-ship rates over {n_sims} noise sweeps: held-out test {h.point:.3f} [{h.lo:.3f}, {h.hi:.3f}], "
          f"verdict ships {sh.point:.3f} [{sh.lo:.3f}, {sh.hi:.3f}], best cell on all prompts {nv.point:.3f} "
          f"[{nv.lo:.3f}, {nv.hi:.3f}]")
    # a shipped claim also needs the seed spread, so it ships less often than its test passes; the
    # held-out test alone passes at its level (its exact interval covers alpha: 10/200 with these seeds)
    assert sh.point <= alpha and h.lo <= alpha
    assert nv.point > 0.25 and nv.lo > h.hi  # without the split the same search ships far more often


def test_seed_spread_fails_on_noise_and_says_how_random_seeds_were_resampled():
    spread = seed_spread(planted(0.0, noise=1.0, k=4, seed=7), "joy", against="isotropic", seed=0, n_seeds=5)
    assert len(spread.estimates) == 5 and spread.subset == 2 and spread.k == 4
    assert not spread.passed and "random 2 of the 4 random vectors" in spread.note()
    good = seed_spread(planted(0.2, k=4), "joy", against="isotropic", n_seeds=3)
    assert good.passed and all(e > 0.15 for e in good.estimates)


def test_dose_response_shows_every_random_vector():
    fig = dose_response_figure(_result(planted(0.2, k=3, kinds=("isotropic", "covariance")), n_boot=0))
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    # per kind: 3 thin lines (one labelled) and the mean
    assert labels.count("isotropic random, each of 3") == 1 and labels.count("covariance random, mean") == 1
    assert len([la for la in labels if la.startswith("_")]) >= 4


def test_six_prompts_on_a_tiny_model_cannot_ship():
    model = tiny_model("llama")
    rng = np.random.default_rng(5)
    vec = {1: rng.standard_normal(model.d_model).astype(np.float32)}
    prompts = ["Thank you so much for the", "The meeting is", "Rain is expected", "She walked to the market",
               "I am sorry I", "The train was"]
    res = SteeringSweep(model, vec, [1], [2], prompts, max_new_tokens=4, n_random=2, norms={1: 2.0},
                        scorers=["vader", "perplexity", "repetition", "script"], target="valence",
                        progress=False).run()
    assert set(res.table.loc[res.table.kind == "random", "random_kind"]) == {"isotropic", "covariance"}
    findings, _ = steering_findings(res, max_new_tokens=4)
    f = findings[0]
    assert f.observation.n == 3 and f.observation.unit == "prompts" and f.verdict != "ships"


def test_without_random_vectors_or_a_second_prompt_nothing_ships():
    no_random, _ = steering_findings(_result(planted(0.2, k=0), n_boot=0), n_boot=0)
    ctl = {c.name: c for c in no_random[0].controls}
    assert ctl["random_vectors"].passed is None and no_random[0].claim is None
    assert "from baseline" in no_random[0].observation.metric and no_random[0].verdict != "ships"
    one, _ = steering_findings(_result(planted(0.2, n_prompts=1), n_boot=0), n_boot=0)
    assert one[0].observation.n == 1 and "not held out" in one[0].observation.metric
    assert one[0].verdict != "ships" and one[0].claim is None


def test_the_claim_must_beat_covariance_matched_random_vectors_too():
    """A vector that beats isotropic random vectors but not covariance-matched ones (which, on a
    model with massive dimensions, push where the activations vary) does not pass."""
    df = planted(0.2, kinds=("isotropic", "covariance"))
    cov_rows = (df["kind"] == "random") & (df["random_kind"] == "covariance") & (df["layer"] == 5)
    df.loc[cov_rows, "target_change"] += np.sign(df.loc[cov_rows, "strength"]) * 0.2  # as strong as the vector
    findings, _ = steering_findings(_result(df), alpha=0.05, seed=0, max_new_tokens=16)
    rv = next(c for c in findings[0].controls if c.name == "random_vectors")
    assert rv.passed is False and findings[0].claim is None and findings[0].verdict == "fails"
    assert rv.value > 0.05  # the larger p of the two comparisons
