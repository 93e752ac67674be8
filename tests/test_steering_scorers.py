"""Scorers on known strings, regime thresholds at their boundaries, success statistics on planted data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emoscope.core.stats import bootstrap
from emoscope.errors import InputError
from emoscope.steering import RegimeThresholds, known_scorers, register_scorer, score_texts
from emoscope.steering.regimes import classify_regimes, regime_switches, success_table
from emoscope.steering.scorers import main_script, output_perplexity, words

from .conftest import tiny_model


def test_nrc_counts_emotion_words_without_corpora():
    s = score_texts(["What a wonderful, happy day!", "The angry man sat.", "", "Smiles everywhere"], ["nrc"])
    assert s["nrc_joy"][0] == pytest.approx(2 / 5)  # wonderful, happy out of 5 words
    assert s["nrc_anger"][1] == pytest.approx(1 / 4) and s["nrc_joy"][1] == 0
    assert s["nrc_joy"][2] == 0  # empty text
    assert s["nrc_joy"][3] == pytest.approx(1 / 2)  # "smiles" -> "smile" by the light lemmatiser


def test_vader_valence_sign():
    s = score_texts(["I love this, it is wonderful.", "This is terrible and I hate it.", "The bus is at nine."],
                    ["vader"])["valence"]
    assert s[0] > 0.5 and s[1] < -0.5 and s[2] == 0.0


def test_repetition_and_distinct_n():
    s = score_texts(["the cat sat on the mat", "go go go go go go go go", "one two three"], ["repetition"])
    assert s["distinct_1"][0] == pytest.approx(5 / 6) and s["distinct_2"][0] == 1.0 and s["rep4"][0] == 0.0
    assert s["distinct_1"][1] == pytest.approx(1 / 8) and s["rep4"][1] == pytest.approx(4 / 5)
    assert s["rep4"][2] == 0.0  # fewer than four words: nothing can repeat


def test_token_loops_without_words_are_collapse():
    # seen on SmolLM2 at strength 8: one giant "word" (Morestestest...) or "\n\n*" loops, which
    # word counts cannot see; the output tokens can
    texts = ["Mor" + "est" * 40, "The a" + "\n\n*" * 20, "I walked to the station and bought a ticket for the early train."]
    ids = [[44] + [7] * 40, [3, 5] + [9, 11] * 20, list(range(100, 116))]
    s = score_texts(texts, ["repetition"], output_ids=ids)
    assert s["distinct_1_tok"][0] == pytest.approx(2 / 41) and s["rep4_tok"][0] == pytest.approx(36 / 38)
    assert s["rep4_tok"][2] == 0.0 and s["distinct_1_tok"][2] == 1.0
    assert "rep4_tok" not in score_texts(texts, ["repetition"])  # no token ids, no token columns
    df = pd.DataFrame({"kind": "vector", "strength": 8.0, "target_change": 0.0,
                       "n_words": [len(words(t)) for t in texts], "n_tokens": [len(i) for i in ids], **s})
    assert df.n_words.tolist()[:2] == [1, 2]  # too few words for the word rule
    assert classify_regimes(df, "target").tolist() == ["repetitive collapse", "repetitive collapse", "no effect"]
    short = df.assign(n_tokens=RegimeThresholds().min_words - 1)
    assert classify_regimes(short, "target").tolist() == ["no effect"] * 3


def test_script_leakage_against_the_prompt_script():
    s = score_texts(["Hello there", "Hello 你好", "Привет мир"], ["script"], prompts=["Hi", "Hi", "Hi"])
    assert s["script_leakage"].tolist() == [0.0, pytest.approx(2 / 7), 1.0]
    same = score_texts(["你好 hello"], ["script"], prompts=["你好吗"])["script_leakage"]
    assert same[0] == pytest.approx(5 / 7)
    assert main_script("Ελληνικά") == "GREEK"


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_perplexity_matches_a_direct_computation(family):
    import torch

    model = tiny_model(family)
    tok = model.tokenizer
    # a shared prompt with outputs of different lengths, another prompt of another length, batches of 2
    prompts = [tok("Thank you so much")["input_ids"], tok("Rain")["input_ids"], tok("Thank you so much")["input_ids"]]
    outs = [tok(" for the lovely gift")["input_ids"], tok(" is expected")["input_ids"], tok(" again")["input_ids"]]
    got = output_perplexity(model, prompts, outs, batch_size=2)
    for i in range(3):
        ids = torch.tensor([prompts[i] + outs[i]])
        with torch.no_grad():
            logp = torch.log_softmax(model.hf(input_ids=ids).logits[0].float(), -1)
        n, p = len(outs[i]), len(prompts[i])
        nll = -torch.stack([logp[p - 1 + j, outs[i][j]] for j in range(n)]).mean()
        assert got[i] == pytest.approx(float(torch.exp(nll)), rel=1e-4)
    assert np.isnan(output_perplexity(model, prompts[:1], [[]])[0])


def test_classifier_scorer_from_a_local_directory(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from .conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=2, pad_token_id=tok.pad_token_id,
                      id2label={0: "NEG", 1: "POS"}, label2id={"NEG": 0, "POS": 1})
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    s = score_texts(["Thank you so much", "Rain"], [f"classifier:{tmp_path / 'clf'}"])
    assert set(s) == {"clf_neg", "clf_pos"}
    assert np.allclose(s["clf_neg"] + s["clf_pos"], 1.0, atol=1e-5)


def test_registry_names_and_errors():
    assert {"nrc", "vader", "classifier", "perplexity", "repetition", "script"} <= set(known_scorers())

    @register_scorer("exclaims")
    def _exclaims():
        return lambda b: {"exclaims": np.array([t.count("!") for t in b.texts], float)}

    assert score_texts(["a!!", "b"], ["exclaims"])["exclaims"].tolist() == [2.0, 0.0]
    with pytest.raises(InputError, match="unknown scorer 'nope'"):
        score_texts(["x"], ["nope"])
    with pytest.raises(InputError, match="needs a model"):
        score_texts(["x"], ["classifier"])


def _row(**kw):
    base = dict(kind="vector", strength=2.0, target_change=0.0, rep4=0.0, distinct_1=0.9, n_words=20,
                ppl_ratio=1.0, script_leakage=0.0)
    return {**base, **kw}


def test_regime_thresholds_at_their_boundaries():
    t = RegimeThresholds()
    rows = [
        _row(),  # nothing moved
        _row(target_change=t.min_target_change),  # exactly the effect threshold: surgical
        _row(target_change=t.min_target_change * 0.99),
        _row(target_change=-0.2),  # moved against the strength's sign: not on target
        _row(strength=-2.0, target_change=-0.2),  # negative strength, target down: on target
        _row(kind="random", target_change=-0.2),  # random vectors: either direction counts
        _row(rep4=t.max_rep4, target_change=0.5),
        _row(distinct_1=t.min_distinct1, target_change=0.5),
        _row(rep4=0.9, n_words=t.min_words - 1),  # too short to call collapsed
        _row(ppl_ratio=t.max_ppl_ratio, target_change=0.5),
        _row(ppl_ratio=t.max_ppl_ratio * 0.99, target_change=0.5),
        _row(script_leakage=t.max_script_leakage),
        _row(rep4=0.9, ppl_ratio=10.0),  # collapse is checked first
    ]
    got = classify_regimes(pd.DataFrame(rows), "target").tolist()
    assert got == ["no effect", "surgical", "no effect", "no effect", "surgical", "surgical",
                   "repetitive collapse", "repetitive collapse", "no effect", "explosive", "surgical",
                   "explosive", "repetitive collapse"]
    strict = RegimeThresholds(min_target_change=0.6)
    assert classify_regimes(pd.DataFrame([_row(target_change=0.5)]), "target", strict).tolist() == ["no effect"]


def _planted(effect: float, n: int = 24, k: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n):
        for s in (-2.0, 2.0):
            rows.append(dict(kind="vector", vector="joy", layer=5, strength=s, prompt_id=p, seed=0,
                             target_change=np.sign(s) * effect + rng.normal(0, 0.05), regime="surgical"))
            for j in range(k):
                rows.append(dict(kind="random", vector=f"random-{j}", layer=5, strength=s, prompt_id=p, seed=0,
                                 target_change=rng.normal(0, 0.05), regime="no effect"))
    return pd.DataFrame(rows)


def test_success_against_random_detects_a_planted_effect_and_not_a_null():
    hit = success_table(_planted(0.2), "target")
    assert len(hit) == 2 and (hit.effect > 0.15).all() and (hit.p_bonferroni < 1e-3).all()
    assert (hit.success_rate > 0.9).all() and (hit.effect_lo > 0).all() and (hit.share_surgical == 1).all()
    null = success_table(_planted(0.0), "target")
    assert (null.p_value > 0.01).all() and (null.effect_lo < 0).all() and (null.effect_hi > 0).all()


def test_bootstrap_interval_covers_the_mean():
    x = np.random.default_rng(1).normal(3.0, 1.0, 200)
    _, lo, hi = bootstrap(x)
    assert lo < 3.0 < hi and hi - lo < 0.5


def test_regime_switches_name_where_each_regime_takes_over():
    rows = []
    for s, regs in {0.25: ["surgical", "no effect", "surgical"], 1.0: ["explosive", "explosive", "surgical"],
                    4.0: ["repetitive collapse", "repetitive collapse", "explosive"]}.items():
        for sign in (1, -1):
            rows += [dict(kind="vector", layer=3, strength=sign * s, regime=r) for r in regs]
    rows += [dict(kind="vector", layer=7, strength=0.25, regime="explosive"),
             dict(kind="random", layer=7, strength=0.25, regime="surgical")]
    lines = regime_switches(pd.DataFrame(rows))
    assert lines == ["layer 3: intact up to |strength| 0.25; explosive from |strength| 1; repetitive collapse from |strength| 4",
                     "layer 7: broken at every strength tried; explosive from |strength| 0.25; never mostly repetitive collapse"]


def _gemma_like_table():
    """8 prompts, as gemma3-270m at 32 tokens: prompts 2, 6 and 7 loop with no steering and go on
    looping at every strength; prompt 0 is borderline and tips into a loop at any strength; the
    others stay intact below 0.25 and turn explosive from 0.25."""
    rows = []
    for p in range(8):
        looped = p in (2, 6, 7)
        rows.append(dict(kind="baseline", layer=-1, strength=0.0, prompt_id=p, seed=0,
                         regime="repetitive collapse" if looped else "no effect"))
        for s in (0.0625, 0.125, 0.25, 0.5):
            for sign in (1, -1):
                reg = "repetitive collapse" if looped or p == 0 else ("explosive" if s >= 0.25 else "no effect")
                rows.append(dict(kind="vector", layer=6, strength=sign * s, prompt_id=p, seed=0, regime=reg))
    return pd.DataFrame(rows)


def test_where_steering_breaks_text_is_read_on_prompts_whose_unsteered_output_is_intact():
    from emoscope.steering.regimes import intact_at_baseline

    df = _gemma_like_table()
    # counted on every prompt, the loops the model makes by itself call the smallest strength broken
    assert regime_switches(df.assign(kind=df["kind"].replace("baseline", "other")))[0].startswith(
        "layer 6: broken at every strength tried")
    assert regime_switches(df) == ["layer 6: intact up to |strength| 0.125; explosive from |strength| 0.25; never "
                                   "mostly repetitive collapse (on 5 of 8 prompts: 3 left out, their unsteered "
                                   "output is already broken)"]
    assert intact_at_baseline(df).groupby(df["prompt_id"]).all().tolist() == [p not in (2, 6, 7) for p in range(8)]


def test_regime_shares_match_a_count_by_hand():
    """Against a plain loop over random tables: per (layer, strength), the share of each regime among
    the vector rows whose prompt and seed have an intact baseline row."""
    from emoscope.steering.regimes import BROKEN, REGIMES, regime_shares

    rng = np.random.default_rng(3)
    for _ in range(40):
        rows = []
        for p in range(5):
            for seed in (0, 1):
                rows.append(dict(kind="baseline", layer=-1, strength=0.0, prompt_id=p, seed=seed,
                                 regime=REGIMES[rng.integers(4)]))
                for layer in (2, 4):
                    for s in (-1.0, 0.5, 1.0):
                        rows.append(dict(kind="vector", layer=layer, strength=s, prompt_id=p, seed=seed,
                                         regime=REGIMES[rng.integers(4)]))
        df = pd.DataFrame(rows)
        good = {(r["prompt_id"], r["seed"]) for r in rows if r["kind"] == "baseline" and r["regime"] not in BROKEN}
        if not good:  # every unsteered output broken: every prompt counts
            good = {(r["prompt_id"], r["seed"]) for r in rows}
        got = regime_shares(df).set_index(["layer", "strength"])
        for layer in (2, 4):
            for s in (-1.0, 0.5, 1.0):
                cell = [r["regime"] for r in rows if r["kind"] == "vector" and r["layer"] == layer
                        and r["strength"] == s and (r["prompt_id"], r["seed"]) in good]
                if not cell:
                    assert (layer, s) not in got.index
                    continue
                assert got.loc[(layer, s), "n"] == len(cell)
                for reg in REGIMES:
                    assert got.loc[(layer, s), reg] == pytest.approx(cell.count(reg) / len(cell))
