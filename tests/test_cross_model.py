"""Cross-model alignment fitted on neutral rows: planted rotations and linear maps are recovered,
the shuffled-pairing control sits at chance, the identification test sees through a shared
offset, widths that differ make the raw comparison undefined, and missing emotions are errors."""

from __future__ import annotations

import numpy as np
import pytest

from emoscope.errors import InputError
from emoscope.geometry import procrustes_align
from emoscope.geometry.crossmodel import (
    compare_vectors,
    fit_neutral_maps,
    matched_names,
    subspace_overlap,
)


def _world(seed: int, d_a: int = 40, d_b: int = 48, n: int = 300, K: int = 10, offset: float = 0.0,
           noise: float = 0.05):
    """Model B = model A through a planted linear map (plus noise), for neutral rows and emotion vectors."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(d_a, d_b)) / np.sqrt(d_a)
    NA = rng.normal(size=(n, d_a))
    NB = NA @ M + noise * rng.normal(size=(n, d_b))
    shared = offset * rng.normal(size=d_a)
    VA = {f"e{i}": shared + rng.normal(size=d_a) for i in range(K)}
    VB = {k: v @ M for k, v in VA.items()}
    return NA, NB, VA, VB, M


def test_procrustes_recovers_a_planted_rotation():
    rng = np.random.default_rng(0)
    d = 24
    R, _ = np.linalg.qr(rng.normal(size=(d, d)))
    XA = rng.normal(size=(200, d)) * np.linspace(3, 1, d)
    m = procrustes_align(XA, XA @ R)
    assert np.allclose(m.W, R, atol=1e-10)
    # the neutral-fitted common-dimension Procrustes recovers it too (k = d: nothing dropped)
    maps = fit_neutral_maps(XA, XA @ R + 1.0, seed=0)
    assert maps.k_common == d
    assert np.allclose(maps.maps["procrustes"].W, R, atol=1e-8)
    assert maps.r2_heldout["procrustes"] == pytest.approx(1.0, abs=1e-8)
    VA = {f"e{i}": rng.normal(size=d) for i in range(8)}
    rows = {r["map"]: r for r in compare_vectors(VA, {k: v @ R for k, v in VA.items()}, maps.maps)}
    assert rows["procrustes"]["matched_cos2"] == pytest.approx(1.0, abs=1e-10)
    assert rows["procrustes"]["id_acc"] == 1.0 and rows["procrustes"]["subspace_overlap"] == pytest.approx(1.0)
    # raw (identity) is defined at equal width, and a rotation defeats it
    assert rows["raw"]["defined"] and rows["raw"]["matched_cos2"] < 0.5


def test_ridge_recovers_a_planted_map_with_cv_and_heldout_r2():
    NA, NB, VA, VB, M = _world(1)
    maps = fit_neutral_maps(NA, NB, seed=0)
    assert maps.r2_heldout["ridge"] > 0.95 and maps.n_test == 60 and maps.n_train == 240
    assert maps.lam_rel in maps.cv_r2 or maps.lam_rel == pytest.approx(min(maps.cv_r2, key=lambda k: -maps.cv_r2[k]))
    rows = {r["map"]: r for r in compare_vectors(VA, VB, maps.maps)}
    assert rows["ridge"]["matched_cos2"] > 0.95 and rows["ridge"]["id_acc_centred"] == 1.0
    assert rows["ridge"]["id_p_centred"] < 1e-6  # 10/10 against chance 1/10
    assert not rows["raw"]["defined"] and "undefined" in rows["raw"]["note"] and "40 vs 48" in rows["raw"]["note"]


def test_shuffled_pairing_control_is_near_chance():
    NA, NB, VA, VB, _ = _world(2, d_a=60, d_b=60, n=400, K=12)
    maps = fit_neutral_maps(NA, NB, seed=0)
    rows = {r["map"]: r for r in compare_vectors(VA, VB, maps.maps)}
    for m in ("ridge_shuffled", "procrustes_shuffled"):
        r = rows[m]
        # cos^2 of random directions in d=60 is 1/60
        assert r["matched_cos2"] < 5 * r["chance_cos2"]
        assert r["id_acc_centred"] <= 0.34
        assert maps.r2_heldout[m] < 0.05
    # overlap of random 12-dim subspaces is 12/60; the shuffled ridge map chooses its own (large) CV
    # penalty, so it maps into B's high-variance directions, where B's vectors lie too: above
    # chance, which is why the control ranks the real map among shuffled maps, not against K/d
    assert abs(rows["procrustes_shuffled"]["subspace_overlap"] - rows["procrustes_shuffled"]["chance_overlap"]) < 0.12
    assert rows["ridge_shuffled"]["subspace_overlap"] < 0.5
    assert rows["ridge"]["subspace_overlap"] > 0.9


def test_identification_sees_through_a_shared_offset():
    # every vector = a big shared offset + its own part; a useless map still gives high matched cos^2
    NA, NB, VA, VB, _ = _world(3, d_a=50, d_b=50, offset=6.0)
    maps = fit_neutral_maps(NA, NB, seed=0)
    rows = {r["map"]: r for r in compare_vectors(VA, VB, maps.maps)}
    assert rows["ridge"]["mismatched_cos2"] > 0.8  # inflated by the shared component
    assert rows["ridge"]["id_acc_centred"] == 1.0 and rows["ridge"]["p_matched"] < 0.01


def test_subspace_overlap_reference_values():
    eye = np.eye(6)
    assert subspace_overlap(eye[:2], eye[:2])[0] == pytest.approx(1.0)
    ov, ang = subspace_overlap(eye[:2], eye[[1, 2]])
    assert ov == pytest.approx(0.5) and sorted(np.round(ang).tolist()) == [0.0, 90.0]


def test_missing_emotions_are_one_line_naming_them():
    v = {e: np.ones(4) for e in ("joy", "fear", "anger")}
    with pytest.raises(InputError, match="gemma has no vector for anger"):
        matched_names(v, {e: np.ones(4) for e in ("joy", "fear", "calm")}, label_a="smol", label_b="gemma")
    with pytest.raises(InputError, match="at least 3 emotions"):
        matched_names({"a": 1, "b": 2}, {"a": 1, "b": 2})
    with pytest.raises(InputError, match="same texts"):
        fit_neutral_maps(np.ones((20, 3)), np.ones((21, 3)))
