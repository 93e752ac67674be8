"""The ``heads`` stage and ``emoscope heads {screen,ablate,patch}`` end to end on a tiny model, and
bad input refused in one line with exit code 2 (before the model loads wherever possible)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from emoscope.cli.main import main
from emoscope.runs import run_spec, spec_from_yaml
from emoscope.vectors import ConceptVector

from .conftest import tiny_model

CHEAP = "vader,repetition,script,nrc"
SMALL = ["--max-new-tokens", "5", "--n-prompts", "4", "--n-random", "3", "--scorers", CHEAP]


@pytest.fixture
def tiny_cli(monkeypatch, tmp_path):
    """The CLI with ``--model tiny`` resolved to the tiny llama (GQA: 4 query heads on 2 KV heads)."""
    import emoscope.models as models

    model = tiny_model("llama")
    monkeypatch.setattr(models, "load_model", lambda name, **kw: model)
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    return model


def _vector(m, tmp_path, name="anger", layers=(1, 2), **meta):
    rng = np.random.default_rng(7)
    v = ConceptVector(name, {x: rng.standard_normal(m.d_model).astype(np.float32) for x in layers}, meta)
    return v.save(tmp_path / f"{name}-{'-'.join(meta) or 'plain'}")


def test_heads_stage_screens_and_ablates_in_one_spec(tmp_path, monkeypatch):
    import emoscope.heads.stage  # noqa: F401  (registers the stage)

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    spec = spec_from_yaml(
        "name: tiny-heads\nmodel: tiny-llama\ndataset: emotions-basic\nstages: [heads]\n"
        "heads: {emotion: anger, vector_layers: [1, 2], n_permutations: 99, heads: 'top:2', n_random: 3,"
        " n_prompts: 4, max_new_tokens: 5, scorers: [nrc, vader, perplexity, repetition, script]}\n")
    rd = run_spec(spec, tmp_path / "run", model_loader=lambda name: model)
    screen = pd.read_csv(rd.tables / "heads_screen.csv")
    assert {"layer", "head", "diff", "p", "p_holm", "rank"} <= set(screen.columns)
    assert len(screen) == 3 * 4 and sorted(screen["rank"]) == list(range(1, 13))
    out = pd.read_csv(rd.tables / "heads_ablate_outputs.csv")
    # per prompt: baseline + (chosen + 3 random sets) x (zero, mean)
    assert len(out) == 4 * (1 + 2 * 4) and set(out.kind) == {"baseline", "chosen", "random"}
    top2 = screen.sort_values("rank").head(2)
    want = ",".join(f"{a}.{b}" for a, b in sorted(zip(top2.layer, top2["head"], strict=True)))
    assert set(out.loc[out.kind == "chosen", "heads"]) == {want}
    assert {"proj_last", "proj_gen", "target_score", "ppl_ratio", "regime"} <= set(out.columns)
    assert (out.loc[out.kind == "baseline", "ppl_ratio"] == 1).all()
    eff = pd.read_csv(rd.tables / "heads_ablate_effects.csv")
    assert set(eff.method) == {"zero", "mean"} and {"proj_gen", "target_score"} <= set(eff.metric)
    assert {"effect", "effect_lo", "effect_hi", "p_value", "rank", "rank_p", "floor"} <= set(eff.columns)
    assert (eff["k"] == 3).all() and set(eff["test"]) <= {"interval", "rank"}
    # the interval test's floor is its table's resolution; the rank decides where the draws do not vary
    # (two-sided among 3 sets: 2/4)
    interval, rank = eff["test"] == "interval", eff["test"] == "rank"
    assert ((interval & (eff["floor"] < 1e-4)) | (rank & np.isclose(eff["floor"], 0.5))).all()
    sets = pd.read_csv(rd.tables / "heads_random_sets.csv")
    chosen = set(want.split(","))
    for heads in sets.loc[sets.config != "chosen", "heads"]:
        assert not set(heads.split(",")) & chosen
    for name in ("heads_screen", "heads_ablate_effects", "draws_heads-001", "draws_heads-004"):
        assert (rd.figures / f"{name}.png").stat().st_size > 1000 and (rd.figures / f"{name}.svg").exists()
    findings = rd.ledger.read()
    assert [f.kind for f in findings] == ["heads"] * 5  # the screen + (zero, mean) x (proj_gen, target_score)
    f = findings[1]
    assert {c.name for c in f.controls} == {"random_heads", "multi_token_outputs", "seed_spread"}
    assert f.observation.n == 4 and f.observation.unit == "prompts" and f.observation.n_searched == 1
    assert f.observation.p_value is not None and f.verdict != "ships"  # 4 prompts: n too small
    assert findings[0].claim is None and findings[0].observation.n_searched == 12
    assert (rd.root / "heads" / "vector.safetensors").exists()
    meta = json.loads((rd.root / "heads" / "screen.json").read_text())
    assert meta["spec_model"] == "tiny-llama" and meta["n_heads"] == 4
    notes = rd.read_manifest().stages["heads"].notes
    assert any("mean over neutral-corpus" in n for n in notes) and any("random sets of 2 heads" in n for n in notes)


def test_cli_screen_then_ablate_and_patch_from_it(tiny_cli, tmp_path, capsys):
    vec = _vector(tiny_cli, tmp_path)
    h1, h2, h3 = tmp_path / "h1", tmp_path / "h2", tmp_path / "h3"
    rc = main(["-q", "heads", "screen", "--model", "tiny", "--vector", str(vec), "--dataset", "emotions-basic",
               "--n-permutations", "99", "--out", str(h1)])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "top heads of the screen" in text
    assert (h1 / "tables" / "heads_screen.csv").exists() and (h1 / "report.html").exists()
    assert not (h1 / "tables" / "heads_ablate_outputs.csv").exists()

    rc = main(["-q", "heads", "ablate", "--model", "tiny", "--heads", "top:2", "--from", str(h1), "--prompts",
               "neutral-starts", "--methods", "zero", *SMALL, "--out", str(h2)])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "ablate: chosen heads minus the mean of 3 random head sets" in text
    out = pd.read_csv(h2 / "tables" / "heads_ablate_outputs.csv")
    assert len(out) == 4 * (1 + 4) and not (h2 / "tables" / "heads_screen.csv").exists()
    assert out["proj_gen"].notna().all()  # the vector came from the screen run
    spec = (h2 / "spec.yaml").read_text()
    assert "modes:\n  - ablate" in spec and "from_run:" in spec

    rc = main(["-q", "heads", "patch", "--model", "tiny", "--heads", "1.0,2:3", "--from", str(h1), "--source",
               "emotions-basic:anger", "--prompts", "neutral-starts", *SMALL, "--out", str(h3)])
    assert rc == 0, capsys.readouterr().err
    out = pd.read_csv(h3 / "tables" / "heads_patch_outputs.csv")
    assert set(out.method) == {"none", "patch"} and set(out.loc[out.kind == "chosen", "heads"]) == {"1.0,2.3"}
    eff = pd.read_csv(h3 / "tables" / "heads_patch_effects.csv")
    assert set(eff.method) == {"patch"}
    notes = " ".join(json.loads((h3 / "manifest.json").read_text())["stages"]["heads"]["notes"])
    assert "emotions-basic:anger" in notes and "aligned from the end" in notes


def test_random_sets_fall_back_to_the_chosen_heads_layer_band_and_say_so(tiny_cli, tmp_path, capsys):
    # 3 of layer 1's 4 heads chosen: one other head there, so no set can match per layer; the sets come
    # from layers 1..2 (the band the chosen heads span), and the notes and findings say so
    out = tmp_path / "band"
    rc = main(["-q", "heads", "ablate", "--model", "tiny", "--heads", "1.0,1.1,1.2,2.3", "--methods", "zero",
               *SMALL, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    sets = pd.read_csv(out / "tables" / "heads_random_sets.csv")
    drawn = [h for heads in sets.loc[sets.config != "chosen", "heads"] for h in heads.split(",")]
    assert len(drawn) == 3 * 4 and {h.split(".")[0] for h in drawn} <= {"1", "2"}
    assert not set(drawn) & {"1.0", "1.1", "1.2", "2.3"}
    notes = " ".join(json.loads((out / "manifest.json").read_text())["stages"]["heads"]["notes"])
    assert "too few other heads to match random heads by layer" in notes
    assert "any heads of the layers 1..2 the chosen heads span" in notes
    controls = [c.get("note", "") for line in (out / "findings.jsonl").read_text().splitlines()
                for c in json.loads(line).get("controls", [])]
    assert any("layers 1..2 the chosen heads span" in n for n in controls)


def test_cli_ablate_with_top_k_and_no_screen_run_screens_first(tiny_cli, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["-q", "heads", "ablate", "--model", "tiny", "--emotion", "anger", "--vector-layers", "1,2",
               "--n-permutations", "49", "--heads", "top:1", *SMALL, "--methods", "mean", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert (out / "tables" / "heads_screen.csv").exists() and (out / "tables" / "heads_ablate_effects.csv").exists()


@pytest.mark.parametrize("argv, match, after_load", [
    (["ablate", "--heads", "3.x"], "not a head", False),
    (["ablate", "--heads", "top:0"], "K must be at least 1", False),
    (["ablate", "--heads", "1.7", "--from", "H1"], "head 1.7 is out of range", False),
    (["ablate", "--heads", "5.0", "--from", "H1"], "head 5.0 is out of range", False),
    (["ablate", "--heads", "1.7", "--vector", "GOOD"], "head 1.7 is out of range", True),
    (["ablate", "--heads", "top:99", "--from", "H1"], "more heads than the 12 screened", False),
    (["ablate", "--from", "MISSING"], "does not exist", False),
    (["ablate", "--from", "OTHER"], "screened heads of other-model", False),
    (["patch", "--from", "H1", "--source", "emotions-basic:nope"], "source class 'nope' is not a class", False),
    (["patch", "--from", "H1", "--source", "no-such-set:anger"], "unknown dataset", False),
    (["screen", "--vector", "FOREIGN"], "fitted on other-model", False),
    (["screen", "--vector", "WIDTH"], "d_model", True),
    (["screen", "--vector", "SHA"], "other weights", True),
    (["screen", "--vector", "missing.safetensors"], "not found", False),
    (["screen", "--vector", "JOY"], "class 'joy' is not a class of emotions-basic", False),
    (["screen", "--emotion", "anger", "--dataset", "emotions-basic", "--baseline", "calm"], "baseline 'calm'", False),
])
def test_bad_input_is_one_line_exit_2(tiny_cli, tmp_path, capsys, argv, match, after_load):
    good = _vector(tiny_cli, tmp_path)
    h1 = tmp_path / "h1"
    assert main(["-q", "heads", "screen", "--model", "tiny", "--vector", str(good), "--n-permutations", "19",
                 "--out", str(h1)]) == 0
    other = tmp_path / "other"
    import shutil

    shutil.copytree(h1, other)
    meta = json.loads((other / "heads" / "screen.json").read_text())
    (other / "heads" / "screen.json").write_text(json.dumps({**meta, "spec_model": "other-model"}))
    capsys.readouterr()
    subs = {"H1": str(h1), "OTHER": str(other), "MISSING": str(tmp_path / "nowhere"), "GOOD": str(good),
            "FOREIGN": str(_vector(tiny_cli, tmp_path, model="other-model")),
            "WIDTH": str(ConceptVector("anger", {1: np.ones(5, np.float32)}).save(tmp_path / "w")),
            "SHA": str(_vector(tiny_cli, tmp_path, weights_sha256="0" * 64)),
            "JOY": str(_vector(tiny_cli, tmp_path, name="joy"))}
    out = tmp_path / "o"
    cmd = ["heads", argv[0], "--model", "tiny", *[subs.get(a, a) for a in argv[1:]], "--out", str(out),
           *(SMALL if argv[0] != "screen" else [])]
    rc = main(cmd)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and match in err and len(err.splitlines()) == 1, err
    if not after_load:
        assert not out.exists(), "refused input must leave nothing behind"
