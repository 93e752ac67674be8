"""Statistical review of the probe's tests (issue 22): the shuffled-label p accounts for the
search over layers (null of the best layer), the held-out p treats groups as units, and every
label permutation keeps groups. Checked by enumeration and by simulation under the null."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from emoscope.core.stats import binomial_test, group_permutations
from emoscope.probing import LayerProbe, ProbeControls, probe_layers
from emoscope.probing._splits import make_folds
from emoscope.probing.controls import RidgePermutation, heldout_test, max_over_layers
from emoscope.probing.stage import probe_finding

# -- group-preserving permutations ------------------------------------------------------------


def test_group_permutations_keep_groups_and_are_uniform_over_arrangements():
    # one label per group: whole groups swap labels, every arrangement equally likely (enumerated)
    y = np.array(list("aaabbcc"))  # groups of sizes 3, 2, 2 with labels a, b, c
    g = np.array([0, 0, 0, 1, 1, 2, 2])
    perms = group_permutations(y, 6000, groups=g, seed=0)
    assert all(len(set(p[g == k])) == 1 for p in perms for k in range(3))
    seen = Counter("".join(p[[0, 3, 5]]) for p in perms)
    assert set(seen) == {"".join(t) for t in itertools.permutations("abc")}
    assert max(abs(c / 6000 - 1 / 6) for c in seen.values()) < 0.02
    # labels mixed inside groups: shuffled within each group, every group keeps its label counts
    y = np.array(list("abab" + "aabb"))
    g = np.repeat([0, 1], 4)
    perms = group_permutations(y, 3000, groups=g, seed=1)
    for k in (0, 1):
        assert all(sorted(p[g == k]) == sorted(y[g == k]) for p in perms)
    within = Counter("".join(p[:4]) for p in perms)
    assert len(within) == 6 and max(abs(c / 3000 - 1 / 6) for c in within.values()) < 0.03
    # no groups: a uniform permutation of rows, and the stream of rng.permutation (old numbers kept)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(group_permutations(y, 4, seed=r1), np.stack([y[r2.permutation(8)] for _ in range(4)]))


# -- the best layer under shuffled labels -----------------------------------------------------


def test_p_of_the_chosen_layer_accounts_for_the_search():
    """Eight layers of noise (labels carry nothing anywhere). The per-layer p at the layer with the
    best accuracy rejects about 1 - 0.95^8 of the time; against the null of the best layer it
    rejects at most at the level."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    folds = make_folds(y, None, 3, 0)
    naive, maxT = [], []
    for _ in range(300):
        ridge = RidgePermutation(y, folds, group_permutations(y, 99, seed=rng), 2)
        tests = [ridge.test(rng.normal(size=(60, 6))) for _ in range(8)]
        obs, p, null = (np.array([t[k] for t in tests]) for k in range(3))
        best = int(np.argmax(obs))
        naive.append(p[best])
        maxT.append(max_over_layers(obs, null)[best])
        assert np.all(max_over_layers(obs, null) >= p - 1e-12)  # the best layer's null dominates each layer's
    naive, maxT = np.array(naive), np.array(maxT)
    sd = np.sqrt(0.05 * 0.95 / naive.size)
    assert np.mean(maxT < 0.05) <= 0.05 + 3 * sd
    assert np.mean(naive < 0.05) > 0.2  # the old p at the chosen layer


def test_probe_layers_reports_the_best_layer_test_and_the_finding_records_it():
    rng = np.random.default_rng(1)
    y = np.array(["joy", "neutral"])[np.arange(200) % 2]
    acts = {layer: rng.normal(size=(200, 16)) for layer in range(5)}
    acts[3][:, 0] += 2.5 * (y == "joy")  # one planted layer among four of noise
    controls = ProbeControls(n_permutations=30, n_layer_permutations=199, n_random_draws=1, nullspace_k=0,
                             length_only=False, bow=False)
    rep = probe_layers(acts, y, texts=None, token_counts=None, n_layers_total=5, controls=controls,
                       probe=LayerProbe(n_folds=4, seeds=(0, 1), n_boot=200))
    t = rep.table.set_index("layer")
    assert rep.peak_layer == 3 and (t["perm_p_max"] >= t["perm_p"] - 1e-12).all()
    pm = rep.permutation_max
    assert pm["layer"] == 3 and pm["p"] == pytest.approx(1 / 200) == pm["min_p"] == t.loc[3, "perm_p_max"]
    assert pm["n_layers"] == 5 and pm["unit"] == "row" and pm["observed"] > pm["null_max_q95"]
    assert (t.drop(index=3)["perm_p_max"] > 0.05).all()
    f = probe_finding(rep, model_name="m", dataset="d")
    sl = next(c for c in f.controls if c.name == "shuffled_labels")
    assert sl.passed is True and "best of 5 layers" in sl.note
    assert f.observation.p_value == pytest.approx(pm["p"])
    # the held-out accuracy carries its own permutation test (rows are the unit without groups)
    h = rep.heldout_acc
    assert h["test"]["unit"] == "row" and h["p"] == h["test"]["p"] and h["p"] < 0.01
    # without the per-layer ridge test: the logistic p at the peak, Bonferroni over the layers
    rep.permutation_max = None
    f = probe_finding(rep, model_name="m", dataset="d")
    assert f.observation.p_value == pytest.approx(min(1.0, rep.permutation["p"] * 5))


# -- the held-out test with groups ------------------------------------------------------------


def _clustered(rng: np.random.Generator, G: int = 12, m: int = 6, K: int = 2, mixed: bool = False):
    """``G`` held-out groups of ``m`` rows; the probe knows nothing about the labels, but it gives
    every row of a group the same prediction, so correctness is shared inside a group."""
    groups = np.repeat(np.arange(G), m)
    if mixed:  # labels vary inside groups (each group's composition its own)
        y = rng.integers(0, K, size=G * m)
    else:  # one label per group, balanced over the groups
        y = np.repeat(rng.permutation(np.arange(G) % K), m)
    pred = np.repeat(rng.integers(0, K, size=G), m)
    return pred, y, groups


@pytest.mark.parametrize("mixed", [False, True])
def test_heldout_test_holds_its_level_when_groups_share_correctness(mixed):
    rng = np.random.default_rng(2)
    ours, binom = [], []
    for _ in range(400):
        pred, y, groups = _clustered(rng, mixed=mixed)
        ours.append(heldout_test(pred, y, groups, 199, rng)["p"])
        chance = np.bincount(y).max() / y.size
        binom.append(binomial_test(int(np.sum(pred == y)), y.size, chance))
    ours, binom = np.array(ours), np.array(binom)
    sd = np.sqrt(0.05 * 0.95 / ours.size)
    assert np.mean(ours < 0.05) <= 0.05 + 3 * sd
    if not mixed:  # all-or-none correctness per group: the binomial over rows over-rejects
        assert np.mean(binom < 0.05) > 0.15


def test_heldout_test_finds_a_real_effect_and_states_its_floor():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(10), 4)
    y = np.repeat(np.arange(10) % 2, 4)
    t = heldout_test(y.copy(), y, groups, 999, rng)  # every group right
    # 10 groups, 5 of each label: C(10, 5) = 252 arrangements, one of them the observed
    assert t["unit"] == "group" and t["n_units"] == 10 and t["min_p"] == pytest.approx(1 / 252)
    # Monte Carlo over 999 draws: (1 + Binomial(999, 1/252)) / 1000
    mean, sd = (1 + 999 / 252) / 1000, np.sqrt(999 * (1 / 252) * (251 / 252)) / 1000
    assert abs(t["p"] - mean) < 3 * sd
    assert binomial_test(40, 40, 0.5) < 1e-11  # the binomial treats 40 rows as 40 independent units
