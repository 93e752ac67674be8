"""extract -> vectors -> probe -> geometry as one run on a tiny model: every stage writes its
tables, vectors and findings, and the similarity finding carries its null and length controls."""

from __future__ import annotations

import numpy as np
import pandas as pd

from emoscope.runs import run_spec
from emoscope.runs.spec import parse_spec
from emoscope.vectors import ConceptVector


def test_emotion_pipeline_on_tiny_model(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    spec = parse_spec({
        "name": "pipeline", "model": str(tiny_dir), "dataset": "emotions-basic", "seed": 0,
        "stages": ["extract", "vectors", "probe", "geometry"],
        "extract": {"layers": "all", "position": "mean"},
        "probe": {"n_folds": 3, "seeds": [0], "n_permutations": 5, "nullspace_k": 1},
        "geometry": {"n_null": 200},
    }, source="test")
    rd = run_spec(spec, tmp_path / "run", log=lambda _m: None)
    cos = pd.read_csv(rd.tables / "cosines.csv")
    assert set(zip(cos.a, cos.b, strict=True)) == {("anger", "apology"), ("anger", "gratitude"), ("apology", "gratitude")}
    # The stored cosine is the cosine of the saved vectors at that layer (an independent recomputation).
    layer = int(cos.layer.iloc[0])
    a, b = (ConceptVector.load(rd.root / "vectors" / f"{n}.safetensors") for n in ("anger", "apology"))
    va, vb = a[layer], b[layer]
    want = float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))
    got = float(cos.loc[(cos.a == "anger") & (cos.b == "apology"), "cosine"].iloc[0])
    assert abs(got - want) < 1e-5
    # The similarity test: centred vectors against a permutation null, layer chosen on a held-out half.
    pairs = pd.read_csv(rd.tables / "similarity_pairs.csv")
    assert len(pairs) == 3 and (pairs.layer == layer).all()
    sim = [f for f in rd.ledger.read() if f.kind == "similarity"]
    assert sim
    for f in sim:
        controls = {c.name: c for c in f.controls}
        assert {"null_distribution", "length_control", "heldout_selection", "seed_spread"} <= set(controls)
        row = pairs.loc[pairs.cos_centred.round(4) == f.observation.value].iloc[0]
        assert controls["null_distribution"].passed is bool(row.p_holm < 0.05)
        assert (f.claim is not None) is bool(row.p_holm < 0.05)  # a "related" claim only above the null
        assert f.observation.unit == "texts per class" and f.observation.n_searched == row.n_searched
    assert rd.read_manifest().stages["geometry"].metrics["null_quantile"] > 0
    assert (rd.root / "report.html").is_file()
