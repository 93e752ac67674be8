"""Layer probes and their controls on synthetic activations (no models).

- planted: layer 1 carries "joy" = neutral + 3u, layer 0 carries nothing;
- confound: two classes whose activations differ only through prompt length.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from emoscope.core.stats import bootstrap, holm, permutation_pvalue
from emoscope.errors import InputError, LayerError
from emoscope.probing import LayerProbe, ProbeControls, ProbeReport, probe_layers
from emoscope.probing._solver import fit_batch
from emoscope.probing.metrics import classification_metrics

N, D = 400, 64
FAST = ProbeControls(n_permutations=50, n_layer_permutations=200, n_random_draws=2, nullspace_k=4)
FAST_PROBE = LayerProbe(n_folds=5, seeds=(0, 1), n_boot=500)


def _texts(rng: np.random.Generator, n: int, lengths: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    vocab = ["the", "a", "day", "went", "by", "and", "we", "saw", "it", "then"]
    if lengths is None:
        lengths = rng.integers(5, 15, size=n)
    texts = [" ".join(rng.choice(vocab, size=int(k))) for k in lengths]
    return texts, np.asarray(lengths)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    u = Q[:, 8]
    y = np.array(["neutral", "joy"])[np.arange(N) % 2]

    def noise():
        return rng.normal(size=(N, D)) * 0.5 + rng.normal(size=(N, 8)) * 1.5 @ Q[:, :8].T

    X1 = noise()
    X1[y == "joy"] += 3.0 * u
    texts, counts = _texts(rng, N)
    return {0: noise(), 1: X1}, y, texts, counts, u


@pytest.fixture(scope="module")
def planted_report(planted):
    acts, y, texts, counts, _ = planted
    return probe_layers(acts, y, texts=texts, token_counts=counts, n_layers_total=2, controls=FAST, probe=FAST_PROBE)


# ---- the probe and its controls on planted data ------------------------------------------


def test_planted_probe_near_one_and_controls_at_chance(planted_report):
    rep = planted_report
    t = rep.table.set_index("layer")
    assert rep.peak_layer == 1 and rep.peak_rel_depth == 0.5
    assert t.loc[1, "acc"] > 0.97
    assert t.loc[1, "acc_lo"] <= t.loc[1, "acc"] <= t.loc[1, "acc_hi"]
    assert t.loc[1, "auroc"] > 0.99 and t.loc[1, "f1"] > 0.97
    chance = rep.baselines["chance"]
    assert chance == 0.5
    for layer in (0, 1):
        assert t.loc[layer, "shuffled_lo"] <= chance <= t.loc[layer, "shuffled_hi"]
    assert abs(t.loc[0, "acc"] - chance) < 0.1  # nothing planted at layer 0
    assert t.loc[1, "selectivity"] > 0.4
    # Random directions cannot find a single planted direction in 64 dimensions.
    assert t.loc[1, "random_dir_acc"] < 0.8
    assert not rep.confounded, rep.confound_reasons


def test_planted_permutation_and_holm(planted_report):
    rep = planted_report
    t = rep.table.set_index("layer")
    perm = rep.permutation
    assert perm["layer"] == 1 and perm["n_permutations"] == 50
    assert perm["p"] == pytest.approx(1 / 51)
    assert abs(perm["null_mean"] - 0.5) < 0.05
    assert perm["observed"] > 0.97
    assert t.loc[1, "perm_p"] == pytest.approx(1 / 201)
    assert t.loc[0, "perm_p"] > 0.01
    np.testing.assert_allclose(t["perm_p_holm"].to_numpy(), holm(t["perm_p"].to_numpy()))


def test_planted_heldout_and_nullspace(planted_report):
    rep = planted_report
    h = rep.heldout_acc
    assert h["layer"] == rep.peak_layer
    assert h["n"] == rep.meta["n_heldout"] == N // 5
    assert rep.meta["n_dev"] + rep.meta["n_heldout"] == N
    assert h["acc"] > 0.95 and h["lo"] <= h["acc"] <= h["hi"]
    # One planted direction: each removal takes the probe's (margin-like) direction, so
    # accuracy drops at once and reaches chance within a few rounds, as in INLP.
    assert len(rep.nullspace) == FAST.nullspace_k + 1
    assert rep.nullspace[0] > 0.97
    assert rep.nullspace[1] < rep.nullspace[0] - 0.1
    assert rep.nullspace[-1] < 0.65


def test_planted_baselines_at_chance(planted_report):
    b = planted_report.baselines
    assert b["length_only_lo"] <= 0.5 + 0.05 and b["length_only_acc"] < 0.6
    assert b["bow_acc"] < 0.6
    assert b["length_features"] == ["token_count", "char_count"]


def test_seed_spread_is_the_sd_of_independent_per_seed_accuracies(planted, planted_report):
    """seed_sd at each layer equals the sd of the accuracies that one-seed probes reach on the same
    development rows, and the seeds really split differently (the noise layer's accuracy moves)."""
    from emoscope.probing._splits import heldout_split

    acts, y, *_ = planted
    t = planted_report.table.set_index("layer")
    dev, _ = heldout_split(np.unique(y, return_inverse=True)[1], None, FAST.heldout, 0)
    for layer in (0, 1):
        accs = [LayerProbe(n_folds=5, seeds=(s,), n_boot=100).fit(acts[layer][dev], y[dev]).scores_["acc"]
                for s in FAST_PROBE.seeds]
        assert t.loc[layer, "seed_sd"] == pytest.approx(np.std(accs, ddof=1), abs=1e-9)
    assert t.loc[0, "seed_sd"] > 0  # chance-level layer: different folds, different accuracy


# ---- the confound --------------------------------------------------------------------------


def test_length_confound_detected():
    rng = np.random.default_rng(1)
    y = np.array(["calm", "angry"])[np.arange(N) % 2]
    counts = np.where(y == "angry", rng.integers(25, 40, size=N), rng.integers(5, 15, size=N))
    texts = [" ".join(["word"] * int(k)) for k in counts]  # one word: words cannot tell them apart
    # Identical distributions except through length: the mean activation (and so the
    # norm) grows with token count, as long prompts do in real residual streams.
    m = rng.normal(size=D)
    acts = {k: rng.normal(size=(N, D)) + 0.1 * counts[:, None] * m for k in range(3)}
    rep = probe_layers(acts, y, texts=texts, token_counts=counts, n_layers_total=3, controls=FAST, probe=FAST_PROBE)
    assert rep.peak["acc"] > 0.9
    assert rep.baselines["length_only_acc"] > 0.95
    assert rep.baselines["bow_acc"] < 0.6  # binary bag of words sees one word in both
    assert rep.confounded
    assert any(r.startswith("length-only baseline reaches") for r in rep.confound_reasons)
    assert not any("bag-of-words" in r for r in rep.confound_reasons)


# ---- LayerProbe and the solver -----------------------------------------------------------------


def test_batch_solver_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    K = 3
    y = np.arange(150) % K
    X = rng.normal(size=(150, 20)) * rng.uniform(0.5, 20, size=20) + rng.normal(size=(K, 20))[y] * 2
    train = np.zeros((2, 150), bool)
    train[0, :100], train[1, 50:] = True, True
    fit = fit_batch(X, np.stack([y, y]), train, K, C=0.5, tol=1e-7, max_iter=1000)
    for p in range(2):
        Xtr = X[train[p]]
        mu, sd = Xtr.mean(0), Xtr.std(0)
        ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit((Xtr - mu) / sd, y[train[p]])
        ours = fit.proba(X)[:, p]
        np.testing.assert_allclose(ours, ref.predict_proba((X - mu) / sd), atol=2e-3)


def test_layer_probe_fit_predict_and_groups():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(60), 4)  # four paraphrases per prompt
    y = np.array(["a", "b", "c"])[groups % 3]
    X = rng.normal(size=(240, 10)) + np.eye(10)[groups % 3] * 2.5 + rng.normal(size=(60, 10))[groups] * 0.5
    probe = LayerProbe(n_folds=4, seeds=(0, 1, 2), n_boot=300).fit(X, y, groups=groups)
    for folds in probe.folds_.values():
        for tr, te in folds:
            assert not set(groups[tr]) & set(groups[te])  # no prompt on both sides
    s = probe.scores_
    assert s["acc"] > 0.8 and s["acc_lo"] <= s["acc"] <= s["acc_hi"]
    assert set(probe.seed_acc_) == {0, 1, 2}
    # each seed splits differently, and seed_sd is the sd of the per-seed accuracies, each of which
    # a probe running that seed alone reproduces
    tests = {seed: sorted(tuple(sorted(te)) for _, te in folds) for seed, folds in probe.folds_.items()}
    assert tests[0] != tests[1] != tests[2] != tests[0]
    alone = {seed: LayerProbe(n_folds=4, seeds=(seed,), n_boot=100).fit(X, y, groups=groups).scores_["acc"]
             for seed in (0, 1, 2)}
    assert alone == pytest.approx(probe.seed_acc_)
    assert s["seed_sd"] == pytest.approx(np.std(list(alone.values()), ddof=1), abs=1e-12)
    assert probe.oof_proba_.shape == (240, 3)
    assert probe.predict(X[:5]).tolist() == probe.classes_[probe.predict_proba(X[:5]).argmax(1)].tolist()
    assert probe.score(X, y) > 0.8
    with pytest.raises(InputError, match="features"):
        probe.predict(X[:, :3])


def test_layer_probe_errors():
    X = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(InputError, match="two classes"):
        LayerProbe().fit(X, ["a"] * 20)
    with pytest.raises(InputError, match="smallest class"):
        LayerProbe(n_folds=5).fit(X, ["a"] * 17 + ["b"] * 3)
    with pytest.raises(InputError, match="not fitted"):
        LayerProbe().predict(X)


# ---- metrics -----------------------------------------------------------------------------


def test_holm_against_hand_computation():
    p = [0.01, 0.04, 0.03, 0.2]
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> 0.09 (monotone), 0.2*1=0.2
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    out = holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])


def test_bootstrap_interval_contains_estimate_and_has_binomial_width():
    rng = np.random.default_rng(4)
    correct = (rng.random(400) < 0.7).astype(float)
    m, lo, hi = bootstrap(correct, n_boot=2000, seed=0)
    assert m == correct.mean() and lo < m < hi
    se = np.sqrt(m * (1 - m) / correct.size)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    # Clustered rows: resampling whole groups gives a wider interval.
    groups = np.repeat(np.arange(40), 10)
    clustered = np.repeat((rng.random(40) < 0.7).astype(float), 10)
    _, lo_i, hi_i = bootstrap(clustered, n_boot=2000)
    _, lo_g, hi_g = bootstrap(clustered, groups, n_boot=2000)
    assert hi_g - lo_g > 2 * (hi_i - lo_i)


def test_permutation_pvalue_and_metrics():
    assert permutation_pvalue(0.9, [0.1] * 99) == 0.01
    assert permutation_pvalue(0.1, [0.1] * 99) == 1.0
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(5)
    y = np.arange(90) % 3
    proba = rng.dirichlet(np.ones(3), size=90)
    proba[np.arange(90), y] += 0.4
    proba /= proba.sum(1, keepdims=True)
    m = classification_metrics(y, proba)
    pred = proba.argmax(1)
    assert m["bal_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))


# ---- inputs, switches and outputs ---------------------------------------------------------------


def test_controls_need_their_inputs_unless_switched_off(planted):
    acts, y, texts, counts, _ = planted
    with pytest.raises(InputError, match="bow=False"):
        probe_layers(acts, y, texts=None, token_counts=counts)
    with pytest.raises(InputError, match="length_only=False"):
        probe_layers(acts, y, texts=texts, token_counts=None)
    off = ProbeControls(
        shuffled=False, n_permutations=0, n_layer_permutations=0, random_directions=False,
        length_only=False, bow=False, heldout=0, nullspace_k=0,
    )
    rep = probe_layers(acts, y, texts=None, token_counts=None, n_layers_total=2, controls=off, probe=FAST_PROBE)
    assert rep.table["shuffled_acc"].isna().all() and rep.table["perm_p"].isna().all()
    assert rep.heldout_acc is None and rep.permutation is None and rep.nullspace == []
    assert "length_only_acc" not in rep.baselines and "bow_acc" not in rep.baselines
    json.dumps(rep.to_dict(), allow_nan=False)


def test_probe_layers_input_errors(planted):
    acts, y, texts, counts, _ = planted
    with pytest.raises(LayerError):
        probe_layers(acts, y, texts=texts, token_counts=counts, n_layers_total=1)
    with pytest.raises(InputError, match="entries"):
        probe_layers(acts, y[:-1], texts=texts, token_counts=counts)
    with pytest.raises(InputError, match="heldout"):
        probe_layers(acts, y, texts=texts, token_counts=counts, controls=ProbeControls(heldout=0.7))


def test_report_save_load_plot(planted_report, tmp_path):
    rep = planted_report
    d = rep.to_dict()
    text = json.dumps(d, allow_nan=False)  # NaN-free, plain JSON
    assert json.loads(text)["schema_version"] == 1
    paths = rep.save(tmp_path / "run")
    assert paths["csv"].name == "probe_layers.csv" and paths["json"].name == "probe_layers.json"
    import pandas as pd

    csv = pd.read_csv(paths["csv"])
    for col in ("layer", "rel_depth", "acc", "acc_lo", "acc_hi", "bal_acc", "f1", "auroc", "shuffled_acc",
                "perm_p", "perm_p_holm", "random_dir_acc", "seed_sd", "selectivity"):
        assert col in csv.columns
    back = ProbeReport.load(tmp_path / "run")
    assert back.peak_layer == rep.peak_layer and back.confounded == rep.confounded
    np.testing.assert_allclose(back.table["acc"], rep.table["acc"])
    figs = rep.plot(tmp_path / "figs" / "probe_layers")
    assert figs["png"].read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in figs["svg"].read_bytes()[:500]
    leftovers = [p for p in (tmp_path / "figs").iterdir() if p.suffix == ".tmp"]
    assert not leftovers
