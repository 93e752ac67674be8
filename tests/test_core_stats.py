"""The shared statistics, random directions and strength unit, against independent computations
and planted effects (each control is shown to pass when the effect is there and fail when not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoscope.core.directions import random_directions, random_layer_directions, random_subspaces
from emoscope.core.stats import (
    binomial_interval,
    bonferroni,
    bootstrap,
    holm,
    min_pvalue,
    paired_test,
    permutation_null,
    permutation_pvalue,
    unpaired_test,
)
from emoscope.errors import InputError

from .conftest import tiny_model


def test_bootstrap_covers_the_true_mean_at_its_level():
    # coverage over 300 planted samples: a 95% interval should cover the true mean ~95% of the time
    rng = np.random.default_rng(0)
    cover = []
    for i in range(300):
        x = rng.normal(2.0, 1.0, 60)
        _, lo, hi = bootstrap(x, n_boot=400, seed=i)
        cover.append(lo < 2.0 < hi)
    share = float(np.mean(cover))
    ci = binomial_interval(int(np.sum(cover)), len(cover))
    assert 0.90 <= share <= 0.99 and ci.lo <= 0.95 <= ci.hi + 0.02


def test_bootstrap_grouped_resamples_units_and_drops_non_finite():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(30), 8)
    clustered = np.repeat(rng.normal(size=30), 8) + 0.01 * rng.normal(size=240)
    _, lo_rows, hi_rows = bootstrap(clustered, seed=0)
    _, lo_units, hi_units = bootstrap(clustered, groups, seed=0)
    assert hi_units - lo_units > 2 * (hi_rows - lo_rows)  # 30 units, not 240 independent rows
    point, lo, hi = bootstrap([1.0, np.nan, 3.0, np.inf])
    assert point == 2.0 and lo >= 1.0 and hi <= 3.0
    one = bootstrap([5.0])
    assert one.point == 5.0 and np.isnan(one.lo) and np.isnan(one.hi)
    with pytest.raises(InputError):
        bootstrap(np.ones((2, 2)))


def test_permutation_pvalue_floor_and_directions():
    assert permutation_pvalue(0.9, [0.1] * 99) == 0.01 == min_pvalue(99)
    assert permutation_pvalue(0.1, [0.1] * 99) == 1.0
    assert permutation_pvalue(-5.0, [0.0, 1.0, -1.0], alternative="less") == 0.25
    assert permutation_pvalue(-5.0, [0.0, 1.0, -1.0], alternative="two-sided") == 0.25
    with pytest.raises(InputError):
        permutation_pvalue(1.0, [0.0], alternative="bigger")


def _mean_gap(x):
    return lambda labels: float(x[labels == 1].mean() - x[labels == 0].mean())


def test_permutation_null_rejects_a_planted_effect_and_holds_its_level_without_one():
    # null: labels carry no information about x; the test must reject at most ~alpha of the time
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 20)
    false = 0
    for i in range(100):
        x = rng.normal(size=40)
        null = permutation_null(_mean_gap(x), y, 99, seed=i)
        false += permutation_pvalue(_mean_gap(x)(y), null) < 0.05
    ci = binomial_interval(false, 100)
    assert ci.lo <= 0.05  # consistent with the level
    x = rng.normal(size=40) + 1.5 * y  # planted
    null = permutation_null(_mean_gap(x), y, 199, seed=0)
    assert permutation_pvalue(_mean_gap(x)(y), null) == min_pvalue(199)
    # within-group permutation keeps each group's labels inside the group
    g = np.repeat([0, 1], 20)
    yy = np.tile([0, 1], 20)
    seen = permutation_null(lambda lab: float(lab[:20].sum()), yy, 20, seed=0, groups=g)
    assert np.all(seen == 10)


def test_paired_and_unpaired_tests():
    rng = np.random.default_rng(3)
    base = rng.normal(size=40)
    assert paired_test(base + 0.5 - base) < 1e-6  # every unit moved up
    rejections = sum(paired_test(rng.normal(size=30)) < 0.05 for _ in range(200))  # noise alone
    assert binomial_interval(rejections, 200).lo <= 0.05
    assert paired_test(np.zeros(5)) == 1.0 and np.isnan(paired_test([np.nan]))
    assert unpaired_test(rng.normal(1.0, 1, 50), rng.normal(0, 1, 50)) < 0.01
    assert unpaired_test([1, 1], [1, 1]) == 1.0
    assert unpaired_test(rng.normal(1.0, 1, 50), rng.normal(0, 1, 50), alternative="less") > 0.9


def test_holm_and_bonferroni_against_hand_computation():
    p = [0.01, 0.03, 0.04, 0.2]
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(bonferroni(p), [0.04, 0.12, 0.16, 0.8])
    out = holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.02, 0.02])


def test_random_directions_are_seeded_unit_and_optionally_covariance_matched():
    a = random_directions(50, 200, seed=0)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0) and np.array_equal(a, random_directions(50, 200, seed=0))
    assert not np.array_equal(a, random_directions(50, 200, seed=1))
    # a covariance with one dominant dimension (a "massive activation"): matched draws land on it
    cov = np.eye(50)
    cov[7, 7] = 400.0
    b = random_directions(50, 200, seed=0, cov=cov)
    assert np.mean(np.abs(b[:, 7])) > 0.6 and np.mean(np.abs(a[:, 7])) < 0.2  # E|z| = 0.8 * 20 / sqrt(449) vs 0.8 / sqrt(50)
    # the per-layer stream runs draw by draw, layer by layer (what steering and injection used before)
    draws = random_layer_directions(8, [3, 5], 2, seed=4)
    rng = np.random.default_rng(4)
    for k in range(2):
        for layer in (3, 5):
            v = rng.standard_normal(8)
            assert np.allclose(draws[k][layer], v / np.linalg.norm(v))
    q = random_subspaces(10, 3, 2, seed=0)
    assert q.shape == (10, 6) and np.allclose(q[:, 3:].T @ q[:, 3:], np.eye(3))
    with pytest.raises(InputError):
        random_layer_directions(8, [3], 1, cov={4: np.eye(8)})


def test_norm_profile_finds_a_planted_massive_dimension():
    from emoscope.vectors.strength import norm_profile

    rng = np.random.default_rng(0)
    h = rng.normal(size=(100, 64))
    plain = norm_profile(h)
    assert plain["massive_dims"] == [] and plain["token_norm_robust"] == pytest.approx(plain["token_norm"])
    h[:, 9] += 40.0
    p = norm_profile(h)
    assert p["massive_dims"] == [9] and p["top_dim"] == 9 and p["top_dim_share"] > 0.9
    want = np.linalg.norm(np.delete(h, 9, axis=1), axis=1).mean()
    assert p["token_norm_robust"] == pytest.approx(want) and p["token_norm"] > 5 * p["token_norm_robust"]


def test_measure_unit_matches_raw_hooks_and_travels_with_the_vector(tmp_path, monkeypatch):
    import emoscope.vectors.strength as units
    from emoscope.vectors import ConceptVector
    from emoscope.vectors.strength import UNIT_KEY, measure_unit, vector_unit, with_unit

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(units, "_MEMO", {})  # the planted hook below edits the model: measure afresh
    model = tiny_model("llama")
    texts = ["Thank you so much for the lovely gift.", "The meeting is at three."]
    # plant a massive dimension: block 1's output gets a large constant in dimension 5
    states = []

    def plant(_m, _i, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[..., 5] += 300.0
        states.append(h[0, 1:].detach().double().numpy())
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.blocks[1].register_forward_hook(plant)
    try:
        for t in texts:
            with torch.inference_mode():
                model.hf(**model.tokenizer(t, return_tensors="pt"))
        rows = np.concatenate(states)
        states.clear()
        plain = measure_unit(model, [1], texts=texts)
        robust = measure_unit(model, [1], "token_norm_robust", texts=texts)
    finally:
        handle.remove()
    assert plain.values[1] == pytest.approx(np.linalg.norm(rows, axis=1).mean(), rel=1e-5)
    assert robust.massive_dims[1] == [5]
    assert robust.values[1] == pytest.approx(np.linalg.norm(np.delete(rows, 5, axis=1), axis=1).mean(), rel=1e-5)
    with pytest.raises(InputError, match="cannot be measured"):
        measure_unit(model, [1], "trial_norm")
    v = with_unit(ConceptVector("joy", {1: np.ones(32, dtype=np.float32)}, {}), robust)
    v.save(tmp_path / "joy.safetensors")
    back = ConceptVector.load(tmp_path / "joy.safetensors")
    assert back.meta[UNIT_KEY]["name"] == "token_norm_robust"
    assert vector_unit(back, "token_norm_robust").values == {1: pytest.approx(robust.values[1])}
    assert vector_unit(back, "token_norm") is None
