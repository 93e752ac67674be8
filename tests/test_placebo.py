"""``emoscope placebo``: decoys in each candidate's place, judged exactly as the candidate would be,
their ship rate per finding kind; refused in one line where nothing can be replaced."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emoscope.audit import Control, Finding, Observation
from emoscope.cli.main import main
from emoscope.core.decoys import judge_decoys, ship_rates
from emoscope.runs import run_spec, spec_from_yaml

from .conftest import tiny_model

STEER = ("steer: {emotion: anger, layers: [1, 2], strengths: [1.0], n_prompts: 4, max_new_tokens: 4, n_random: 3, "
         "scorers: [nrc, vader, perplexity, repetition, script]}\n")


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    import emoscope.models as models

    model = tiny_model("llama")
    monkeypatch.setattr(models, "load_model", lambda name, **kw: model)
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    return model


def _finding(p: float, ships: bool) -> Finding:
    controls = [Control(name="random_vectors", value=p, passed=ships)]
    return Finding(kind="extraction", claim="c" if ships else None,
                   observation=Observation(metric="m", value=1.0, p_value=p), controls=controls)


def test_each_decoy_is_judged_with_its_own_correction_and_rates_come_with_exact_intervals():
    # decoy a: one claim at p 0.01 among 3 tests (Holm 0.03 < 0.05): ships; decoy b: p 0.03 among 3 does not
    found = {"a": [_finding(0.01, True), _finding(0.5, False), _finding(0.6, False)],
             "b": [_finding(0.03, True), _finding(0.5, False), _finding(0.6, False)]}
    t = judge_decoys("steer", found)
    assert t.set_index("decoy")["ships"].to_dict() == {"a": True, "b": False}
    assert (t["n_tested"] == 3).all() and t.set_index("decoy")["min_p"].to_dict() == {"a": 0.01, "b": 0.03}
    r = ship_rates(t).iloc[0]
    assert (r["n_decoys"], r["n_ship"], r["rate"]) == (2, 1, 0.5)
    from scipy.stats import binomtest

    ci = binomtest(1, 2).proportion_ci(method="exact")
    assert r["lo"] == pytest.approx(ci.low) and r["hi"] == pytest.approx(ci.high)


def test_placebo_is_refused_in_one_line_when_nothing_can_be_replaced(tmp_path, capsys, no_model):
    spec = tmp_path / "probe.yaml"
    spec.write_text("name: p\nmodel: tiny\ndataset: emotions-basic\nstages: [probe]\n")
    out = tmp_path / "out"
    rc = main(["placebo", str(spec), "--n", "3", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no vector, head set or patch source to replace" in err
    assert "stages: probe" in err and not out.exists()
    screen_only = tmp_path / "screen.yaml"
    screen_only.write_text("name: s\nmodel: tiny\ndataset: emotions-basic\nstages: [heads]\nheads: {modes: [screen]}\n")
    assert main(["placebo", str(screen_only), "--out", str(out)]) == 2 and not out.exists()
    assert main(["placebo", str(spec.with_name("none.yaml")), "--out", str(out)]) == 2
    assert main(["placebo", "demo", "--n", "0", "--out", str(out)]) == 2 and not out.exists()


def test_steer_placebo_end_to_end(tiny, tmp_path, capsys):
    spec = tmp_path / "steer.yaml"
    spec.write_text("name: st\nmodel: tiny\ndataset: emotions-basic\nstages: [steer]\n" + STEER)
    out = tmp_path / "pl"
    rc = main(["-q", "placebo", str(spec), "--n", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "how often a decoy ships a claim" in text and "steering" in text
    saved = (out / "spec.yaml").read_text()
    assert "decoys: 2" in saved and "- placebo" in saved
    outputs = pd.read_csv(out / "tables" / "steer_outputs.csv")
    assert set(outputs.loc[outputs.kind == "vector", "vector"]) == {"decoy-0", "decoy-1"}
    assert "anger" not in set(outputs.vector)  # the concept vector itself never runs
    dec = pd.read_csv(out / "tables" / "placebo_decoys_steer.csv")
    assert set(dec.decoy) == {"decoy-0", "decoy-1"} and set(dec.decoy_kind) == {"isotropic", "covariance"}
    rates = pd.read_csv(out / "tables" / "placebo_rates.csv")
    assert rates.set_index("kind").loc["steering", "n_decoys"] == 2
    assert (out / "figures" / "placebo_rates.png").exists() and (out / "report.html").exists()
    from emoscope.core.rundir import RunDir

    fs = RunDir.open(out).ledger.read()
    assert [f.kind for f in fs] == ["placebo"] and fs[0].observation.unit == "decoys"


def test_decoys_are_drawn_as_the_random_controls_and_never_are_one(tiny):
    from emoscope.steering.stage import decoy_vectors
    from emoscope.vectors import ConceptVector

    rng = np.random.default_rng(0)
    v = ConceptVector("anger", {1: rng.standard_normal(tiny.d_model).astype(np.float32) * 3,
                                2: rng.standard_normal(tiny.d_model).astype(np.float32)})
    decoys, kinds = decoy_vectors(tiny, v, [1, 2], 4, "isotropic", seed=0)
    assert [d.name for d in decoys] == [f"decoy-{i}" for i in range(4)] and set(kinds.values()) == {"isotropic"}
    for d in decoys:  # the concept's norm per layer, a direction unrelated to it
        for layer in (1, 2):
            assert np.linalg.norm(d[layer]) == pytest.approx(np.linalg.norm(v[layer]), rel=1e-5)
            cos = d[layer] @ v[layer] / (np.linalg.norm(d[layer]) * np.linalg.norm(v[layer]))
            assert abs(cos) < 0.9
    from emoscope.core.directions import random_layer_directions

    controls = random_layer_directions(tiny.d_model, [1, 2], 10, 0)  # the sweep's own isotropic draws
    for d in decoys:
        assert all(abs(float(d[1] @ c[1])) / np.linalg.norm(d[1]) < 0.999 for c in controls)


def test_heads_and_patch_run_with_decoys(tiny, tmp_path):
    from emoscope.heads.stage import decoy_view

    text = ("name: many\nmodel: tiny-llama\ndataset: emotions-basic\nstages: [heads, patch, placebo]\n"
            "heads: {emotion: anger, vector_layers: [1, 2], n_permutations: 49, heads: 'top:2', n_random: 3, "
            "decoys: 2, n_prompts: 4, max_new_tokens: 4, methods: [zero], scorers: [nrc, vader, perplexity, "
            "repetition, script]}\n"
            "patch: {source: 'emotions-basic:anger', layers: [1, 2], positions: [last], n_targets: 4, n_sources: 4, "
            "max_new_tokens: 4, n_random: 3, decoys: 2, target_score: valence, scorers: [nrc, vader, perplexity, "
            "repetition, script]}\n")
    rd = run_spec(spec_from_yaml(text), tmp_path / "run", model_loader=lambda name: tiny)
    t = rd.tables
    heads = pd.read_csv(t / "placebo_decoys_heads_ablate.csv")
    patch = pd.read_csv(t / "placebo_decoys_patch.csv")
    assert set(heads.decoy) == {"decoy-0", "decoy-1"} and set(heads.kind) == {"heads"}
    assert set(patch.decoy) == {"decoy-3", "decoy-4"} and set(patch.kind) == {"patching"}
    rates = pd.read_csv(t / "placebo_rates.csv").set_index("kind")
    assert set(rates.index) == {"heads", "patching"} and (rates["n_decoys"] == 2).all()
    # a decoy's view: its own rows, relabelled, with the real chosen heads and the other decoys gone
    out = pd.read_csv(t / "heads_ablate_outputs.csv")
    view = decoy_view(out, "random-3", ["random-3", "random-4"])
    assert set(view.config) == {"baseline", "chosen", "random-0", "random-1", "random-2"}
    mine = out[out.config == "random-3"].sort_values(["method", "prompt_id"])
    got = view[view.kind == "chosen"].sort_values(["method", "prompt_id"])
    assert len(got) == len(mine) > 0 and np.allclose(got["proj_gen"], mine["proj_gen"])


def test_introspect_runs_with_decoy_concepts(tmp_path):
    from tests.helpers import intro_model

    model = intro_model("llama", True)
    text = ("name: intro\nmodel: tiny-intro\nstages: [introspect, placebo]\n"
            "introspect: {concepts: [ocean, bread, dog, tree], baseline_words: [table, chair], layers: [1, 2], "
            "strengths: [2.0, 4.0], n_random: 3, decoys: 2, heads: false, n_boot: 100}\n")
    rd = run_spec(spec_from_yaml(text), tmp_path / "run", model_loader=lambda name: model)
    intro = pd.read_csv(rd.tables / "placebo_decoys_introspect.csv")
    assert set(intro.decoy) == {"decoy-0", "decoy-1"} and set(intro.kind) == {"introspection"}
    assert set(intro.decoy_kind) == {"isotropic", "covariance"}
    pv = pd.read_csv(rd.tables / "introspect_per_vector.csv")
    concept = pv.loc[pv.condition == "concept", "vector"]
    assert concept.str.match(r"decoy-[01]:[0-3]$").all() and concept.nunique() == 8  # 4 concepts per decoy run
    assert pd.read_csv(rd.tables / "placebo_rates.csv").set_index("kind").loc["introspection", "n_decoys"] == 2
