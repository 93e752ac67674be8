"""``SteeringSweep``: one batch with a delta per row gives the same greedy tokens as each
configuration run alone through ``transformers.generate`` (or differs only at a near-tie),
controls are planned and run, bad input fails before anything slow, and the CLI writes a sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emoscope.cli.main import main
from emoscope.core.directions import random_layer_directions
from emoscope.errors import InputError, LayerError
from emoscope.models.batching import eos_ids
from emoscope.models.decode import RowEdits, Sampling, decode_rows
from emoscope.models.interventions import parse_window
from emoscope.steering import SteeringSweep, steer
from emoscope.vectors import ConceptVector
from tests.greedy import same_or_near_tie
from tests.greedy import trim as _trim

from .conftest import tiny_model

PROMPTS = ["Thank you so much for the", "The meeting is", "Rain is expected tomorrow afternoon across",
           "She walked to the market"]
CHEAP = ["vader", "repetition", "script"]


def _joy(model, layers=(0, 1, 2), seed=5):
    rng = np.random.default_rng(seed)
    return ConceptVector("joy", {layer: rng.standard_normal(model.d_model).astype(np.float32) for layer in layers})


def _alone(model, prompts, vec, layer, strength, n, positions="generated", norms=None):
    """Reference: one configuration through transformers.generate, batched over prompts (left padded)."""
    tok = model.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    tok.padding_side = "right"
    kw = dict(max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id, output_scores=True,
              return_dict_in_generate=True)
    if layer is None:
        out = model.hf.generate(**enc, **kw)
    else:
        with steer(model, vec, [layer], strength, positions=positions, norms=norms):
            out = model.hf.generate(**enc, **kw)
    toks = out.sequences[:, enc["input_ids"].shape[1]:]
    scores = torch.stack(out.scores, dim=1)  # (rows, steps, vocab)
    return toks, scores


def _check_same_or_near_tie(got, ref_tokens, ref_scores, stop):
    """Equal tokens, or the first differing step is a near-tie in the reference (``tests.greedy``)."""
    return same_or_near_tie(got, ref_tokens.tolist(), ref_scores, stop)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_batched_sweep_equals_each_configuration_alone(family):
    model = tiny_model(family)
    vec = _joy(model)
    norms = {0: 1.5, 1: 2.0, 2: 2.5}
    sweep = SteeringSweep(model, vec, [1, 2], [0, 1, 3], PROMPTS, max_new_tokens=10, n_random=1, norms=norms,
                          random_kind="isotropic", scorers=CHEAP, target="valence", batch_rows=11,
                          progress=False)  # 11: several chunks
    res = sweep.run()
    t = res.table
    # the plan: baseline + (vector + 1 random) x 2 layers x 4 strengths (+-1, +-3) per prompt
    assert len(t) == len(PROMPTS) * (1 + 2 * 2 * 4)
    assert sorted(t.loc[t.kind == "vector", "strength"].unique()) == [-3, -1, 1, 3]
    stop = eos_ids(model)
    # the random control, rebuilt independently: seeded unit directions scaled to the vector's norm
    draw = random_layer_directions(model.d_model, [1, 2], 1, 0)[0]
    random_vec = {k: draw[k] * np.linalg.norm(vec[k]) for k in (1, 2)}
    outcomes = []
    for (kind, layer, s), g in t.groupby(["kind", "layer", "strength"]):
        v = vec if kind == "vector" else random_vec
        toks, scores = _alone(model, PROMPTS, v, None if kind == "baseline" else int(layer), s, 10, norms=norms)
        for _, row in g.iterrows():
            got = _trim(res.tokens[row.name], stop)
            outcomes.append(_check_same_or_near_tie(got, toks[row.prompt_id], scores[row.prompt_id], stop))
    assert outcomes.count("same") >= 0.9 * len(outcomes)
    # strength 0 = baseline: baseline rows are exactly plain generate
    base = t[t.kind == "baseline"]
    toks, _ = _alone(model, PROMPTS, None, None, 0, 10)
    for _, row in base.iterrows():
        assert _trim(res.tokens[row.name], stop) == _trim(toks[row.prompt_id].tolist(), stop)


def test_one_prompt_at_a_time_matches_the_batch():
    model = tiny_model("llama")
    vec = _joy(model)
    norms = {1: 2.0}
    prompts = PROMPTS[:3]
    res = SteeringSweep(model, vec, [1], [2], prompts, max_new_tokens=8, n_random=0, negate=False, norms=norms,
                        scorers=CHEAP, target="valence", progress=False).run()
    stop = eos_ids(model)
    for _, row in res.table[res.table.kind == "vector"].iterrows():
        toks, scores = _alone(model, [prompts[row.prompt_id]], vec, 1, 2.0, 8, norms=norms)
        _check_same_or_near_tie(_trim(res.tokens[row.name], stop), toks[0], scores[0], stop)


def test_all_positions_without_shared_prefill_also_match():
    model = tiny_model("llama")
    vec = _joy(model)
    norms = {1: 2.0}
    res = SteeringSweep(model, vec, [1], [2], PROMPTS, max_new_tokens=8, n_random=0, negate=False, norms=norms,
                        positions="all", scorers=CHEAP, target="valence", progress=False).run()
    assert res.meta["prefill_rows"] == len(res.table)  # steered prompts cannot share a prefill
    stop = eos_ids(model)
    toks, scores = _alone(model, PROMPTS, vec, 1, 2.0, 8, positions="all", norms=norms)
    for _, row in res.table[res.table.kind == "vector"].iterrows():
        _check_same_or_near_tie(_trim(res.tokens[row.name], stop), toks[row.prompt_id], scores[row.prompt_id], stop)


def test_seeded_sampling_is_the_same_in_a_batch_and_alone():
    model = tiny_model("llama")
    vec = _joy(model)
    res = SteeringSweep(model, vec, [1], [2], PROMPTS[:2], seeds=[0, 1], max_new_tokens=8, n_random=0,
                        norms={1: 2.0}, temperature=1.0, top_p=0.9, scorers=CHEAP, target="valence",
                        progress=False).run()
    t = res.table
    a = t[(t.kind == "baseline") & (t.seed == 0)].index[0]
    b = t[(t.kind == "baseline") & (t.seed == 1)].index[0]
    assert res.tokens[a] != res.tokens[b]  # seeds differ
    prompt = model.tokenizer(PROMPTS[t.loc[a, "prompt_id"]])["input_ids"]
    alone = decode_rows(model, [prompt], [0], RowEdits(), parse_window("generated"), max_new_tokens=8,
                        sampling=Sampling(1.0, 0, 0.9), row_seeds=[0 * 100_003 + int(t.loc[a, "prompt_id"])])
    assert alone.tokens[0] == res.tokens[a]


def test_controls_random_vectors_match_the_norm_and_are_seeded():
    model = tiny_model("llama")
    vec = _joy(model)
    sweep = SteeringSweep(model, vec, [1], [2], PROMPTS[:1], max_new_tokens=2, n_random=3, norms={1: 2.0},
                          unit="token_norm", scorers=CHEAP, target="valence", progress=False)
    plan, deltas, _ = sweep.plan()
    norms = {(r.kind, r.vector, r.strength): round(float(np.linalg.norm(deltas[i][1])), 5)
             for i, r in plan.iterrows() if r.kind != "baseline"}
    assert set(norms.values()) == {4.0}  # strength 2 x token norm 2, for the vector and every random one
    assert sorted(plan.vector.unique()) == ["baseline", "joy", "random-0", "random-1", "random-2", "random-cov-0",
                                            "random-cov-1", "random-cov-2"]
    rnd = plan[plan.kind == "random"]
    assert (rnd.groupby("random_kind").size() == 3 * 2).all() and set(rnd.random_kind) == {"isotropic", "covariance"}
    assert (plan.random_kind[plan.kind != "random"] == "").all()
    again, deltas2, _ = sweep.plan()
    assert all(np.array_equal(deltas[i].get(1, 0), deltas2[i].get(1, 0)) for i in range(len(again)))
    raw = SteeringSweep(model, vec, [1], [2], PROMPTS[:1], max_new_tokens=2, n_random=2, unit="raw",
                        scorers=CHEAP, target="valence", progress=False)
    plan, deltas, _ = raw.plan()
    want = 2 * float(np.linalg.norm(vec[1]))
    assert (plan.kind == "random").sum() == 2 * 2 * 2  # 2 kinds x 2 vectors x +-2
    for i, r in plan.iterrows():
        if r.kind == "random":
            assert np.linalg.norm(deltas[i][1]) == pytest.approx(want, rel=1e-6)


def test_covariance_matched_random_vectors_follow_the_neutral_covariance():
    """Covariance-matched draws are scaled exactly like isotropic ones and point where neutral
    activations vary: their mean variance under the neutral covariance is higher."""
    from emoscope.vectors.strength import neutral_covariance

    model = tiny_model("llama")
    vec = _joy(model)
    sweep = SteeringSweep(model, vec, [1], [1], PROMPTS[:1], max_new_tokens=2, n_random=10, norms={1: 3.0},
                          scorers=CHEAP, target="valence", progress=False)
    plan, deltas, _ = sweep.plan()
    cov = neutral_covariance(model, [1])[1]
    by_kind = {}
    for kind in ("isotropic", "covariance"):
        rows = plan.index[(plan.kind == "random") & (plan.random_kind == kind) & (plan.strength == 1)]
        d = np.stack([deltas[i][1] for i in rows])  # (k, d_model)
        assert len(rows) == 10 and np.allclose(np.linalg.norm(d, axis=1), 3.0)  # the same norm for both kinds
        by_kind[kind] = float(np.mean(np.einsum("kd,de,ke->k", d, cov, d)))
    assert by_kind["covariance"] > by_kind["isotropic"]
    only = SteeringSweep(model, vec, [1], [1], PROMPTS[:1], max_new_tokens=2, n_random=2, norms={1: 3.0},
                         random_kind="covariance", scorers=CHEAP, target="valence", progress=False).plan()[0]
    assert set(only.random_kind[only.kind == "random"]) == {"covariance"}
    with pytest.raises(InputError, match="random_kind"):
        SteeringSweep(model, vec, [1], [1], PROMPTS[:1], random_kind="gaussian", norms={1: 3.0}, scorers=CHEAP,
                      target="valence", progress=False)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(vectors=np.ones(7)), InputError, "d_model=32"),
    (dict(layers=[5]), LayerError, "out of range"),
    (dict(strengths=[1, "big"]), InputError, "strength must be a number"),
    (dict(strengths=[]), InputError, "non-empty list"),
    (dict(prompts=[]), InputError, "no prompts"),
    (dict(prompts=["ok", "  "]), InputError, "prompt 1 is empty"),
    (dict(positions="later"), InputError, "positions"),
    (dict(target="nrc_joy", scorers=["vader"]), InputError, "not produced"),
])
def test_bad_sweep_input_fails_fast_with_one_line(kwargs, error, match):
    model = tiny_model("llama")
    args = dict(model=model, vectors=_joy(model), layers=[1], strengths=[2], prompts=PROMPTS[:1],
                max_new_tokens=2, norms={1: 1.0}, scorers=CHEAP, target="valence", progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match) as e:
        SteeringSweep(**args).run()
    assert "\n" not in str(e.value)


@pytest.fixture
def tiny_cli(monkeypatch, tmp_path):
    """The CLI with ``--model tiny`` resolved to the tiny llama and a small neutral corpus."""
    import emoscope.models as models

    model = tiny_model("llama")
    monkeypatch.setattr(models, "load_model", lambda name, **kw: model)
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    return model


def test_cli_steer_writes_the_sweep(tiny_cli, tmp_path, capsys):
    vec_path = _joy(tiny_cli).save(tmp_path / "joy")
    out = tmp_path / "out"
    rc = main(["-q", "steer", "--model", "tiny", "--vector", str(vec_path), "--layers", "1,2", "--strengths",
               "-2,0,2", "--prompts", "neutral-starts", "--n-prompts", "3", "--max-new-tokens", "6",
               "--n-random", "1", "--scorers", "vader,repetition,script,nrc", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    table = pd.read_csv(out / "tables" / "steer_outputs.csv")
    # per prompt: baseline + (vector + 1 isotropic + 1 covariance random) x 2 layers x +-2
    assert set(table.kind) == {"baseline", "vector", "random"} and len(table) == 3 * (1 + 3 * 2 * 2)
    assert {"text", "regime", "target_score", "valence", "rep4", "script_leakage"} <= set(table.columns)
    spec = (out / "spec.yaml").read_text()
    assert "layers:\n  - 1\n  - 2" in spec and "n_random: 1" in spec
    for name in ("steer_dose_response", "steer_regime_map"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000 and (out / "figures" / f"{name}.svg").exists()
    assert (out / "tables" / "steer_success.csv").exists() and (out / "report.html").exists()
    saved = ConceptVector.load(out / "steer" / "vector.safetensors")
    from emoscope.vectors.strength import vector_unit

    assert sorted(vector_unit(saved, "token_norm").values) == [1, 2]  # the vector carries the unit it ran in


@pytest.mark.parametrize("argv, match", [
    (["--strengths", "1,x"], "strength"),
    (["--layers", "7"], "out of range"),
    (["--prompts", "empty.txt"], "empty"),
    (["--vector", "WRONG_WIDTH"], "d_model"),
    (["--vector", "missing.safetensors"], "not found"),
])
def test_cli_bad_input_is_one_line_exit_2(tiny_cli, tmp_path, capsys, argv, match):
    (tmp_path / "empty.txt").write_text("\n")
    good = _joy(tiny_cli).save(tmp_path / "joy")
    wrong = ConceptVector("joy", {1: np.ones(5, dtype=np.float32)}).save(tmp_path / "wrong")
    args = {"--vector": str(good), "--layers": "1", "--strengths": "2", "--prompts": "neutral-starts"}
    for k, v in zip(argv[::2], argv[1::2], strict=True):
        args[k] = {"empty.txt": str(tmp_path / "empty.txt"), "WRONG_WIDTH": str(wrong)}.get(v, v)
    cmd = ["steer", "--model", "tiny", "--out", str(tmp_path / "o"), "--max-new-tokens", "2"]
    for k, v in args.items():
        cmd += [k, v]
    rc = main(cmd)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and match in err and len(err.splitlines()) == 1, err
