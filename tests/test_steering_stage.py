"""The ``steer`` run stage end to end on a tiny random model: tables, figures, findings."""

from __future__ import annotations

import types

import pandas as pd
import pytest

from emoscope.runs import run_spec, spec_from_yaml

from .conftest import tiny_model


def test_steer_stage_writes_tables_figures_and_findings(tmp_path, monkeypatch):
    import emoscope.steering.stage  # noqa: F401  (registers the stage)
    from emoscope.datasets import load_dataset

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    full = load_dataset("emotions-basic")
    keep = [i for i, y in enumerate(full.labels) if y in ("gratitude", "neutral")][:24]
    small = types.SimpleNamespace(texts=[full.texts[i] for i in keep], labels=[full.labels[i] for i in keep],
                                  classes=["gratitude", "neutral"], sha256=full.sha256)
    spec = spec_from_yaml("name: tiny-steer\nmodel: tiny-llama\ndataset: emotions-basic\nstages: [steer]\n"
                          "steer: {layers: [1], strengths: [-2, 0, 2], n_prompts: 3, max_new_tokens: 6, n_random: 2,"
                          " scorers: [nrc, vader, perplexity, repetition, script]}\n")
    rd = run_spec(spec, tmp_path / "run", model_loader=lambda name: model, dataset_loader=lambda name: small)
    out = pd.read_csv(rd.tables / "steer_outputs.csv")
    # per prompt: baseline + vector at +-2 + 2 random vectors of each of 2 kinds at +-2
    assert set(out.kind) == {"baseline", "vector", "random"} and len(out) == 3 * (1 + 2 + 2 * 2 * 2)
    assert set(out.random_kind[out.kind == "random"]) == {"isotropic", "covariance"}
    assert (out.vector[out.kind == "vector"] == "gratitude").all()
    success = pd.read_csv(rd.tables / "steer_success.csv")
    assert sorted(success.strength) == [-2, 2]
    assert {"rank", "rank_p", "effect_cov", "rank_p_cov"} <= set(success.columns) and (success.n_random == 2).all()
    findings = rd.ledger.read()
    # the random draws' picture sits beside the finding it judges (draws_<finding id>)
    for name in ("steer_dose_response", "steer_regime_map", f"draws_{findings[0].id}"):
        assert (rd.figures / f"{name}.png").stat().st_size > 1000
    assert [f.kind for f in findings] == ["steering", "steering"]
    names = {c.name for c in findings[0].controls}
    assert names == {"random_vectors", "heldout_selection", "multi_token_outputs", "fluency", "seed_spread"}
    obs = findings[0].observation
    assert obs.n == 1 and obs.unit == "prompts" and obs.n_searched == 2  # 3 prompts: chosen on 2, reported on 1
    assert findings[0].verdict != "ships"
    m = rd.read_manifest()
    assert m.stages["steer"].status == "done"
    assert any("regime thresholds" in n for n in m.stages["steer"].notes)
    assert sum(n.startswith("regimes, layer ") for n in m.stages["steer"].notes) == len(set(success.layer))


def test_steer_stage_rejects_unknown_options():
    import emoscope.steering.stage  # noqa: F401
    from emoscope.errors import SpecError

    with pytest.raises(SpecError, match="strenghts"):
        spec_from_yaml("name: x\nmodel: m\nstages: [steer]\nsteer: {strenghts: [1]}\n")
