"""extract -> vectors -> probe -> geometry as one run on a tiny model: every stage writes its
tables, vectors and findings, and the similarity finding carries its null and length controls."""

from __future__ import annotations

import numpy as np
import pandas as pd

from emoscope.runs import run_spec
from emoscope.runs.spec import parse_spec
from emoscope.vectors import ConceptVector
from tests.test_confound_e2e import tiny_dir  # noqa: F401  (module-scoped fixture)


def test_emotion_pipeline_on_tiny_model(tiny_dir, tmp_path, monkeypatch):  # noqa: F811
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
    sim = [f for f in rd.ledger.read() if f.kind == "similarity"]
    assert len(sim) == 1 and {c.name for c in sim[0].controls} == {"null_distribution", "length_control"}
    # The controls are judged from the tables (recomputed here), and the verdict follows from them:
    # on this model the top pair (the largest |cosine|) clears both the random-direction null and the
    # length control, so the claim ships; a failed control would make it "fails".
    f = sim[0]
    top = cos.loc[cos.cosine.abs().idxmax()]
    q = rd.read_manifest().stages["geometry"].metrics["null_quantile"]
    controls = {c.name: c for c in f.controls}
    assert controls["null_distribution"].passed is bool(top.p_null < 0.05) is True
    assert controls["length_control"].passed is bool(abs(top.cosine_length_controlled) > q) is True
    assert f.observation.value == round(float(top.cosine), 4)
    assert f.verdict == "ships" and f.reasons == []
    assert (rd.root / "report.html").is_file()
