"""The ``patching`` finding on planted tables (ships with a planted effect, not without, not when the
neutral source does as well), the ``patch`` stage end to end on a tiny model, and ``emoscope patch``
(its cell table, and bad input refused in one line before any model loads)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import emoscope.models
from emoscope.cli.main import main
from emoscope.patching.effects import cell_table
from emoscope.patching.findings import patching_findings
from emoscope.patching.sweep import PatchResult
from emoscope.runs import RunDir, run_spec, spec_from_yaml
from emoscope.steering import RegimeThresholds

from .conftest import tiny_model

CELLS = [(3, "last"), (3, "all"), (5, "last"), (5, "all")]


def planted(effect: float, n_prompts: int = 48, k: int = 10, neutral_effect: float = 0.0, step1: float = 1.0,
            noise: float = 0.05, seed: int = 0, at=(5, "last"), kinds=("isotropic",),
            step1_only: float = 0.0) -> PatchResult:
    """A patch-sweep table whose source patch raises the target by ``effect`` at cell ``at`` (and
    its step-1 view by ``step1 * effect + step1_only``), the neutral patch by ``neutral_effect`` there, random
    patches by nothing. Every output is fluent and 16 tokens long."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        rows.append(("baseline", "baseline", -1, "", p))
        for layer, pos in CELLS:
            rows += [("self", "self", layer, pos, p), ("patch", "anger", layer, pos, p),
                     ("neutral", "neutral", layer, pos, p)]
            rows += [("random", ("random-" if kd == "isotropic" else "random-cov-") + str(j), layer, pos, p, kd)
                     for kd in kinds for j in range(k)]
    rows = [r if len(r) == 6 else (*r, "") for r in rows]
    t = pd.DataFrame(rows, columns=["kind", "source", "layer", "positions", "prompt_id", "random_kind"])
    t["seed"] = 0
    t["strength"] = np.where(t.kind.isin(["baseline", "self"]), 0.0, 1.0)
    hit = (t.layer == at[0]) & (t.positions == at[1])
    shift = np.where(hit & (t.kind == "patch"), effect, 0.0) + np.where(hit & (t.kind == "neutral"), neutral_effect, 0.0)
    change = noise * rng.standard_normal(len(t)) + shift
    change = np.where(t.kind.isin(["baseline", "self"]), 0.0, change)
    t["target_change"] = change
    t["target_score"] = 0.1 + change
    t["step1_change"] = np.where(t.kind.isin(["baseline", "self"]), 0.0,
                                 step1 * shift + np.where(hit & (t.kind == "patch"), step1_only, 0.0)
                                 + noise * rng.standard_normal(len(t)))
    t["regime"] = np.where(hit & (t.kind == "patch") & (effect > 0), "surgical", "no effect")
    t["n_tokens"], t["ppl_ratio"] = 16, 1.0
    t["n_patched"], t["unpatched_target"], t["unused_source"], t["delta_norm"] = 1, 0, 0, 1.0
    meta = {"source": "anger", "neutral": "emotions-basic:neutral", "pairing": "class_mean", "generated": False}
    return PatchResult(table=t, cells=cell_table(t, n_boot=200), target="nrc_anger", thresholds=RegimeThresholds(),
                       meta=meta)


def _controls(f):
    return {c.name: c.passed for c in f.controls}


def test_a_planted_patch_effect_ships_with_every_control():
    res = planted(0.2)
    findings, summary = patching_findings(res, alpha=0.05, seed=0, max_new_tokens=16, n_boot=500)
    f = findings[0]
    obs = f.observation
    assert f.kind == "patching" and obs.unit == "prompts" and obs.n == 24 and obs.n_searched == len(CELLS)
    assert "layer 5, positions last" in obs.metric and obs.value == pytest.approx(0.2, abs=0.05)
    assert obs.interval[0] > 0 and obs.p_value < 1e-3
    assert _controls(f) == {"random_patch": True, "neutral_source": True, "multi_token_outputs": True,
                            "fluency": True, "seed_spread": True, "heldout_selection": True}
    assert f.claim is not None and f.verdict == "ships", f.reasons
    notes = {c.name: c.note for c in f.controls}
    assert "rank 1 of 11" in notes["random_patch"] and "unit: the draw" in notes["random_patch"]
    assert "same layer and positions" in notes["neutral_source"]
    assert "the whole search re-run each time for the candidate and the 10 random patches" in notes["seed_spread"]
    assert "(layer 5, positions last)" in notes["seed_spread"]
    step = findings[1]  # the next-token view of the same cell: an observation, never a claim
    assert step.claim is None and "step-1 view" in step.observation.metric and step.observation.n == 24
    assert step.observation.value == pytest.approx(0.2, abs=0.05)
    assert "held-out change" in summary
    cells = res.cells.set_index(["layer", "positions"])
    assert cells.loc[(5, "last"), "effect"] == pytest.approx(0.2, abs=0.03)
    assert cells.loc[(5, "last"), "views"] == "agree" and cells.loc[(5, "last"), "rank"] == 1
    assert cells.loc[(5, "last"), "effect_vs_neutral"] == pytest.approx(0.2, abs=0.03)


def test_covariance_matched_patches_are_judged_too_and_a_claim_must_beat_both_kinds():
    """``random_kind: covariance`` used to leave every effect NaN (the kind was hard-coded)."""
    res = planted(0.2, kinds=("covariance",))
    (f, step) = patching_findings(res, alpha=0.05, seed=0, max_new_tokens=16, n_boot=200)[0]
    assert np.isfinite(f.observation.value) and f.observation.p_value < 1e-3 and f.verdict == "ships", f.reasons
    assert "covariance" in next(c.note for c in f.controls if c.name == "random_patch")
    both = planted(0.2, kinds=("isotropic", "covariance"))
    cov = (both.table.kind == "random") & (both.table.random_kind == "covariance") & (both.table.layer == 5) \
        & (both.table.positions == "last")
    both.table.loc[cov, "target_change"] += 0.2  # covariance-matched patches do as well
    (f, _) = patching_findings(both, alpha=0.05, seed=0, max_new_tokens=16, n_boot=200)[0]
    rp = next(c for c in f.controls if c.name == "random_patch")
    assert rp.passed is False and f.claim is None and f.observation.p_value == rp.value > 0.05


def test_without_a_planted_effect_there_is_no_claim():
    findings, _ = patching_findings(planted(0.0), alpha=0.05, seed=0, max_new_tokens=16, n_boot=200)
    f = findings[0]
    assert f.claim is None and _controls(f)["random_patch"] is False and f.verdict != "ships"


def test_a_neutral_source_that_does_as_well_fails_the_claim():
    findings, _ = patching_findings(planted(0.2, neutral_effect=0.2), alpha=0.05, seed=0, max_new_tokens=16,
                                    n_boot=200)
    f = findings[0]
    assert f.claim is not None and _controls(f)["random_patch"] is True
    assert _controls(f)["neutral_source"] is False and f.verdict == "fails"
    assert any("patching from neutral text" in r for r in f.reasons)


def test_few_prompts_need_controls_and_the_views_can_disagree():
    res = planted(0.2, n_prompts=8, step1=-1.0)
    findings, _ = patching_findings(res, alpha=0.05, seed=0, max_new_tokens=16, n_boot=200)
    assert findings[0].observation.n == 4 and findings[0].verdict != "ships"
    cell = res.cells.set_index(["layer", "positions"]).loc[(5, "last")]
    assert cell["step1_effect_hi"] < 0  # the planted step-1 view goes down
    assert cell["views"] == ("disagree" if cell["effect_lo"] > 0 else "step-1 only")
    null = planted(0.0, step1_only=-0.2).cells.set_index(["layer", "positions"]).loc[(5, "last")]
    assert null["effect_lo"] <= 0 <= null["effect_hi"] and null["views"] == "step-1 only"
    one = planted(0.2, n_prompts=1)
    (f,) = patching_findings(one, n_boot=0)[0]
    assert f.claim is None and "not held out" in f.observation.metric


# -- the stage and the CLI -------------------------------------------------------------------------
def test_patch_stage_writes_tables_figure_and_findings(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    spec = spec_from_yaml("name: tiny-patch\nmodel: tiny-llama\nstages: [patch]\n"
                          "patch: {source: 'emotions-basic:anger', layers: [1, 2], positions: [last, 'window:3'], "
                          "n_targets: 4, n_sources: 6, max_new_tokens: 5, n_random: 2, target_score: valence, "
                          "scorers: [nrc, vader, perplexity, repetition, script]}\n")
    rd = run_spec(spec, tmp_path / "run", model_loader=lambda name: model)
    out = pd.read_csv(rd.tables / "patch_outputs.csv")
    # per target: baseline + 4 cells x (self + patch + neutral + 2 random)
    assert len(out) == 4 * (1 + 4 * 5) and set(out.kind) == {"baseline", "self", "patch", "neutral", "random"}
    assert {"text", "regime", "target_score", "target_change", "step1", "step1_change", "n_patched",
            "unpatched_target", "unused_source", "delta_norm", "ppl_ratio"} <= set(out.columns)
    assert (out.loc[out.kind == "self", "changed"] == False).all()  # noqa: E712
    cells = pd.read_csv(rd.tables / "patch_cells.csv")
    assert len(cells) == 4 and {"effect", "step1_effect", "views", "effect_vs_neutral", "p_step1"} <= set(cells.columns)
    assert (rd.figures / "patch_effect_by_layer.png").stat().st_size > 1000
    assert (rd.figures / "draws_patch-000.png").stat().st_size > 1000  # beside the held-out finding
    findings = rd.ledger.read()
    assert [f.kind for f in findings] == ["patching", "patching"]
    assert {c.name for c in findings[0].controls} == {"random_patch", "neutral_source", "multi_token_outputs",
                                                      "fluency", "seed_spread", "heldout_selection"}
    assert findings[0].observation.n == 2 and findings[0].verdict != "ships"
    notes = rd.read_manifest().stages["patch"].notes
    assert any("emotions-basic:neutral" in n for n in notes)
    assert any(n.startswith("self-patch rows") and "16 of 16 outputs identical" in n for n in notes)
    assert any("alignment from the end" in n for n in notes) and any("step-1 view" in n for n in notes)
    assert any(n.startswith("regimes of the patched rows, layer 1, positions last: ") for n in notes)


@pytest.fixture
def tiny_cli(monkeypatch, tmp_path):
    model = tiny_model("llama")
    monkeypatch.setattr(emoscope.models, "load_model", lambda name, **kw: model)
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    return model


def test_cli_patch_prints_the_cell_table(tiny_cli, tmp_path, capsys):
    out = tmp_path / "p1"
    rc = main(["-q", "patch", "--model", "tiny", "--source", "emotions-basic:anger", "--prompts", "neutral-starts",
               "--layers", "1,2", "--positions", "last,prompt", "--generated", "--max-new-tokens", "4", "--n-prompts",
               "3", "--n-sources", "4", "--n-random", "2", "--scorers", "vader,repetition", "--score",
               "valence", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "per cell" in stdout and "step1_effect" in stdout and "effect_vs_neutral" in stdout
    assert "every generated position" in stdout and "left unpatched" in stdout
    spec = (out / "spec.yaml").read_text()
    assert "generated: true" in spec and "source: emotions-basic:anger" in spec
    assert RunDir.open(out).read_manifest().stages["patch"].status == "done"
    assert (out / "report.html").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--source", "emotions-basic:joy"], "source class 'joy' is not a class of emotions-basic (classes: anger, "),
    (["--source", "no-such-set:anger"], "no-such-set"),
    (["--source", "emotions-basic"], "must be DATASET:CLASS"),
    (["--source", "emotions-basic:anger", "--neutral", "emotions-basic:calm"], "neutral class 'calm'"),
    (["--source", "emotions-basic:anger", "--positions", "middle"], "unknown position 'middle'"),
    (["--source", "emotions-basic:anger", "--positions", "last,window:0"], "'window:0': K must be an integer >= 1"),
    (["--source", "emotions-basic:anger", "--layers", "40"], "layer 40 is out of range for smollm2-135m"),
    (["--source", "emotions-basic:anger", "--layers", "1.5"], "relative depth 1.5"),
    (["--source", "emotions-basic:anger", "--prompts", "missing.txt"], "missing.txt"),
])
def test_bad_input_is_one_line_exit_2_before_the_model_loads(tmp_path, capsys, no_model, argv, needle):
    out = tmp_path / "out"
    rc = main(["--quiet", "patch", "--model", "smollm2-135m", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(("emoscope: error: ", "emoscope patch: error: ")), err
    assert needle in err, err
    assert not out.exists()


def test_a_local_model_directory_gives_its_depth_to_the_check(tmp_path, capsys, no_model):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "gemma3", "text_config": {"num_hidden_layers": 3}}')
    rc = main(["--quiet", "patch", "--model", str(d), "--source", "emotions-basic:anger", "--layers", "3",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "layer 3 is out of range" in err and "0..2" in err


def test_a_result_saves_its_tables_and_figure(tmp_path):
    written = planted(0.2, n_prompts=6).save(tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["cells.csv", "effect_by_layer.png", "effect_by_layer.svg", "outputs.csv", "summary.json"]
    assert (tmp_path / "out" / "effect_by_layer.png").stat().st_size > 1000


def test_covariance_matched_random_patches_get_their_own_columns():
    """With both random kinds, the unsuffixed effect is against the isotropic patches and the
    ``_cov`` columns against the covariance-matched ones (planted to move the target by 0.15)."""
    base = planted(0.2, k=5).table
    cov = base[base.kind == "random"].copy()
    cov["source"] = cov["source"].str.replace("random-", "random-cov-")
    hit = (cov.layer == 5) & (cov.positions == "last")
    cov.loc[hit, "target_change"] += 0.15
    t = pd.concat([base.assign(random_kind=np.where(base.kind == "random", "isotropic", "")),
                   cov.assign(random_kind="covariance")], ignore_index=True)
    cells = cell_table(t, n_boot=200).set_index(["layer", "positions"])
    c = cells.loc[(5, "last")]
    assert c["random_kind"] == "isotropic" and c["n_random"] == 5 and c["n_random_cov"] == 5
    assert c["effect"] == pytest.approx(0.2, abs=0.03) and c["effect_cov"] == pytest.approx(0.05, abs=0.03)
    assert c["mean_change_random_cov"] == pytest.approx(0.15, abs=0.03) and c["effect_lo_cov"] < c["effect_cov"]
    assert np.isnan(cell_table(base, n_boot=50).set_index(["layer", "positions"]).loc[(5, "last"), "effect_cov"])
