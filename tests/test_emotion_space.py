"""Emotion space: the shipped valence/arousal table, user tables and their errors, the centred
PCA, correlations that recover planted axes, and the denoising recipe."""

from __future__ import annotations

import numpy as np
import pytest

from emoscope.errors import InputError
from emoscope.geometry.emotion_space import denoise_vectors, emotion_space, load_valence_arousal

EMOTIONS_12 = ["joy", "sadness", "anger", "fear", "disgust", "surprise", "gratitude", "pride", "shame", "love",
               "calm", "desperation"]


def test_shipped_table_covers_every_builtin_emotion_with_a_card():
    from importlib import resources

    import yaml

    va = load_valence_arousal()
    assert set(EMOTIONS_12 + ["apology"]) == set(va.index)
    assert va[["valence", "arousal"]].to_numpy().min() >= 0 and va[["valence", "arousal"]].to_numpy().max() <= 1
    assert va.loc["joy", "valence"] > 0.9 and va.loc["calm", "arousal"] < 0.2  # sanity of the direction of scales
    card = yaml.safe_load(resources.files("emoscope.datasets").joinpath("data/valence-arousal.card.yaml")
                          .read_text("utf-8"))
    assert "NRC" in card["source"]["name"] and "non-commercial" in card["licence"]


def _planted(seed: int, d: int = 64, noise: float = 0.3):
    """Vectors = offset shared by all + valence on one axis + arousal on another + noise."""
    rng = np.random.default_rng(seed)
    va = load_valence_arousal().loc[EMOTIONS_12]
    u, w = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
    offset = 20 * rng.normal(size=d)  # what every vector shares: centring must remove it
    vecs = {e: offset + 10 * (va.loc[e, "valence"] - 0.5) * u + 6 * (va.loc[e, "arousal"] - 0.5) * w
            + noise * rng.normal(size=d) for e in va.index}
    return vecs, va


def test_correlation_recovers_planted_valence_and_arousal_axes():
    vecs, va = _planted(0)
    es = emotion_space(vecs, va, n_perm=1999, normalize=False)
    c = es.correlations
    assert abs(c["pc1"]["valence"]["r"]) > 0.95 and c["pc1"]["valence"]["p"] < 0.01
    assert abs(c["pc2"]["arousal"]["r"]) > 0.9 and c["pc2"]["arousal"]["p"] < 0.01
    # independent check of r: numpy's correlation of the first score with the ratings
    r = np.corrcoef(es.pca.scores[:, 0], va.loc[es.pca.names, "valence"])[0, 1]
    assert c["pc1"]["valence"]["r"] == pytest.approx(r, abs=1e-10)
    # centred PCA: the shared offset does not become PC1 (PC1 and PC2 carry nearly all the variance)
    assert es.pca.explained_variance_ratio[:2].sum() > 0.8
    rows = es.rows()
    assert [r["pc"] for r in rows] == ["pc1", "pc2"] and rows[0]["n_emotions"] == 12


def test_no_axis_gives_no_correlation():
    rng = np.random.default_rng(5)
    va = load_valence_arousal().loc[EMOTIONS_12]
    ps = []
    for s in range(20):
        vecs = {e: rng.normal(size=32) for e in va.index}
        ps.append(emotion_space(vecs, va, n_perm=199, seed=s).correlations["pc1"]["valence"]["p"])
    assert 0.2 < np.mean(ps) < 0.8  # p-values of a true null are roughly uniform


def test_user_table_errors_name_the_rows(tmp_path):
    vecs, _ = _planted(1)
    p = tmp_path / "va.csv"
    p.write_text("emotion,valence\njoy,0.9\n")
    with pytest.raises(InputError, match="missing column.*arousal"):
        load_valence_arousal(p)
    p.write_text("emotion,valence,arousal\njoy,0.9,0.8\nbogus,0.1,0.2\nsadness,x,0.3\n")
    with pytest.raises(InputError, match=r"row\(s\) 3 lack"):
        load_valence_arousal(p)
    p.write_text("emotion,valence,arousal\n" + "".join(f"{e},0.5,0.5\n" for e in EMOTIONS_12) + "bogus,0.1,0.2\n")
    with pytest.raises(InputError, match=r"row\(s\) 13 \(bogus\)"):
        emotion_space(vecs, load_valence_arousal(p))
    p.write_text("emotion,valence,arousal\n" + "".join(f"{e},0.5,0.5\n" for e in EMOTIONS_12[:-1]))
    with pytest.raises(InputError, match="no rating for desperation"):
        emotion_space(vecs, load_valence_arousal(p))
    with pytest.raises(InputError, match="not found"):
        load_valence_arousal(tmp_path / "nope.csv")


def test_denoise_recipe_against_a_direct_computation():
    rng = np.random.default_rng(2)
    d = 20
    N = rng.normal(size=(200, d)) * np.r_[[6.0, 5.5], np.ones(d - 2)]  # two dominant neutral directions
    means = {e: rng.normal(size=d) + 5.0 for e in "abcde"}
    out, k = denoise_vectors(means, N, share=0.5)
    # direct: centre over emotions, then remove the top-k PCs of N by an eigendecomposition
    Nc = N - N.mean(0)
    w, V = np.linalg.eigh(Nc.T @ Nc)
    V = V[:, ::-1]
    share = np.cumsum(w[::-1]) / w.sum()
    k_want = int(np.searchsorted(share, 0.5) + 1)
    assert k == k_want == 2
    M = np.stack(list(means.values()))
    C = M - M.mean(0)
    P = V[:, :k]
    want = C - C @ P @ P.T
    assert np.allclose(np.stack([out[e] for e in "abcde"]), want, atol=1e-8)
    assert np.allclose(sum(out.values()), 0, atol=1e-8)  # the emotion mean is gone
