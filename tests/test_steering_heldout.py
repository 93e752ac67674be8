"""Steering findings that survive a reviewer: the best cell is chosen on half the prompts and
reported on the other half, every random vector goes through the same search and is one draw of
the null (two kinds), the effect is checked across seeds, and a sweep with few prompts cannot ship."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emoscope.core.stats import binomial_interval, min_pvalue, paired_test
from emoscope.steering import RegimeThresholds, SteeringResult, SteeringSweep
from emoscope.steering.findings import entity_table, search_draws, seed_spread, steering_findings
from emoscope.steering.plots import dose_response_figure
from emoscope.steering.regimes import success_table

from .conftest import tiny_model

LAYERS = (3, 5)
STRENGTHS = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)


def planted(effect: float, n_prompts: int = 40, k: int = 10, kinds=("isotropic",), noise: float = 0.05,
            seed: int = 0, at_layer: int = 5, tau: float = 0.0) -> pd.DataFrame:
    """A sweep table (one seed per prompt) whose vector moves the target by ``effect`` in the
    intended direction at ``at_layer`` (every strength) and by nothing elsewhere; every entity
    (the vector and each random vector) also has an effect of its own per cell, ``tau`` x N(0, 1)
    (the draw-to-draw spread real models have). Every output is fluent and 16 tokens long."""
    rng = np.random.default_rng(seed)
    cells = [(layer, s) for layer in LAYERS for s in STRENGTHS]
    names = [("vector", "joy", "")] + [("random", ("random-" if kd == "isotropic" else "random-cov-") + str(j), kd)
                                       for kd in kinds for j in range(k)]
    own = {name: tau * rng.standard_normal(len(cells)) for _, name, _ in names}
    rows = [("baseline", "baseline", "", -1, 0.0, p, 0.0) for p in range(n_prompts)]
    rows += [(kind, name, kd, layer, s, p, own[name][c]) for p in range(n_prompts)
             for c, (layer, s) in enumerate(cells) for kind, name, kd in names]
    df = pd.DataFrame(rows, columns=["kind", "vector", "random_kind", "layer", "strength", "prompt_id", "own"])
    df["seed"] = 0
    hit = (df["kind"] == "vector") & (df["layer"] == at_layer)
    change = noise * rng.standard_normal(len(df)) + np.sign(df["strength"]) * (np.where(hit, effect, 0.0) + df["own"])
    df["target_change"] = np.where(df["kind"] == "baseline", 0.0, change)
    df["target_score"] = 0.5 + df["target_change"]
    df["regime"] = np.where(hit & (effect > 0), "surgical", "no effect")
    df["n_tokens"], df["ppl_ratio"] = 16, 1.0
    return df.drop(columns="own")


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
    # the value is the excess over the draws' mean, each draw at its own chosen cell (its best of
    # 12 noise cells on the selection half, so about 0 on the report half)
    assert "layer 5" in obs.metric and obs.value == pytest.approx(0.2, abs=0.05) and obs.interval[0] > 0
    # about 20 draw sds above the draws; the heavy reference (best of 12 cells of t3 effects) still
    # gives it a p near 1e-3: the price of not assuming the draws are normal
    assert obs.p_value < 0.01 and obs.p_floor is not None and obs.p_floor < 1e-4
    assert {c.name: c.passed for c in f.controls} == {"random_vectors": True, "heldout_selection": True,
                                                      "multi_token_outputs": True, "fluency": True,
                                                      "seed_spread": True}
    assert f.claim is not None and f.verdict == "ships", f.reasons
    notes = {c.name: c.note for c in f.controls}
    rv = notes["random_vectors"]
    assert "unit: the draw" in rv and "put through the candidate's search" in rv and "rank 1 of 11" in rv
    assert f"cannot go below {min_pvalue(10):.3g}" in rv and "20 draws reach p < 0.05" in rv
    assert "isotropic random vectors" in rv and "covariance random vectors" in rv
    assert "massive dimensions [7]" in rv
    assert notes["heldout_selection"].startswith("cell chosen on 20 prompts, reported on 20")
    assert "the whole search re-run each time" in notes["seed_spread"]
    assert "held-out change" in summary and "rank 1/11" in summary


def test_success_table_ranks_the_vector_among_random_vectors_of_each_kind():
    s = success_table(planted(0.2, k=4, kinds=("isotropic", "covariance")), "target", n_boot=200)
    hit = s[s.layer == 5]
    assert (hit.random_kind == "isotropic").all() and (hit.n == 40).all() and (hit.n_random == 4).all()
    assert (hit["rank"] == 1).all() and np.allclose(hit.rank_p, min_pvalue(4))  # the floor, however strong
    assert (hit.rank_cov == 1).all() and (hit.effect_cov > 0.15).all() and (hit.p_value_cov < 1e-3).all()
    assert (hit.p_value < 1e-6).all()  # the per-prompt Wilcoxon is not bounded by k
    cov_only = success_table(planted(0.2, kinds=("covariance",)), "target", n_boot=0)
    assert (cov_only.random_kind == "covariance").all() and "effect_cov" not in cov_only


def test_every_entity_chooses_only_among_its_own_fluent_cells_of_the_selection_half():
    df = planted(0.2)
    broken = (df.kind == "vector") & (df.layer == 5) & (df.strength == 2.0)
    df.loc[broken, "target_change"] += 1.0  # the largest effect, but collapsed text
    df.loc[broken, "regime"] = "repetitive collapse"
    # random-0 is broken (and looks strong) in one cell too: it may not choose it either
    rb = (df.vector == "random-0") & (df.layer == 3) & (df.strength == -1.0)
    df.loc[rb, "target_change"] -= 1.0
    df.loc[rb, "regime"] = "explosive"
    ent = entity_table(df, "joy", ["isotropic"])
    assert ent.values.shape == (11, 40, 12) and ent.names[0] == "joy" and ent.kinds[1] == "isotropic"
    d = search_draws(ent, seed=3)
    assert (d.layer, d.strength) != (5, 2.0) and d.layer == 5 and d.n_candidates == d.n_cells - 1
    assert ent.cells[d.cells[1]] != (3, -1.0)
    assert set(d.select_prompts).isdisjoint(d.report_prompts) and len(d.report_prompts) == 20
    # the vector's value is its own mean change on the report prompts at its chosen cell
    mine = df[(df.vector == "joy") & (df.layer == d.layer) & (df.strength == d.strength)
              & df.prompt_id.isin(d.report_prompts)]
    assert d.held[0] == pytest.approx(float((np.sign(mine.strength) * mine.target_change).mean()))


def test_the_fluency_filter_counts_broken_text_only_where_steering_broke_it():
    """As gemma3-270m: the model loops with no steering on a quarter of the prompts, and those outputs
    stay looped at every cell. Counted on every prompt, no cell of the selection half is mostly fluent
    (so every cell, the exploded one too, may be chosen); counted on the prompts whose unsteered
    output is intact, the filter keeps the fluent cells and drops the exploded one."""
    df = planted(0.2)
    loops = df.prompt_id % 4 == 0  # 10 of 40 prompts, at baseline and at every cell, every entity
    df.loc[loops, "regime"] = "repetitive collapse"
    # a quarter more of the outputs break at every cell: 50% broken on every prompt, 33% on the rest
    df.loc[(df.prompt_id % 4 == 1) & (df.kind != "baseline"), "regime"] = "repetitive collapse"
    boom = (df.kind == "vector") & (df.layer == 5) & (df.strength == 2.0) & (df.prompt_id % 4 >= 2)
    df.loc[boom, "target_change"] += 1.0  # the largest effect, on exploded text
    df.loc[boom, "regime"] = "explosive"
    ent = entity_table(df, "joy", ["isotropic"])
    assert np.isnan(ent.broken[:, ::4, :]).all()  # the prompts that loop unsteered are not counted
    # by hand: on the other 30 prompts, a cell's broken share is the share of its rows in BROKEN
    rows = df[(df.vector == "joy") & (df.layer == 5) & (df.strength == 2.0) & (df.prompt_id % 4 != 0)]
    by_prompt = rows.groupby("prompt_id")["regime"].apply(lambda r: r.isin(["repetitive collapse", "explosive"]).mean())
    c = ent.cells.index((5, 2.0))
    assert np.allclose(ent.broken[0, [i for i in range(40) if i % 4], c], by_prompt.to_numpy())
    d = search_draws(ent, seed=3)
    assert d.n_candidates == d.n_cells - 1 and (d.layer, d.strength) != (5, 2.0) and d.layer == 5
    # the old count (every prompt): every cell at or above one half broken, so every cell a candidate
    old = search_draws(entity_table(df.assign(kind=df.kind.replace("baseline", "unsteered")), "joy",
                                    ["isotropic"]), seed=3)
    assert old.n_candidates == old.n_cells and (old.layer, old.strength) == (5, 2.0)


def test_a_decoy_with_a_direction_of_its_own_does_not_ship_where_a_per_prompt_test_would():
    """The candidate is one more random vector: every entity has an effect of its own per cell
    (tau = 1 x the prompt noise), 40 prompts, 10 draws per kind, 200 sweeps. Judged by the draws,
    the decoy ships at most at the test's level; the per-prompt Wilcoxon of the old design (the
    chosen cell's change minus the draws' mean change) passes most of the time."""
    n_sims, alpha = 200, 0.05
    ships = per_prompt = 0
    for sim in range(n_sims):
        df = planted(0.0, noise=1.0, tau=1.0, seed=1000 + sim)
        res = SteeringResult(table=df, success=pd.DataFrame(), target="target", thresholds=RegimeThresholds())
        findings, _ = steering_findings(res, alpha=alpha, seed=sim, n_boot=0, n_seeds=3, vectors=["joy"])
        ships += findings[0].verdict == "ships"
        d = search_draws(entity_table(df, "joy", ["isotropic"]), seed=sim, n_boot=0)
        mine = d.entities.values[0, d.report, d.cells[0]]
        others = d.entities.values[1:, :, d.cells[0]][:, d.report].mean(0)
        per_prompt += paired_test(mine - others, "greater") < alpha
    sh, pp = binomial_interval(ships, n_sims), binomial_interval(per_prompt, n_sims)
    print(f"\ndecoy (tau 1) over {n_sims} sweeps: ships {sh.point:.3f} [{sh.lo:.3f}, {sh.hi:.3f}]; "
          f"per-prompt test vs the draws' mean {pp.point:.3f} [{pp.lo:.3f}, {pp.hi:.3f}]")
    assert sh.point <= alpha
    assert pp.point > 0.4 and pp.lo > sh.hi


def test_seed_spread_fails_on_noise_and_re_runs_the_whole_search():
    spread = seed_spread(entity_table(planted(0.0, noise=1.0, k=4, seed=7), "joy"), seed=0, n_seeds=5)
    assert len(spread.estimates) == 5 and spread.k == 4
    assert not spread.passed and "the whole search re-run each time" in spread.note()
    good = seed_spread(entity_table(planted(0.2, k=4), "joy"), n_seeds=3)
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
    assert no_random[0].observation.p_value is not None  # the change test still counts in the family
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
    assert rv.value > 0.05 and findings[0].observation.p_value == rv.value  # the worst of the two kinds
