"""Similarity beyond what every emotion vector shares: centred vectors against a permutation null
of the same estimator, on synthetic activations with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from emoscope.errors import InputError
from emoscope.geometry.similarity import (
    centred_cosine_null,
    centred_cosines,
    distinctness,
    expected_centred_cosine,
    min_permutations,
    similarity_analysis,
    split_half_reliability,
    split_halves,
)
from emoscope.geometry.stage import similarity_findings, similarity_table

EMOTIONS = ["e0", "e1", "e2", "e3"]


def planted(seed: int = 0, *, n: int = 80, d: int = 64, strength: float = 3.0, offset: float = 4.0,
            shared: float = 0.0, k: int = 4, neutral: bool = True):
    """``k`` emotion classes, each ``offset`` along one common "non-neutral" direction plus
    ``strength`` along a direction of its own, plus (``shared``) a direction that e0 and e1 both
    have; a neutral class of noise. Layer 1 carries the signal, layer 2 a third of it in more noise, layer 0 none."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    names = [f"e{i}" for i in range(k)]
    X, y = [], []
    for i, c in enumerate(names):
        mu = offset * Q[:, 0] + strength * Q[:, 2 + i] + (shared * Q[:, 1] if i < 2 else 0.0)
        X.append(mu + rng.normal(size=(n, d)))
        y += [c] * n
    if neutral:
        X.append(rng.normal(size=(n, d)))
        y += ["neutral"] * n
    X = np.vstack(X)
    layers = {0: rng.normal(size=X.shape), 1: X, 2: 0.3 * X + rng.normal(size=X.shape)}
    t = rng.integers(5, 40, size=X.shape[0]).astype(float)
    return layers, np.array(y), t


def _pair(res, a: str, b: str) -> int:
    return res.pairs.index((a, b))


# -- pure functions ----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 4, 6])
def test_centred_cosine_of_independent_classes_is_minus_one_over_k_minus_one(k):
    got = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        d = 256
        dirs = rng.normal(size=(k, d)) * 0.4  # independent class directions, norm ~6.4
        X = np.vstack([dirs[i] + rng.normal(size=(60, d)) * 0.3 for i in range(k)]) + 5.0  # a common offset
        y = np.repeat([f"c{i}" for i in range(k)], 60)
        _, M = centred_cosines(X, y)
        got.extend(M[np.triu_indices(k, 1)])
        # and the permutation null of the same estimator sits there too
        null = centred_cosine_null(X, y, n_perm=100, seed=seed)
        assert abs(null.null.mean() - expected_centred_cosine(k)) < 0.05
    assert np.mean(got) == pytest.approx(-1 / (k - 1), abs=0.03)
    assert expected_centred_cosine(k) == -1 / (k - 1)


def test_centred_cosines_match_numpy():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(90, 8)), np.repeat(["a", "b", "c"], 30)
    means = np.stack([X[y == c].mean(0) for c in "abc"])
    C = means - means.mean(0)
    want = (C @ C.T) / np.outer(np.linalg.norm(C, axis=1), np.linalg.norm(C, axis=1))
    np.testing.assert_allclose(centred_cosines(X, y)[1], want, atol=1e-12)
    # rows of other labels do not enter; the reduced basis (d > n) keeps the cosines
    Xw = np.c_[X, rng.normal(size=(90, 300)) * 0]
    np.testing.assert_allclose(centred_cosine_null(Xw, y, n_perm=60).observed, want[np.triu_indices(3, 1)],
                               atol=1e-10)


def test_split_half_reliability_high_for_planted_and_near_zero_for_noise():
    rng = np.random.default_rng(2)
    d, n = 128, 60
    y = np.repeat(["a", "b", "c", "d"], n)
    strong = np.vstack([rng.normal(size=d) * 0.8 + rng.normal(size=(n, d)) for _ in range(4)])
    noise = rng.normal(size=(4 * n, d))
    rel_strong = split_half_reliability(strong, y, seed=0)
    rel_noise = split_half_reliability(noise, y, seed=0)
    assert rel_strong.min() > 0.9, rel_strong
    assert np.abs(rel_noise).max() < 0.2, rel_noise
    assert abs(rel_noise.mean()) < 0.1


def test_min_permutations_make_the_corrected_threshold_reachable():
    for pairs in (1, 3, 6, 66):
        n = min_permutations(pairs)
        assert pairs / (n + 1) < 0.05
    null = centred_cosine_null(np.random.default_rng(0).normal(size=(60, 5)), np.repeat(list("abcd"), 15), n_perm=10)
    assert null.n_perm == min_permutations(6) == 120


def test_split_halves_are_within_class_and_disjoint():
    y = np.array(["a"] * 9 + ["b"] * 4)
    sel, rep = split_halves(y, seed=3)
    assert set(sel) & set(rep) == set() and sorted([*sel, *rep]) == list(range(13))
    assert (y[sel] == "a").sum() == 4 and (y[rep] == "a").sum() == 5 and (y[sel] == "b").sum() == 2


def test_fewer_than_three_classes_cannot_be_tested():
    layers, y, t = planted(k=2)
    with pytest.raises(InputError, match="K<3"):
        similarity_analysis(layers, y, t, neutral="neutral")
    with pytest.raises(InputError, match="K<3"):
        centred_cosine_null(layers[1][y != "neutral"], y[y != "neutral"])


# -- the planted tests ---------------------------------------------------------------------------


def test_shared_non_neutral_offset_is_not_a_relation():
    """Independent classes plus a shared "non-neutral" offset: the vs-neutral cosine is high, the
    centred cosine sits near -1/(K-1) inside the permutation null, and no "related" claim is made."""
    layers, y, t = planted(seed=0, offset=6.0)
    res = similarity_analysis(layers, y, t, neutral="neutral", n_perm=1000, seed=0)
    i = _pair(res, "e0", "e1")
    assert res.vs_neutral[i] > 0.5
    assert abs(res.null.observed[i] - expected_centred_cosine(4)) < 0.15
    assert res.null.p[i] > 0.05 and res.null.observed[i] < res.null.q_corrected[i]
    assert (res.null.p_holm >= 0.05).all()
    findings = similarity_findings(res)
    assert len(findings) == 1 and findings[0].claim is None  # an observation of the top pair only
    ctl = {c.name: c for c in findings[0].controls}
    assert ctl["null_distribution"].passed is False
    assert ctl["heldout_selection"].passed is True and findings[0].observation.n_searched == 3


def test_shared_direction_is_a_relation_that_ships():
    """e0 and e1 also share a planted direction: their centred cosine clears the null after Holm,
    on the half of the texts the layer was not chosen on, and every control passes."""
    layers, y, t = planted(seed=0, shared=6.0)
    res = similarity_analysis(layers, y, t, neutral="neutral", n_perm=1000, seed=0)
    assert res.layer == 1 and res.n_searched == 3 and not res.layer_fixed  # the planted layer, chosen held out
    i = _pair(res, "e0", "e1")
    assert res.null.observed[i] > res.null.q_corrected[i]
    assert res.null.p_holm[i] < 0.05
    assert res.own_share[i] > 0.5
    for v in res.variants.values():
        assert v.p_holm[i] < 0.05
    findings = {(f.observation.metric.split(" of ")[1].split(" (")[0]): f for f in similarity_findings(res)}
    f = findings["e0 and e1"]
    assert f.claim and "related" in f.claim
    ctl = {c.name: c for c in f.controls}
    assert {"null_distribution", "length_control", "heldout_selection", "seed_spread"} <= set(ctl)
    assert all(c.passed is True for c in f.controls), [(c.name, c.passed, c.value) for c in f.controls]
    assert f.verdict == "ships", f.reasons
    obs = f.observation
    assert obs.unit == "texts per class" and obs.n == 40 and obs.n_searched == 3
    # the recorded p is the one that decides null_distribution: Holm over the pairs
    assert obs.p_value == pytest.approx(res.null.p_holm[i]) and obs.interval[0] <= obs.value <= obs.interval[1]
    # centring moves the centre toward e0/e1, so e2 and e3 lean the same way ("related" by a shared
    # absence); the shared-presence control, measured from neutral, keeps that from shipping
    j = _pair(res, "e2", "e3")
    if res.null.p_holm[j] < 0.05:
        g = findings["e2 and e3"]
        assert res.own_share[j] < 0.5 and g.verdict == "fails"
    table = similarity_table(res)
    assert len(table) == 6 and {"cos_vs_neutral", "cos_centred", "expected", "null_q95", "p", "p_holm",
                                "cos_unit_norm", "cos_token_count_regressed", "reliability_a", "reliability_b",
                                "p_distinct"} <= set(table.columns)


def test_fixed_layer_is_not_searched():
    layers, y, t = planted(seed=1, shared=6.0)
    res = similarity_analysis(layers, y, t, neutral="neutral", layer=2, n_perm=200, n_boot=200, seed=0)
    assert res.layer == 2 and res.n_searched == 1 and res.layer_fixed and res.seed_layers == [2, 2, 2]


def test_without_neutral_the_vs_neutral_columns_are_empty():
    layers, y, t = planted(seed=2, shared=6.0, neutral=False)
    res = similarity_analysis(layers, y, t, neutral=None, n_perm=200, n_boot=200, seed=0)
    assert np.isnan(res.vs_neutral).all() and np.isnan(res.own_share).all()
    # shared presence cannot be measured without neutral: recorded unjudged, so no claim ships
    for g in similarity_findings(res):
        sp = next(c for c in g.controls if c.name == "shared_presence")
        assert sp.passed is None and sp.value is None and "no neutral class" in sp.note
        assert g.verdict in ("needs controls", "fails")
        if g.claim is not None and g.verdict == "needs controls":
            assert any("shared direction carried by the pair ran but was not judged" in r for r in g.reasons)


def _four(seed: int, n: int = 40, d: int = 64):
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(3, d)) * 0.5
    # a and a2 are one distribution; b and c differ from it and from each other
    X = np.vstack([dirs[0] + rng.normal(size=(n, d)), dirs[0] + rng.normal(size=(n, d)),
                   dirs[1] + rng.normal(size=(n, d)), dirs[2] + rng.normal(size=(n, d))])
    return X, np.repeat(["a", "a2", "b", "c"], n)


def test_distinctness():
    X, y = _four(0)
    same = distinctness(X, y, "a", "a2", n_perm=1000, seed=0)
    diff = distinctness(X, y, "a", "b", n_perm=1000, seed=0)
    assert same.p > 0.05, same.p
    assert diff.p < 0.05 and diff.observed < np.quantile(diff.null, 0.05)
    with pytest.raises(InputError, match="two different classes"):
        distinctness(X, y, "a", "a")


def test_distinctness_is_calibrated():
    """Two classes drawn from one distribution are called distinct at about the test's level."""
    p = np.array([distinctness(*_four(s, n=20, d=32), "a", "a2", n_perm=100, seed=s).p for s in range(200)])
    assert (p < 0.05).mean() <= 0.09  # 0.06 here; binomial sd at 200 draws ~0.015
    assert 0.3 < np.median(p) < 0.7


def test_related_claims_ship_at_most_at_the_level_when_nothing_is_related():
    """Exchangeable classes (one distribution): a pair passes Holm in about alpha of the runs."""
    hits = 0
    for s in range(100):
        X = np.random.default_rng(s).normal(size=(80, 32))
        hits += bool((centred_cosine_null(X, np.repeat(EMOTIONS, 20), n_perm=120, seed=s).p_holm < 0.05).any())
    assert hits <= 9, hits


# -- the stage -----------------------------------------------------------------------------------


class _Acts:
    def __init__(self, layers, t):
        self.data, self.token_counts = layers, t

    @property
    def layers(self):
        return sorted(self.data)

    def get(self, layer):
        return self.data[layer]


class _Ctx:
    """The part of RunContext the geometry stage uses, over synthetic activations."""

    def __init__(self, layers, y, t, **options):
        from emoscope.geometry.stage import GeometryOptions

        opts = GeometryOptions(**options)
        self.options, self.seed = opts, 0
        self.dataset = type("D", (), {"labels": list(y), "name": "synthetic"})()
        self.spec = type("S", (), {"dataset": "synthetic", "options": staticmethod(lambda _name: opts)})()
        self.model = type("M", (), {"resolve_layers": staticmethod(lambda ls: [int(v) for v in ls])})()
        self._acts = _Acts(layers, t)
        self.tables, self.figures, self.notes, self.findings = {}, [], [], []

    def activations(self, progress=False):
        return self._acts

    def write_table(self, name, df):
        self.tables[name] = df

    def save_figure(self, name, fig):
        import io

        fig.savefig(io.BytesIO(), format="png")  # it draws
        self.figures.append(name)

    def note(self, text):
        self.notes.append(text)

    def add_finding(self, f):
        self.findings.append(f)


def test_stage_on_synthetic_activations():
    from emoscope.geometry.stage import geometry_stage

    layers, y, t = planted(seed=0, shared=6.0)
    ctx = _Ctx(layers, y, t, n_perm=500, n_boot=200, n_null=200)
    result = geometry_stage(ctx)
    assert {"similarity_pairs", "similarity_layers", "cosines", "emotion_pca"} <= set(ctx.tables)
    assert ctx.figures == ["similarity", "cosines"]
    pairs = ctx.tables["similarity_pairs"]
    row = pairs.set_index("pair").loc["e0~e1"]
    assert row.layer == 1 and row.n_searched == 3 and row.p_holm < 0.05 and row.cos_vs_neutral > 0.5
    assert row.expected == pytest.approx(-1 / 3) and row.n_perm == 500
    related = [f for f in ctx.findings if f.claim]
    assert any("e0 and e1" in f.claim and f.verdict == "ships" for f in related)
    assert result.metrics["similarity_layer"] == 1 and result.metrics["n_searched"] == 3
    assert ctx.tables["similarity_layers"].chosen.sum() == 1


def test_stage_with_two_emotions_records_an_observation():
    from emoscope.geometry.stage import geometry_stage

    layers, y, t = planted(seed=0, k=2)
    ctx = _Ctx(layers, y, t, n_null=200)
    geometry_stage(ctx)
    assert "similarity_pairs" not in ctx.tables and "cosines" in ctx.tables
    (f,) = ctx.findings
    assert f.claim is None and "cannot be tested with K<3 classes" in f.observation.metric
    assert f.observation.value > 0.5  # the vs-neutral cosine: the shared offset


def test_stage_end_to_end_on_a_tiny_model(tiny_dir, tmp_path, monkeypatch):
    import pandas as pd

    from emoscope.runs import run_spec
    from emoscope.runs.spec import parse_spec

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    spec = parse_spec({
        "name": "similarity", "model": str(tiny_dir), "dataset": "emotions-basic", "seed": 0,
        "stages": ["extract", "geometry"], "extract": {"layers": "all", "position": "mean"},
        "geometry": {"n_null": 200, "n_perm": 300, "n_boot": 200},
    }, source="test")
    rd = run_spec(spec, tmp_path / "run", log=lambda _m: None)
    pairs = pd.read_csv(rd.tables / "similarity_pairs.csv")
    assert set(pairs.pair) == {"anger~apology", "anger~gratitude", "apology~gratitude"}
    assert (pairs.expected == -0.5).all() and (pairs.n_searched == 3).all() and (pairs.n_a == 50).all()
    assert (rd.figures / "similarity.png").is_file() and (rd.tables / "cosines.csv").is_file()
    sim = [f for f in rd.ledger.read() if f.kind == "similarity"]
    assert sim, "the similarity test always records a finding"
    for f in sim:
        names = {c.name for c in f.controls}
        assert {"null_distribution", "length_control", "heldout_selection", "seed_spread"} <= names
        assert f.observation.unit == "texts per class" and f.observation.n == 50 and f.observation.n_searched == 3
        row = pairs.loc[pairs.cos_centred.round(4) == f.observation.value].iloc[0]
        null = next(c for c in f.controls if c.name == "null_distribution")
        assert null.passed is bool(row.p_holm < 0.05) and (f.claim is not None) is null.passed
