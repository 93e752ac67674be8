"""The extraction-modes comparison: the paired test over emotions recovers a planted difference and
gives a null on identical arms; per-emotion metrics recover planted structure; the arms' token
sequences; the steering success definition; stage ``modes`` end to end on a tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from emoscope.elicit.arms import framed_sequences, plain_sequences, slot_sequences
from emoscope.elicit.compare import (
    cross_accuracy,
    min_attainable_p,
    paired_comparison,
    probe_accuracy,
    separation,
)
from emoscope.elicit.mode_comparison import paired_table
from emoscope.elicit.success import own_target_effects
from emoscope.errors import InputError

from .conftest import tiny_model

N_EMOTIONS = 12


# -- the paired test -------------------------------------------------------------------------------------
def test_paired_test_recovers_a_planted_difference():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.8, N_EMOTIONS)            # one value per emotion in arm b
    planted = base + 0.1 + 0.01 * rng.standard_normal(N_EMOTIONS)
    r = paired_comparison(planted, base)
    # every emotion moves the same way: the exact signed-rank test reaches its floor 2 / 2**12
    assert r["wins"] == N_EMOTIONS and r["p_value"] == pytest.approx(min_attainable_p(N_EMOTIONS))
    assert r["min_p"] == pytest.approx(2 / 2**12) and r["p_value"] < 0.001
    assert r["diff_lo"] > 0.08 and r["diff_hi"] < 0.12  # bootstrap over emotions brackets the planted 0.1
    assert r["p_value"] == pytest.approx(wilcoxon(planted - base).pvalue)  # scipy directly agrees


def test_paired_test_is_null_on_identical_arms_and_on_exchangeable_noise():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 0.8, N_EMOTIONS)
    same = paired_comparison(a, a.copy())
    assert same["p_value"] == 1.0 and same["diff"] == 0.0 and same["wins"] == 0
    # two arms drawn from one distribution: across many draws the p-values are roughly uniform
    ps = [paired_comparison(rng.normal(size=N_EMOTIONS), rng.normal(size=N_EMOTIONS))["p_value"] for _ in range(200)]
    assert 0.02 < np.mean(np.asarray(ps) < 0.05) < 0.09
    assert 0.4 < np.median(ps) < 0.6


def test_min_attainable_p():
    assert min_attainable_p(12) == pytest.approx(0.000488, abs=1e-6)
    assert min_attainable_p(12, "greater") == pytest.approx(1 / 4096)
    assert min_attainable_p(5) == pytest.approx(0.0625)  # why 12 emotions and not 5


def test_paired_table_holm_adjusts_within_the_table():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=N_EMOTIONS)
    per = {"probe_accuracy": {"gen_instr": x + 0.2, "read_plain": x, "gen_plain": x + 0.2}}
    t = paired_table(per, [("gen_instr", "read_plain", "both"), ("gen_instr", "gen_plain", "instr")], seed=0)
    assert t["p_value"].tolist()[1] == 1.0 and t["p_holm"].tolist()[0] == pytest.approx(2 * t["p_value"][0])


def test_paired_comparison_refuses_unpaired_input():
    with pytest.raises(InputError, match="one value per emotion"):
        paired_comparison([1.0, 2.0], [1.0])


# -- per-emotion metrics on planted data -----------------------------------------------------------------
def _planted(shift: float, n: int = 24, d: int = 16, seed: int = 0, classes=("a", "b", "c", "neutral")):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n * len(classes), d))
    y = np.repeat(list(classes), n)
    for i, c in enumerate(classes[:-1]):
        X[y == c, i] += shift
    return X, y


def test_probe_accuracy_and_separation_track_a_planted_shift():
    X, y = _planted(3.0)
    acc, sep = probe_accuracy(X, y, ["a", "b", "c"], folds=4), separation(X, y, ["a", "b", "c"], folds=4)
    assert (acc > 0.85).all() and (sep > 2.0).all()  # Bayes balanced accuracy at d = 3: 0.93
    Xn, yn = _planted(0.0)
    acc0, sep0 = probe_accuracy(Xn, yn, ["a", "b", "c"], folds=4), separation(Xn, yn, ["a", "b", "c"], folds=4)
    assert (np.abs(acc0 - 0.5) < 0.2).all() and (np.abs(sep0) < 0.8).all()
    # the held-out d of a planted shift s along one unit axis is about s (rest: unit variance)
    assert np.allclose(sep, 3.0, atol=0.6)


def test_cross_accuracy_transfers_a_shared_direction_and_ignores_an_offset():
    X, y = _planted(3.0, seed=0)
    X2, y2 = _planted(3.0, seed=1)
    X2 = X2 + 10.0  # a frame that shifts every state (the instruction in context) is centred away
    assert (cross_accuracy(X, y, X2, y2, ["a", "b", "c"]) > 0.9).all()
    X3, y3 = _planted(3.0, seed=2)
    X3 = X3[:, ::-1].copy()  # the emotions live on other axes in this mode: no transfer
    assert (cross_accuracy(X, y, X3, y3, ["a", "b", "c"]) < 0.75).all()


def test_metrics_refuse_a_class_smaller_than_the_folds():
    X, y = _planted(1.0, n=3)
    with pytest.raises(InputError, match="has 3 rows"):
        probe_accuracy(X, y, ["a"], folds=4)


# -- the arms as token sequences -----------------------------------------------------------------------------
def test_arm_sequences_put_the_same_text_tokens_in_every_frame():
    model = tiny_model("llama")
    texts, labels = ["The bus is late again today.", "A cat sat."], ["joy", "neutral"]
    plain, ps = plain_sequences(model, texts)
    framed, fs = framed_sequences(model, texts, labels, chat=False)
    slot, ss = slot_sequences(model, texts)
    for i in range(2):
        assert ps[i] == (1, len(plain[i]))  # no BOS: the sink (the text's first token) is not pooled
        assert model.tokenizer.decode(plain[i]) == texts[i]
        assert model.tokenizer.decode(framed[i][fs[i][0]: fs[i][1]]).strip() == texts[i]
        assert ss[i] == (len(slot[i]) - 1, len(slot[i]))
    assert fs[0][0] > fs[1][0] or framed[0][: fs[0][0]] != framed[1][: fs[1][0]]  # a different frame per label


# -- steering success -------------------------------------------------------------------------------------------
def _sweep(vector_change: float, n_prompts: int = 6, k: int = 8, broken: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_prompts):
        rows.append({"kind": "baseline", "vector": "baseline", "layer": -1, "strength": 0.0, "prompt_id": p,
                     "nrc_fear": 0.0})
        rows.append({"kind": "vector", "vector": "fear@token", "layer": 3, "strength": 1.0, "prompt_id": p,
                     "nrc_fear": vector_change})
        rows += [{"kind": "random", "vector": f"random-{j}", "layer": 3, "strength": 1.0, "prompt_id": p,
                  "nrc_fear": 0.02 * rng.standard_normal()} for j in range(k)]
    t = pd.DataFrame(rows)
    t["seed"], t["n_words"] = 0, 20
    t["rep4"] = np.where((t.kind == "vector") & broken, 0.9, 0.0)
    return t


def test_success_needs_the_random_range_and_fluency():
    ok = own_target_effects(_sweep(0.3), {"fear@token": "fear"}).iloc[0]
    assert ok.target == "nrc_fear" and ok.success_rate == 1.0 and ok.effect == pytest.approx(0.3, abs=0.02)
    assert ok.random_hi < 0.1
    small = own_target_effects(_sweep(0.001), {"fear@token": "fear"}).iloc[0]
    assert small.success_rate == 0.0  # inside the random range
    collapsed = own_target_effects(_sweep(0.3, broken=True), {"fear@token": "fear"}).iloc[0]
    assert collapsed.success_rate == 0.0 and collapsed.fluent == 0.0 and collapsed.effect > 0.2


# -- the stage -----------------------------------------------------------------------------------------------------
def test_modes_stage_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    from emoscope.runs import run_spec, spec_from_yaml

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    spec = spec_from_yaml("name: tiny-modes\nmodel: tiny-llama\nstages: [modes]\n"
                          "modes: {emotions: [joy, fear, anger], n: 5, max_new_tokens: 6, layers: [1, 2], "
                          "steer_layer: 2, folds: 3, steer: false, promote_k: 2}\n")
    rd = run_spec(spec, tmp_path / "run", model_loader=lambda name: model)
    rec = rd.read_manifest().stages["modes"]
    assert rec.status == "done", rec.error
    paired = pd.read_csv(rd.tables / "modes_paired.csv")
    assert set(paired.metric) == {"probe_accuracy", "separation", "cross_to_read_plain"}
    # 3 emotions: the floor is 0.25 (higher where a difference is exactly 0 and drops out)
    assert (paired.test.str.startswith("Wilcoxon")).all() and (paired.min_p >= 0.25).all()
    metrics = pd.read_csv(rd.tables / "modes_metrics.csv")
    assert set(metrics.arm) == {"gen_instr", "gen_plain", "read_instr", "read_plain", "token"}
    promo = pd.read_csv(rd.tables / "promoted_tokens.csv")
    assert len(promo) == 5 * 3 * 2 * 2 and {"script", "side", "logit"} <= set(promo.columns)
    assert (rd.root / "elicited" / "elicited.jsonl").is_file()
    assert any("smallest attainable p is 0.25" in n for n in rec.notes)
    # gen_instr vs read_plain on probe accuracy and separation (read_plain is the crossed test arm itself)
    assert [f.observation.unit for f in rd.ledger.read()] == ["emotions"] * 2


def test_modes_spec_is_checked_before_any_model(tmp_path):
    from emoscope.runs import run_spec, spec_from_yaml

    def boom(name):
        raise AssertionError("a model was loaded")

    spec = spec_from_yaml("name: bad\nmodel: m\nstages: [modes]\nmodes: {emotions: [joy, curiosity]}\n")
    with pytest.raises(InputError, match="emotions-12 has 0 texts of 'curiosity'"):
        run_spec(spec, tmp_path / "run", model_loader=boom)
    assert not (tmp_path / "run").exists()
    with pytest.raises(Exception, match="listed twice"):
        spec_from_yaml("name: bad\nmodel: m\nstages: [modes]\nmodes: {emotions: [joy, joy]}\n")
