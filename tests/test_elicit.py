"""``emoscope elicit``: states captured while the model writes equal a teacher-forced re-read, the
forbidden-word filter, one batched seeded decode, the dataset it writes, and bad input refused in
one line with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

import emoscope.models
from emoscope.cli.main import main
from emoscope.datasets import load_dataset
from emoscope.datasets.cards import parse_card_header
from emoscope.elicit import elicit, forbidden_for, rejects, save_elicited
from emoscope.elicit.capture import read_states
from emoscope.elicit.prompts import check_emotions
from emoscope.errors import InputError, ModelError

from .conftest import tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def gen(tiny):
    return elicit(tiny, "joy,fear", 4, seed=3, temperature=1.0, max_new_tokens=10, layers=[0, 2],
                  require_all=False, progress=False)


# -- capture == teacher-forced re-read ----------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_states_captured_while_writing_equal_a_teacher_forced_reread(family):
    model = tiny_model(family)
    el = elicit(model, "joy,fear", 3, seed=1, temperature=1.0, max_new_tokens=9, layers=[0, 1, 2],
                require_all=False, progress=False)
    rows = [r for r, (a, b) in enumerate(el.spans) if b > a]
    assert len(rows) >= 6  # the tiny model writes something on most rows
    # the re-read sees the same context: the prompt, then every generated token up to the text's end
    seqs = [el.prompt_ids[r] + el.generated[r][: el.spans[r][1]] for r in rows]
    spans = [(len(el.prompt_ids[r]) + el.spans[r][0], len(el.prompt_ids[r]) + el.spans[r][1]) for r in rows]
    again = read_states(model, seqs, spans, [0, 1, 2])
    for pool in ("mean", "last"):
        for layer in (0, 1, 2):
            got, want = el.states[pool][layer][rows], again[pool][layer]
            rel = np.abs(got - want).max() / np.abs(want).max()
            assert rel < 1e-5, (family, pool, layer, rel)


def test_reread_pools_equal_raw_hidden_states(tiny):
    """read_states against transformers' own hidden_states (resid[l] = hidden_states[l + 1])."""
    import torch

    ids = [5, 17, 42, 99, 7, 3]
    got = read_states(tiny, [ids, ids[:4]], [(2, 6), (1, 4)], [1])
    with torch.inference_mode():
        hs = tiny.hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0].double().numpy()
    np.testing.assert_allclose(got["mean"][1][0], hs[2:6].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["last"][1][0], hs[5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["last"][1][1], hs[3], rtol=1e-5, atol=1e-6)  # padding changes nothing


def test_one_batch_seeded_and_reproducible(tiny, gen):
    assert gen.settings["row_seed"] == "seed * 1000003 + row"
    again = elicit(tiny, "joy,fear", 4, seed=3, temperature=1.0, max_new_tokens=10, require_all=False, progress=False)
    assert again.generated == gen.generated and again.texts == gen.texts
    other = elicit(tiny, "joy,fear", 4, seed=4, temperature=1.0, max_new_tokens=10, require_all=False, progress=False)
    assert other.generated != gen.generated
    assert gen.labels == ["joy"] * 4 + ["fear"] * 4 + ["neutral"] * 4
    # one row per (class, sample): rows of one class differ (their own random streams)
    assert len({tuple(g) for g in gen.generated[:4]}) > 1


# -- the forbidden-word filter -------------------------------------------------------------------------
@pytest.mark.parametrize("text, emotion, hit", [
    ("I felt such joy when the letter came.", "joy", "joy"),
    ("The kids were JOYFUL all day.", "joy", "JOYFUL"),
    ("Joys like that are rare.", "joy", "Joys"),
    ("She angrily slammed the door.", "anger", "angrily"),
    ("That angers me every single time.", "anger", "angers"),
    ("He was proud of his daughter.", "pride", "proud"),
    ("Her prides were many.", "pride", "prides"),
    ("I was scared of the dark.", "fear", "scared"),
    ("A fearless climber went first.", "fear", "fearless"),
    ("They awed the crowd.", "awe", "awed"),  # an emotion with no list: its name and inflections
    ("I enjoyed the errand.", "neutral", "enjoyed"),  # neutral texts name no feeling of any list
])
def test_forbidden_filter_rejects_the_word_and_its_inflections(text, emotion, hit):
    assert rejects(text, emotion) == hit


@pytest.mark.parametrize("text, emotion", [
    ("She could not stop grinning at the letter.", "joy"),
    ("He made the bed and left.", "anger"),          # 'made' is not 'mad'
    ("The scarecrow stood in the field.", "fear"),   # whole words only
    ("Pridelands is a place name.", "pride"),
])
def test_forbidden_filter_keeps_texts_that_do_not_name_it(text, emotion):
    assert rejects(text, emotion) is None


def test_forbidden_list_includes_the_shared_list():
    from emoscope.datasets import load_forbidden_words

    for emotion, words in load_forbidden_words().items():
        assert set(words) <= set(forbidden_for(emotion))


# -- the dataset it writes -------------------------------------------------------------------------------
def test_saved_dataset_loads_with_its_card(gen, tmp_path):
    path = save_elicited(gen, tmp_path / "gen")
    ds = load_dataset(path)
    kept = gen.kept.tolist()
    assert ds.texts == [gen.texts[r] for r in kept] and ds.labels == [gen.labels[r] for r in kept]
    header = parse_card_header(ds.card)
    assert header["sha256"] == ds.sha256 and header["n"] == len(kept)
    assert header["elicitation"]["seed"] == 3 and header["elicitation"]["temperature"] == 1.0
    assert header["rejections"]["joy"]["generated"] == 4
    assert set(header["token_lengths"]) == set(ds.classes)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    tok = tiny_model("llama").tokenizer
    assert all(tok.decode(r["tokens"], skip_special_tokens=True).strip() == r["text"] for r in rows)


def test_rejected_texts_are_counted_not_kept(tiny, monkeypatch):
    import emoscope.elicit.generate as g

    monkeypatch.setattr(g, "rejects", lambda text, emotion: "x" if emotion == "fear" else None)
    el = elicit(tiny, "joy,fear", 3, seed=0, temperature=1.0, max_new_tokens=6, require_all=False, progress=False)
    counts = el.rejection_counts()
    assert counts["fear"]["kept"] == 0 and counts["fear"]["forbidden"] + counts["fear"]["empty"] == 3
    with pytest.raises(InputError, match="all 3 texts of 'fear' were rejected"):
        elicit(tiny, "joy,fear", 3, seed=0, temperature=1.0, max_new_tokens=6, progress=False)


def test_oversample_keeps_at_most_n_per_class(tiny):
    el = elicit(tiny, "joy", 2, seed=0, temperature=1.0, max_new_tokens=6, oversample=3, require_all=False,
                progress=False)
    c = el.rejection_counts()["joy"]
    assert c["generated"] == 6 and c["kept"] <= 2 and sum(v for k, v in c.items() if k != "generated") == 6


# -- bad input: one line, exit 2, nothing written, no model loaded before the checks ---------------------
def test_check_emotions_refuses_duplicates_and_empty_names():
    with pytest.raises(InputError, match="listed twice"):
        check_emotions("joy,fear,joy")
    with pytest.raises(InputError, match="is empty"):
        check_emotions("joy, ,fear")
    with pytest.raises(InputError, match="no emotions"):
        check_emotions("")


@pytest.mark.parametrize("argv, needle", [
    (["--emotions", "joy,fear,joy"], "'joy' is listed twice"),
    (["--emotions", "joy,,fear"], "emotion 2 of 'joy,,fear' is empty"),
    (["--emotions", "joy", "--n", "0"], "--n must be a positive number"),
    (["--emotions", "joy,neutral"], "'neutral' is always elicited"),
    (["--emotions", "joy", "--max-new-tokens", "1"], "max_new_tokens must be at least 2"),
    (["--emotions", "joy", "--oversample", "0.5"], "--oversample must be between 1 and 20"),
    (["--emotions", "joy", "--temperature", "nan"], "must be a finite number"),
    (["--emotions", "joy", "--temperature", "0"], "is greedy"),
])
def test_cli_bad_input_is_one_line_before_any_model(no_model, tmp_path, capsys, argv, needle):
    out = tmp_path / "gen"
    rc = main(["-q", "elicit", "--model", "m", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.fixture
def tiny_cli(monkeypatch, tmp_path):
    model = tiny_model("llama")
    monkeypatch.setattr(emoscope.models, "load_model", lambda name, **kw: model)
    return model


def test_cli_chat_style_without_a_chat_template_writes_nothing(tiny_cli, tmp_path, capsys):
    out = tmp_path / "gen"
    rc = main(["-q", "elicit", "--model", "tiny", "--emotions", "joy", "--n", "2", "--style", "chat", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "has no chat template" in err and len(err.strip().splitlines()) == 1
    assert "the input must change" in err  # not "continue with --resume": the style itself must change
    assert not (out / "elicit").exists()  # the run records the failed stage; no dataset is written


def test_cli_chat_style_on_a_model_known_to_have_no_template_writes_nothing(no_model, tmp_path, capsys):
    """gemma3-270m's catalogue entry says it has no chat template: refused before the run starts."""
    out = tmp_path / "gen"
    rc = main(["-q", "elicit", "--model", "gemma3-270m", "--emotions", "joy", "--style", "chat", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "has no chat template" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_cli_all_rejected_writes_no_partial_dataset(tiny_cli, tmp_path, capsys, monkeypatch):
    import emoscope.elicit.generate as g

    monkeypatch.setattr(g, "rejects", lambda text, emotion: "x" if emotion == "fear" else None)
    out = tmp_path / "gen"
    rc = main(["-q", "elicit", "--model", "tiny", "--emotions", "joy,fear", "--n", "2", "--max-new-tokens", "5",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "texts of 'fear' were rejected" in err and "nothing was written" in err
    assert not (out / "elicit").exists()  # no dataset, not even part of one


def test_cli_writes_the_dataset_and_prints_counts(tiny_cli, tmp_path, capsys):
    out = tmp_path / "gen"
    rc = main(["-q", "elicit", "--model", "tiny", "--emotions", "joy,fear", "--n", "3", "--max-new-tokens", "6",
               "--temperature", "1.0", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "completion prompt" in stdout and "generated" in stdout
    ds = load_dataset(out / "elicit" / "elicited.jsonl")
    assert set(ds.classes) <= {"joy", "fear", "neutral"} and ds.card.startswith("---\n")


def test_chat_style_on_a_model_with_a_template_is_refused_in_api_too(tiny):
    with pytest.raises(ModelError, match="no chat template"):
        elicit(tiny, "joy", 2, chat=True, progress=False)
    with pytest.raises(InputError, match="greedy"):
        elicit(tiny, "joy", 2, temperature=0.0, progress=False)


@pytest.mark.real
def test_real_model_chat_elicitation_capture_matches_the_reread(smollm):
    el = elicit(smollm, "joy,fear", 2, seed=0, max_new_tokens=8, layers=[10], require_all=False, progress=False)
    assert el.settings["style"] == "chat" and "<|im_start|>assistant" in smollm.tokenizer.decode(el.prompt_ids[0])
    rows = [r for r, (a, b) in enumerate(el.spans) if b > a]
    seqs = [el.prompt_ids[r] + el.generated[r][: el.spans[r][1]] for r in rows]
    spans = [(len(el.prompt_ids[r]) + el.spans[r][0], len(el.prompt_ids[r]) + el.spans[r][1]) for r in rows]
    again = read_states(smollm, seqs, spans, [10])
    for pool in ("mean", "last"):
        got, want = el.states[pool][10][rows], again[pool][10]
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
