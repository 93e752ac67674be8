"""``strengths: auto``: the pilot finds a planted break point and the grid brackets it; explicit
strengths run exactly as before; ``auto`` is accepted in specs and garbage refused in one line."""

from __future__ import annotations

import itertools
import json
import types

import numpy as np
import pandas as pd
import pytest

from emoscope.steering.pilot import (
    LADDER,
    PILOT_PROMPTS,
    break_points,
    check_strengths,
    grid_from_breaks,
    run_pilot,
)

from .conftest import tiny_model

PROMPTS = ["Tell me about your morning.", "Describe the town you live in.", "Write about the weather.",
           "Explain how to make tea.", "Describe a walk in the park."]
# planted break points, per (layer, sign): where a majority of outputs turns broken and stays so
PLANT = {(1, 1): 0.5, (1, -1): 0.25, (2, 1): 1.0, (2, -1): 1.0}


def planted_regimes(df, target, thresholds=None):  # noqa: ANN001 - the sweep's classify_regimes, planted
    """Broken (explosive) at and past the planted point, intact below, with noise that must not move
    the break: prompt 4's unsteered output is already broken (left out); at layer 1, +0.0625 three of
    the four other prompts break (a lone broken rung below intact ones); at layer 2, -0.5 two of four
    break (not a majority; with the left-out prompt it would be 3 of 5); at each break point prompt 3
    stays intact (3 of 4 is still a majority)."""
    out = []
    for kind, layer, s, p in zip(df["kind"], df["layer"], df["strength"].to_numpy(float), df["prompt_id"], strict=True):
        if p == 4:
            out.append("repetitive collapse")
            continue
        if kind != "vector" or s == 0:
            out.append("no effect")
            continue
        b = PLANT[int(layer), int(np.sign(s))]
        broken = abs(s) >= b and not (abs(s) == b and p == 3)
        broken |= (int(layer), s) == (1, 0.0625) and p < 3
        broken |= (int(layer), s) == (2, -0.5) and p < 2
        out.append("explosive" if broken else "no effect")
    return pd.Series(out, index=df.index, name="regime")


@pytest.fixture
def planted(monkeypatch):
    import emoscope.steering.sweep

    monkeypatch.setattr(emoscope.steering.sweep, "classify_regimes", planted_regimes)


def brackets(grid, breaks):
    """Every (layer, sign) with a break point has >= 3 grid strengths of its sign strictly below it
    and one at or past it."""
    for (_, sign), b in breaks.items():
        mine = [abs(s) for s in grid if np.sign(s) == sign]
        if b is not None and not (sum(m < b for m in mine) >= 3 and any(m >= b for m in mine)):
            return False
    return True


def test_pilot_finds_the_planted_break_and_the_grid_brackets_it(planted, tmp_path):
    model = tiny_model("llama")
    pilot = run_pilot(model, np.ones(model.d_model), [1, 2], PROMPTS, chat=False)
    assert pilot.breaks == PLANT
    assert pilot.n_left_out == 1 and pilot.rows == 5 * (1 + 2 * 2 * len(LADDER))  # no random rows
    assert pilot.meta["scorers"] == ["script", "repetition", "perplexity"]
    # smallest break 0.25 -> 3 strengths below, doubling, then every rung up to the largest (1.0)
    assert pilot.grid == [-1.0, -0.5, -0.25, -0.125, -0.0625, -0.03125, 0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0]
    assert brackets(pilot.grid, pilot.breaks)
    t = pilot.table.set_index(["layer", "strength"])
    assert len(t) == 2 * 2 * len(LADDER) and (t["n"] == 4).all()
    assert t.loc[(1, 0.0625), "intact_share"] == 0.25 and t.loc[(1, 0.125), "intact_share"] == 1.0
    assert t.loc[(2, -0.5), "intact_share"] == 0.5 and t.loc[(2, 1.0), "intact_share"] == 0.25
    assert t.loc[(1, 4.0), "explosive_share"] == 1.0 and (t["collapse_share"] == 0).all()
    assert (t.xs(1, level="layer").loc[[0.5, 1, 2, 4], "break_point"] == 0.5).all()
    assert t["in_grid"].sum() == 2 * len([s for s in pilot.grid if abs(s) in LADDER])
    assert any("breaks at 0.25" in n for n in pilot.notes())
    # deterministic, and resumable: with a run's execution its unit is stored and read back, not run again
    from emoscope.core.executor import Execution

    ex = Execution(root=tmp_path / "units")
    again = run_pilot(model, np.ones(model.d_model), [1, 2], PROMPTS, chat=False, execution=ex)
    assert again.grid == pilot.grid
    pd.testing.assert_frame_equal(again.table, pilot.table)
    journal = tmp_path / "units" / "pilot" / "steer-rows" / "journal.jsonl"
    starts = journal.read_text().count('"start"')
    resumed = run_pilot(model, np.ones(model.d_model), [1, 2], PROMPTS, chat=False, execution=ex)
    assert journal.read_text().count('"start"') == starts == 1 and resumed.grid == pilot.grid


def test_break_point_is_the_smallest_rung_that_stays_mostly_broken():
    """Against brute force over every pattern of broken rungs on a 4-rung ladder."""
    ladder = [0.25, 0.5, 1.0, 2.0]
    for shares in itertools.product([0.0, 0.5, 0.75, 1.0], repeat=4):  # broken share per rung
        t = pd.DataFrame({"layer": 7, "strength": ladder, "intact_share": [1 - x for x in shares]})
        majority = [x > 0.5 for x in shares]
        expect = next((ladder[i] for i in range(4) if all(majority[i:])), None)
        assert break_points(t) == {(7, 1): expect}, shares


def test_grid_brackets_every_break_point_and_has_8_cells_when_they_agree():
    rng = np.random.default_rng(0)
    for _ in range(300):
        layers = list(range(int(rng.integers(1, 4))))
        breaks = {(layer, sign): (None if rng.random() < 0.15 else float(rng.choice(LADDER)))
                  for layer in layers for sign in (1, -1)}
        grid = grid_from_breaks(breaks)
        assert grid == sorted(grid) and grid == [-s for s in reversed(grid)] and 0.0 not in grid
        assert brackets(grid, breaks)
        # no strength run past the largest break point (or the ladder's top where one never broke)
        hi = max(max(LADDER) if b is None else b for b in breaks.values())
        assert max(grid) == hi
        lo = min(max(LADDER) if b is None else b for b in breaks.values())
        assert min(s for s in grid if s > 0) == lo / 8
    assert len(grid_from_breaks({(3, 1): 0.5, (3, -1): 0.5, (9, 1): 0.5, (9, -1): 0.5})) == 8
    assert grid_from_breaks({(3, 1): 0.5}, negate=False) == [0.0625, 0.125, 0.25, 0.5]


@pytest.mark.parametrize("value, want", [("auto", "auto"), ("AUTO", "auto"), ([-1, 0, "2"], [-1.0, 0.0, 2.0]),
                                         (0.5, [0.5])])
def test_strengths_accept_auto_and_numbers(value, want):
    assert check_strengths(value) == want


def _spec(section: str, stage: str = "steer"):
    import emoscope.elicit.leakage_stage  # noqa: F401  (registers the stages)
    import emoscope.steering.stage  # noqa: F401
    from emoscope.runs import spec_from_yaml

    return spec_from_yaml(f"name: x\nmodel: m\ndataset: emotions-basic\nstages: [{stage}]\n{stage}: {section}\n")


def test_specs_take_auto_and_refuse_garbage_in_one_line():
    from emoscope.errors import SpecError
    from emoscope.steering.stage import SteerOptions

    assert SteerOptions().strengths == "auto"
    assert _spec("{strengths: auto}").options("steer").strengths == "auto"
    assert _spec("{strengths: [-1, 0, 1]}").options("steer").strengths == [-1.0, 0.0, 1.0]
    assert _spec("{strengths: auto}", "leakage").options("leakage").strengths == "auto"
    for section, stage, match in [("{strengths: autox}", "steer", "'auto' or a list of numbers"),
                                  ("{strengths: [1, nan]}", "steer", "finite"),
                                  ("{strengths: []}", "steer", "'auto' or a list of numbers"),
                                  ("{strengths: auto, unit: raw}", "steer", "measured unit"),
                                  ("{strengths: [1, x]}", "leakage", "'auto' or a list of numbers")]:
        with pytest.raises(SpecError, match=match) as e:
            _spec(section, stage)
        assert "\n" not in str(e.value) and f"{stage}" in str(e.value)


def _small_dataset():
    from emoscope.datasets import load_dataset

    full = load_dataset("emotions-basic")
    keep = [i for i, y in enumerate(full.labels) if y in ("gratitude", "neutral")][:24]
    return types.SimpleNamespace(texts=[full.texts[i] for i in keep], labels=[full.labels[i] for i in keep],
                                 classes=["gratitude", "neutral"], sha256=full.sha256)


def _run(tmp_path, monkeypatch, section: str, name: str = "run"):
    from emoscope.runs import run_spec, spec_from_yaml

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    spec = spec_from_yaml("name: tiny-steer\nmodel: tiny-llama\ndataset: emotions-basic\nstages: [steer]\n"
                          f"steer: {{layers: [1, 2], n_prompts: 3, max_new_tokens: 4, n_random: 1, {section}}}\n")
    data = _small_dataset()
    return run_spec(spec, tmp_path / name, model_loader=lambda n: model, dataset_loader=lambda n: data), model


def test_steer_auto_sweeps_the_pilot_grid_and_placebo_uses_it_too(tmp_path, monkeypatch, planted):
    import emoscope.steering.pilot as pilot_mod

    pilots = []

    def spy(model, vector, layers, prompts, **kw):  # noqa: ANN001 - the stage imports run_pilot when it runs
        pilots.append(prompts)
        return run_pilot(model, vector, layers, prompts, **kw)

    monkeypatch.setattr(pilot_mod, "run_pilot", spy)
    rd, _ = _run(tmp_path, monkeypatch, "strengths: auto")
    out = pd.read_csv(rd.tables / "steer_outputs.csv")
    pilot = pd.read_csv(rd.tables / "steer_pilot.csv")
    grid = grid_from_breaks(PLANT)
    assert sorted(set(out.strength[out.kind == "vector"])) == grid
    assert set(pilot.layer) == {1, 2} and pilot.groupby(["layer", "strength"]).size().max() == 1
    assert {(int(r.layer), int(np.sign(r.strength))): r.break_point for r in pilot.itertuples()} == PLANT
    # the pilot ran on the PILOT_PROMPTS prompts after the sweep's 3 (none of them in the sweep)
    from emoscope.datasets import load_texts

    every = [t for t in load_texts("neutral-starts") if t.strip()]
    assert pilots == [every[3:3 + PILOT_PROMPTS]] and not set(pilots[0]) & set(out.prompt)
    m = rd.read_manifest().stages["steer"]
    # for as many tokens as the sweep generates (the spec's max_new_tokens: 4), not a fixed short pilot
    assert any(f"({PILOT_PROMPTS} prompts x 4 tokens" in n for n in m.notes)
    assert any(n.startswith("strengths auto: grid -1, -0.5") for n in m.notes)
    assert m.metrics["pilot_seconds"] > 0 and m.metrics["strengths_auto"] == ",".join(f"{s:g}" for s in grid)
    # placebo: the decoys run over the grid the pilot chose for the vector
    rd2, _ = _run(tmp_path, monkeypatch, "strengths: auto, decoys: 2", name="placebo")
    out2 = pd.read_csv(rd2.tables / "steer_outputs.csv")
    assert sorted(set(out2.strength[out2.kind == "vector"])) == grid and (rd2.tables / "steer_pilot.csv").exists()


def test_explicit_strengths_run_exactly_as_a_direct_sweep(tmp_path, monkeypatch):
    """Identity: the stage with explicit strengths gives the rows of SteeringSweep with those
    strengths (the vector the stage saved, the same seed and prompts); no pilot runs."""
    from emoscope.datasets import load_texts
    from emoscope.steering import SteeringSweep
    from emoscope.vectors import ConceptVector

    rd, model = _run(tmp_path, monkeypatch, "strengths: [-2, 0, 0.5]")
    out = pd.read_csv(rd.tables / "steer_outputs.csv", keep_default_na=False)
    assert not (rd.tables / "steer_pilot.csv").exists()
    assert not any("strengths auto" in n for n in rd.read_manifest().stages["steer"].notes)
    vector = ConceptVector.load(rd.root / "steer" / "vector.safetensors")
    prompts = [t for t in load_texts("neutral-starts") if t.strip()][:3]
    direct = SteeringSweep(model, vector, [1, 2], [-2, 0, 0.5], prompts, (0,), 4, n_random=1, seed=0,
                           progress=False).run().table
    assert sorted(set(direct.strength)) == [-2.0, -0.5, 0.0, 0.5, 2.0]
    for col in ("kind", "vector", "layer", "strength", "prompt_id", "token_ids", "regime"):
        assert out[col].astype(str).tolist() == direct[col].astype(str).tolist(), col
    assert json.loads(json.dumps(rd.read_manifest().stages["steer"].metrics)).get("pilot_seconds") is None


def test_leakage_auto_sweeps_the_positive_half_of_the_pilot_grid(tmp_path, monkeypatch, planted):
    import emoscope.elicit.leakage_stage  # noqa: F401  (registers the stage)
    from emoscope.runs import run_spec, spec_from_yaml

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    spec = spec_from_yaml("name: tiny-leak\nmodel: tiny-llama\ndataset: emotions-12\nstages: [leakage]\n"
                          "leakage: {emotions: [joy], layer: 2, strengths: auto, n_prompts: 2, max_new_tokens: 4, "
                          "n_random: 2, promote_k: 3, chat: false}\n")
    rd = run_spec(spec, tmp_path / "leak", model_loader=lambda n: model)
    by = pd.read_csv(rd.tables / "leakage_by_strength.csv")
    # layer 2 breaks at 1.0 either way (PLANT): 3 strengths below it, doubling, and 1.0 itself
    assert sorted(s for s in set(by.abs_strength) if s > 0) == [0.125, 0.25, 0.5, 1.0]
    pilot = pd.read_csv(rd.tables / "leakage_pilot.csv")
    assert set(pilot.emotion) == {"joy"} and set(pilot.layer) == {2} and set(pilot.break_point) == {1.0}
