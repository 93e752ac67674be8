"""What a vector promotes (final norm + unembedding, checked against a hand computation), the
script marks (the same rule as the steering leakage scorer), the token-based method reachable
from ``fit_vectors`` and the ``vectors`` stage, and the leakage summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emoscope.datasets import load_dataset
from emoscope.datasets.cards import parse_card_header
from emoscope.elicit.leakage import leakage_table, score_leakage, script_counts
from emoscope.errors import InputError
from emoscope.steering.scorers import _script, main_script
from emoscope.vectors import ConceptVector
from emoscope.vectors.fit import fit_vectors, token_pairs
from emoscope.vectors.promote import logit_lens, promoted_tokens, token_script, top_in_script

from .conftest import tiny_model


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_logit_lens_is_the_final_norm_then_the_unembedding(family):
    model = tiny_model(family)
    v = np.random.default_rng(0).normal(size=model.d_model)
    got = logit_lens(model, v)
    # by hand: the model's own head on a residual equal to v (hidden_states[-1] has the final norm)
    with torch.inference_mode():
        h = torch.as_tensor(v, dtype=torch.float32)[None, None]
        want = model.hf.lm_head(model.final_norm(h))[0, 0].double().numpy() if hasattr(model.hf, "lm_head") else None
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_promoted_tokens_rank_by_that_logit():
    model = tiny_model("llama")
    v = np.random.default_rng(1).normal(size=model.d_model)
    rows = promoted_tokens(model, ConceptVector("joy", {2: v}), 2, k=4)
    logits = logit_lens(model, v)
    top = [r["token_id"] for r in rows if r["side"] == "top"]
    bottom = [r["token_id"] for r in rows if r["side"] == "bottom"]
    assert top == np.argsort(-logits)[:4].tolist() and bottom == np.argsort(logits)[:4].tolist()
    assert all(r["vector"] == "joy" and r["script"] == token_script(r["token"]) for r in rows)
    # the negated vector promotes what the vector demotes
    neg = promoted_tokens(model, -v, 2, k=4)
    assert [r["token_id"] for r in neg if r["side"] == "top"] == bottom
    with pytest.raises(InputError, match="has no layer 3"):
        promoted_tokens(model, ConceptVector("joy", {2: v}), 3)


def test_a_planted_unembedding_direction_is_promoted_first():
    model = tiny_model("llama")
    W = model.unembed.weight.detach().double().numpy()  # (vocab, d)
    g = model.final_norm.weight.detach().double().numpy()
    target = 123
    v = W[target] / g  # undo the norm's gains: after the norm the residual points along W[target]
    top = promoted_tokens(model, v, 0, k=1)[0]
    assert top["token_id"] == int(np.argmax(W @ W[target]))


@pytest.mark.parametrize("text", ["Hello", " 喜び", "мир", "ἀγάπη", "שלום", "...", "a1", "ß"])
def test_token_script_matches_the_steering_leakage_rule(text):
    letters = [s for s in map(_script, text) if s]
    assert token_script(text) == (main_script(text) if letters else "-")


def test_top_in_script_skips_latin_and_letterless_tokens():
    model = tiny_model("llama")
    rows = top_in_script(model, np.ones(model.d_model), k=3)
    assert all(r["script"] not in ("LATIN", "-") for r in rows)  # the tiny vocabulary is byte-level
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))


# -- the token-based method ---------------------------------------------------------------------------------------
def test_token_diff_is_each_text_minus_its_twin_paired_by_group():
    rng = np.random.default_rng(0)
    y = np.array(["joy", "neutral", "fear", "joy", "neutral", "fear"])
    g = np.array(["t1", "t1", "t1", "t2", "t2", "t2"])
    X = rng.normal(size=(6, 4))
    vecs = fit_vectors({5: X}, y, method="token_diff", groups=g)
    want = ((X[0] - X[1]) + (X[3] - X[4])) / 2
    np.testing.assert_allclose(vecs["joy"][5], want)
    assert vecs["joy"].meta["method"] == "token_diff"
    # with every template complete this is also joy's mean minus neutral's; with a template missing
    # its joy text, the pairing (not the class means) decides: joy of t1 minus the twin of t1 only
    y2 = np.array(["joy", "neutral", "fear", "fear", "neutral", "fear"])
    got = fit_vectors({5: X}, y2, method="token_diff", groups=g)["joy"][5]
    np.testing.assert_allclose(got, X[0] - X[1])
    assert not np.allclose(got, X[0] - X[[1, 4]].mean(0))
    with pytest.raises(InputError, match="no group column"):
        fit_vectors({5: X}, y, method="token_diff")
    with pytest.raises(InputError, match="not 'all'"):
        fit_vectors({5: X}, y, method="token_diff", groups=g, baseline="all")
    with pytest.raises(InputError, match="more than one 'neutral'"):
        token_pairs(["joy", "neutral", "neutral"], ["t1", "t1", "t1"], "joy", "neutral")


def test_template_set_ends_every_text_in_its_slot_word_and_pairs_twins():
    ds = load_dataset("emotion-word-templates")
    assert ds.groups is not None and len(set(ds.groups)) == 20
    import json

    from emoscope.datasets._catalog import data_file

    rows = [json.loads(x) for x in data_file("emotion-word-templates.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["text"].endswith(" " + r["slot"])
    by_group: dict[str, set[str]] = {}
    for r in rows:
        by_group.setdefault(r["group"], set()).add(r["text"][: -len(r["slot"])])
    assert all(len(prefixes) == 1 for prefixes in by_group.values())  # twins share every token before the slot
    assert "Token positions" in ds.card and parse_card_header(ds.card)["n"] == 260


def test_vectors_stage_runs_token_diff_on_the_template_set(tmp_path, monkeypatch):
    from emoscope.runs import run_spec, spec_from_yaml

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    spec = spec_from_yaml("name: tok\nmodel: tiny\ndataset: emotion-word-templates\nstages: [extract, vectors]\n"
                          "extract: {layers: [1], position: last}\nvectors: {method: token_diff}\n")
    rd = run_spec(spec, tmp_path / "run", model_loader=lambda name: model)
    assert rd.read_manifest().stages["vectors"].status == "done"
    joy = ConceptVector.load(rd.root / "vectors" / "joy.safetensors")
    # independent: last-token states by raw forward, joy text minus its twin, averaged over templates
    ds = load_dataset("emotion-word-templates")
    states = {}
    with torch.inference_mode():
        for t in ds.texts:
            ids = model.tokenizer(t, return_tensors="pt")["input_ids"]
            states[t] = model.hf(input_ids=ids, output_hidden_states=True).hidden_states[2][0, -1].double().numpy()
    pairs = {}
    for t, lab, g in zip(ds.texts, ds.labels, ds.groups, strict=True):
        pairs.setdefault(g, {})[lab] = states[t]
    want = np.mean([p["joy"] - p["neutral"] for p in pairs.values()], axis=0)
    np.testing.assert_allclose(joy[1], want, rtol=1e-4, atol=1e-5)


def test_vectors_stage_refuses_token_diff_without_groups(tmp_path):
    from emoscope.runs import run_spec, spec_from_yaml

    spec = spec_from_yaml("name: tok\nmodel: tiny\ndataset: emotions-12\nstages: [extract, vectors]\n"
                          "vectors: {method: token_diff}\n")
    with pytest.raises(InputError, match="needs a 'group' column"):
        run_spec(spec, tmp_path / "run", model_loader=lambda name: (_ for _ in ()).throw(AssertionError))


# -- leakage summaries ----------------------------------------------------------------------------------------------
def test_score_leakage_counts_tokens_and_letters_outside_the_prompt_script():
    class Tok:
        vocab = {1: "Hello", 2: " world", 3: "喜び", 4: "!", 5: "мир"}

        def decode(self, ids, **kw):
            return "".join(self.vocab[i] for i in ids)

    class M:
        tokenizer = Tok()

    tokens = [[1, 2, 4], [1, 3, 5, 4], [3]]
    table = pd.DataFrame({"kind": ["vector", "vector", "random"], "strength": [1.0, -1.0, 1.0],
                          "vector": ["joy", "joy", "random-0"],
                          "text": [M.tokenizer.decode(t) for t in tokens]})
    out = score_leakage(M(), table, tokens, ["Tell me a story."] * 3)
    assert out.token_share.tolist() == pytest.approx([0.0, 2 / 3, 1.0])
    assert out.char_share.tolist() == pytest.approx([0.0, 5 / 10, 1.0])  # letters: Hello + 喜び + мир
    assert out.scripts.tolist() == ["", "CJK:1 CYRILLIC:1", "CJK:1"]
    t = leakage_table(out)
    assert t.set_index("kind").loc["negated", "token_share"] == pytest.approx(2 / 3)
    c = script_counts(out)
    assert set(c.script) == {"CJK", "CYRILLIC"} and c.tokens.sum() == 3
