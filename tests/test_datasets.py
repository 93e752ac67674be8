"""Tests for emoscope.datasets and `emoscope datasets`: built-in data quality (cards, implicit
word lists, length matching), the loader's validation errors, and the CLI. No model."""

from __future__ import annotations

import doctest
import json
import statistics
import warnings
from pathlib import Path

import pytest

from emoscope.cli.main import main
from emoscope.datasets import (
    Dataset,
    DataWarning,
    WordEntry,
    list_datasets,
    load_control_questions,
    load_dataset,
    load_forbidden_words,
    load_texts,
    load_word_list,
)
from emoscope.datasets._catalog import builtin_names, data_file
from emoscope.datasets._dataset import VALID_SPLITS
from emoscope.datasets._words import find_words
from emoscope.datasets.cards import card_header, parse_card_header
from emoscope.errors import DataError, InputError

DATA = Path(__file__).parent / "data"
EMOTIONS_12 = [
    "joy",
    "sadness",
    "anger",
    "fear",
    "disgust",
    "surprise",
    "gratitude",
    "pride",
    "shame",
    "love",
    "calm",
    "desperation",
]


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---------------------------------------------------------------- built-in data


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_loads_without_duplicates_or_warnings(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(name)
    assert len(ds) > 0 and ds.name == name
    assert len(set(ds.texts)) == len(ds.texts), "duplicate texts"
    assert ds.card.startswith("---\n")


@pytest.mark.parametrize("name", builtin_names())
def test_card_numbers_match_the_file(name):
    ds = load_dataset(name)
    header = parse_card_header(ds.card)
    fresh = card_header(ds)
    hint = f"regenerate with: python -m emoscope.datasets._cards {name} --write"
    assert header["sha256"] == ds.sha256, hint
    assert header["n"] == len(ds) and header["classes"] == ds.classes, hint
    for cls, stats in fresh["length_stats"].items():
        card = header["length_stats"][cls]
        assert card["n"] == stats["n"]
        for unit in ("chars", "words"):
            for key in ("mean", "sd", "min", "max"):
                assert card[unit][key] == pytest.approx(stats[unit][key], abs=0.006), (
                    cls,
                    unit,
                    key,
                )


def test_card_stats_are_independently_right():
    # recompute one class by hand rather than through length_stats()
    ds = load_dataset("emotions-12")
    fear = [t for t, lab in zip(ds.texts, ds.labels, strict=True) if lab == "fear"]
    card = parse_card_header(ds.card)["length_stats"]["fear"]
    assert card["chars"]["mean"] == pytest.approx(statistics.mean(map(len, fear)), abs=0.006)
    assert card["words"]["sd"] == pytest.approx(
        statistics.stdev(len(t.split()) for t in fear), abs=0.006
    )


def test_every_data_file_is_in_the_catalogue():
    folder = (
        data_file("catalog.yaml").parent if hasattr(data_file("catalog.yaml"), "parent") else None
    )
    if folder is None:  # pragma: no cover - zipped install
        pytest.skip("data folder not on the filesystem")
    listed = {entry for name in builtin_names() for entry in (f"{name}.jsonl", f"{name}.card.md")}
    on_disk = {p.name for p in folder.iterdir() if p.suffix in (".jsonl", ".md")}
    assert on_disk == listed


def test_forbidden_word_list_covers_the_twelve_emotions():
    fw = load_forbidden_words()
    assert sorted(fw) == sorted(EMOTIONS_12)
    for emotion, words in fw.items():
        assert emotion in words or emotion in {"sadness", "surprise", "gratitude", "desperation"}
        assert len(words) == len(set(words))


def test_find_words_is_whole_word_and_case_insensitive():
    assert find_words("He MADE it; she was Mad.", ["mad"]) == ["Mad"]
    assert find_words("unhappy and happy-go-lucky", ["happy"]) == ["happy"]


def test_implicit_texts_contain_no_emotion_words():
    ds, fw = load_dataset("emotions-12"), load_forbidden_words()
    assert ds.classes == sorted(EMOTIONS_12 + ["neutral"])
    every_word = [w for words in fw.values() for w in words]
    bad = []
    for text, label in zip(ds.texts, ds.labels, strict=True):
        # its own words are forbidden; neutral must avoid all; no text may name another emotion
        hits = find_words(text, every_word)
        if hits:
            bad.append((label, hits, text))
    assert not bad, bad[:5]


def test_explicit_texts_name_their_own_emotion_only():
    ds, fw = load_dataset("emotions-12-explicit"), load_forbidden_words()
    assert ds.classes == sorted(EMOTIONS_12 + ["neutral"])
    for text, label in zip(ds.texts, ds.labels, strict=True):
        others = [w for e, words in fw.items() if e != label for w in words]
        assert not find_words(text, others), (label, text)
        if label != "neutral":
            assert find_words(text, fw[label]), (label, text)
    implicit = load_dataset("emotions-12").filter(labels="neutral").texts
    assert ds.filter(labels="neutral").texts == implicit


@pytest.mark.parametrize("name", ["emotions-12", "emotions-12-explicit"])
def test_emotion_sets_are_balanced_and_length_matched(name):
    ds = load_dataset(name)
    assert set(ds.counts().values()) == {40}
    means = {c: s["chars"]["mean"] for c, s in ds.length_stats().items()}
    assert max(means.values()) / min(means.values()) <= 1.10, means
    words = {c: s["words"]["mean"] for c, s in ds.length_stats().items()}
    assert max(words.values()) / min(words.values()) <= 1.15, words
    test_share = ds.splits.count("test") / len(ds)
    assert test_share == pytest.approx(0.2)


def test_emotions_basic_is_scenario_matched():
    ds = load_dataset("emotions-basic")
    assert ds.counts() == {"anger": 100, "apology": 100, "gratitude": 100, "neutral": 100}
    assert len(set(ds.groups)) == 50
    for g in set(ds.groups):
        labels = [lab for lab, gg in zip(ds.labels, ds.groups, strict=True) if gg == g]
        assert sorted(labels) == sorted(ds.classes * 2), g
    # group-aware split: no scenario is in both train and test
    by_group = {
        g: {s for s, gg in zip(ds.splits, ds.groups, strict=True) if gg == g}
        for g in set(ds.groups)
    }
    assert all(len(s) == 1 for s in by_group.values())
    means = [s["chars"]["mean"] for s in ds.length_stats().values()]
    assert max(means) / min(means) <= 1.20


def test_neutral_sets_are_neutral_and_large_enough():
    fw = load_forbidden_words()
    every_word = [w for words in fw.values() for w in words]
    corpus, starts = load_dataset("neutral-corpus"), load_dataset("neutral-starts")
    assert len(corpus) >= 300 and len(set(corpus.groups)) >= 10
    assert len(starts) >= 48 and len(set(starts.texts)) == len(starts)  # enough prompts for paired steering tests
    for text in corpus.texts + starts.texts:
        assert not find_words(text, every_word), text


def test_length_confound_differs_in_length_only():
    ds = load_dataset("length-confound")
    assert ds.counts() == {"a": 50, "b": 50}
    pairs = {}
    for text, label, group in zip(ds.texts, ds.labels, ds.groups, strict=True):
        pairs.setdefault(group, {})[label] = text
    assert all(len(p["b"]) > 2 * len(p["a"]) for p in pairs.values())
    stats = ds.length_stats()
    assert (
        stats["a"]["chars"]["max"] < stats["b"]["chars"]["min"]
    )  # a length threshold separates them
    every_word = [w for words in load_forbidden_words().values() for w in words]
    assert not any(find_words(t, every_word) for t in ds.texts)


def test_concepts_baseline_words_and_control_questions():
    concepts, baseline = load_word_list("concepts"), load_word_list("baseline-words")
    assert 25 <= len(concepts) <= 35 and 45 <= len(baseline) <= 55
    assert {w.kind for w in concepts} == {"concrete", "abstract"}
    assert all(w.synonyms for w in concepts)
    assert not {w.word for w in concepts} & {w.word for w in baseline}
    qs = load_control_questions()
    assert len(qs) >= 12 and {q.answer for q in qs} == {"no"}
    kinds = [q.kind for q in qs]
    assert kinds.count("factual") == kinds.count("self")
    assert all(q.text.endswith("?") for q in qs)


def test_word_entry_grading():
    ocean = next(w for w in load_word_list("concepts") if w.word == "ocean")
    assert ocean.found_in("I sense something about the SEA, maybe oceans.")
    assert not ocean.found_in("A seashell on the table.")
    assert str(ocean) == "ocean"


def test_list_datasets():
    infos = list_datasets()
    assert [d["name"] for d in infos] == builtin_names()
    for d in infos:
        assert {"name", "n", "classes", "description"} <= set(d) and d["description"]


# ---------------------------------------------------------------- Dataset


def test_dataset_api():
    ds = Dataset(
        "t",
        ["a b", "c", "d e f"],
        ["x", "y", "x"],
        groups=["1", "1", "2"],
        splits=["train", "test", "train"],
    )
    assert len(ds) == 3 and ds.classes == ["x", "y"]
    assert ds.subset([True, False, True]).texts == ["a b", "d e f"]
    assert ds.subset([2]).groups == ["2"]
    assert ds.filter(labels=["x"], split="train").texts == ["a b", "d e f"]
    assert len(ds.filter(labels="y", split="train")) == 0
    stats = ds.length_stats()["x"]
    assert stats["words"] == {
        "mean": 2.5,
        "sd": pytest.approx(0.7071, abs=1e-4),
        "min": 2,
        "max": 3,
    }
    assert stats["chars"]["max"] == 5
    assert {ds: 1}[ds] == 1  # hashable by content


def test_dataset_subset_accepts_numpy():
    np = pytest.importorskip("numpy")
    ds = Dataset("t", ["a", "b", "c"], ["x", "y", "x"])
    assert ds.subset(np.array([True, False, True])).texts == ["a", "c"]
    assert ds.subset(np.array([1, 2])).texts == ["b", "c"]


def test_dataset_hash_is_stable_and_content_sensitive():
    a = Dataset("a", ["t1", "t2"], ["x", "y"])
    assert a.sha256 == Dataset("renamed", ["t1", "t2"], ["x", "y"], card="c").sha256
    assert a.sha256 != Dataset("a", ["t1", "t2"], ["x", "x"]).sha256
    assert a.sha256 != Dataset("a", ["t1", "t2"], ["x", "y"], splits=["train", "test"]).sha256
    assert load_dataset("emotions-12").sha256 == load_dataset("emotions-12").sha256


def test_dataset_misuse_raises_input_error():
    ds = Dataset("t", ["a", "b"], ["x", "y"])
    with pytest.raises(InputError, match="1 labels for 2 texts"):
        Dataset("t", ["a", "b"], ["x"])
    with pytest.raises(InputError, match="known classes: x, y"):
        ds.filter(labels=["z"])
    with pytest.raises(InputError, match="has no splits"):
        ds.filter(split="train")
    with pytest.raises(InputError, match="3 entries for a dataset of 2"):
        ds.subset([True, False, True])
    with pytest.raises(InputError, match="out of range"):
        ds.subset([5])


# ---------------------------------------------------------------- load_dataset validation


def test_user_files_load(tmp_path):
    ds = load_dataset(DATA / "ds_example.jsonl")
    assert ds.name == "ds_example" and ds.classes == ["gratitude", "neutral"]
    assert ds.groups[:2] == ["g1", "g1"] and ds.splits.count("test") == 3
    assert "six-line example" in ds.card  # sibling .card.md is picked up
    csv_ds = load_dataset(str(DATA / "ds_example.csv"), min_per_class=2)
    assert csv_ds.texts[0] == "Thank you, really, for the lift." and csv_ds.groups is None


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_dataset(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_file(tmp_path, content):
    with pytest.raises(DataError, match="file is empty"):
        load_dataset(write(tmp_path, "e.jsonl", content))
    with pytest.raises(DataError, match="file is empty"):
        load_dataset(write(tmp_path, "e.csv", content))


def test_csv_with_header_only(tmp_path):
    with pytest.raises(DataError, match="header but no rows"):
        load_dataset(write(tmp_path, "h.csv", "text,label\n"))


def test_malformed_jsonl_line_reports_line_number(tmp_path):
    p = write(
        tmp_path,
        "bad.jsonl",
        '{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n{"text": "c", "label": "y"}\n',
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON") as e:
        load_dataset(p)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r":1: expected a JSON object, got list"):
        load_dataset(write(tmp_path, "list.jsonl", '["a", "x"]\n'))


def test_missing_columns_are_named(tmp_path):
    p = write(tmp_path, "m.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2: missing column\(s\) 'label'"):
        load_dataset(p)
    p = write(tmp_path, "m.csv", "sentence,class\nhello,x\n")
    with pytest.raises(
        DataError, match=r"m\.csv:1: missing column\(s\) 'text', 'label' in the header"
    ):
        load_dataset(p)


def test_empty_text_reports_line_number(tmp_path):
    p = write(tmp_path, "t.jsonl", '{"text": "a", "label": "x"}\n{"text": "   ", "label": "x"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:2: empty text"):
        load_dataset(p)
    p = write(tmp_path, "t.csv", 'text,label\nhello,x\n"",y\n')
    with pytest.raises(DataError, match=r"t\.csv:3: empty text"):
        load_dataset(p)
    with pytest.raises(DataError, match=r"n\.jsonl:1: column 'text' must be a string, got int"):
        load_dataset(write(tmp_path, "n.jsonl", '{"text": 5, "label": "x"}\n'))


def test_min_per_class_names_class_and_count(tmp_path):
    rows = [{"text": f"t{i}", "label": "big"} for i in range(5)] + [{"text": "s", "label": "small"}]
    p = write(tmp_path, "c.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_dataset(p, min_per_class=1)) == 6
    with pytest.raises(
        DataError, match=r"class 'small' has 1 example\(s\), fewer than min_per_class=3"
    ):
        load_dataset(p, min_per_class=3)
    with pytest.raises(DataError, match=r"class 'fear' has 40 example\(s\)"):
        load_dataset("emotions-12", min_per_class=41)
    with pytest.raises(InputError, match="positive integer"):
        load_dataset(p, min_per_class=0)


def test_unknown_split_is_an_error(tmp_path):
    p = write(
        tmp_path,
        "s.jsonl",
        '{"text": "a", "label": "x", "split": "train"}\n{"text": "b", "label": "x", "split": "dev"}\n',
    )
    with pytest.raises(
        DataError, match=r"s\.jsonl:2: unknown split 'dev'; use one of train, test, val"
    ):
        load_dataset(p)
    assert VALID_SPLITS == ("train", "test", "val")


def test_partial_split_column_is_an_error(tmp_path):
    p = write(tmp_path, "p.csv", "text,label,split\na,x,train\nb,x,\n")
    with pytest.raises(DataError, match=r"p\.csv:3: no 'split' value, but line 2 has one"):
        load_dataset(p)


def test_duplicates_across_splits_warn_with_count(tmp_path):
    rows = [
        ("same one", "train"),
        ("same one", "test"),
        ("same two", "train"),
        ("same two", "val"),
        ("unique", "test"),
    ]
    p = write(
        tmp_path,
        "d.jsonl",
        "".join(json.dumps({"text": t, "label": "x", "split": s}) + "\n" for t, s in rows),
    )
    with pytest.warns(DataWarning, match=r"d\.jsonl: 2 text\(s\) appear in more than one split"):
        ds = load_dataset(p)
    assert len(ds) == 5  # a warning, not an error


def test_unknown_builtin_lists_known_names():
    with pytest.raises(
        DataError, match="unknown dataset 'emotions-13'; built-ins are emotions-basic, "
    ):
        load_dataset("emotions-13")


def test_unsupported_extension(tmp_path):
    with pytest.raises(
        DataError, match=r"unsupported file type '\.json'; use one of \.jsonl, \.csv"
    ):
        load_dataset(write(tmp_path, "x.json", "[]"))


# ---------------------------------------------------------------- load_texts / word lists


def test_load_texts_formats(tmp_path):
    assert load_texts(write(tmp_path, "a.txt", "one\ntwo words\n\n")) == ["one", "two words"]
    assert load_texts(write(tmp_path, "a.jsonl", '{"text": "x"}\n{"text": "y", "id": 2}\n')) == [
        "x",
        "y",
    ]
    assert load_texts("neutral-starts")[0] == "Tell me about your morning."
    assert len(load_texts(DATA / "ds_example.csv")) == 4


def test_load_texts_errors(tmp_path):
    with pytest.raises(DataError, match="file is empty"):
        load_texts(write(tmp_path, "e.txt", "\n\n"))
    with pytest.raises(DataError, match=r"b\.txt:2: empty text"):
        load_texts(write(tmp_path, "b.txt", "one\n   \nthree\n"))
    with pytest.raises(DataError, match=r"m\.jsonl:2: not valid JSON"):
        load_texts(write(tmp_path, "m.jsonl", '{"text": "x"}\n{text: y}\n'))
    with pytest.raises(DataError, match=r"t\.jsonl:1: empty text"):
        load_texts(write(tmp_path, "t.jsonl", '{"text": ""}\n'))
    with pytest.raises(DataError, match=r"c\.jsonl:1: missing column\(s\) 'text'"):
        load_texts(write(tmp_path, "c.jsonl", '{"prompt": "x"}\n'))
    with pytest.raises(DataError, match="file not found"):
        load_texts(tmp_path / "none.txt")


def test_user_word_lists(tmp_path):
    words = load_word_list(write(tmp_path, "w.txt", "river\n\nstone \n"))
    assert [w.word for w in words] == ["river", "stone"] and words[0].kind is None
    words = load_word_list(
        write(tmp_path, "w.jsonl", '{"word": "owl", "kind": "concrete", "synonyms": ["owls"]}\n')
    )
    assert words == [WordEntry("owl", "concrete", ("owls",))]
    with pytest.raises(DataError, match=r"d\.txt:3: word 'Owl' already on line 1"):
        load_word_list(write(tmp_path, "d.txt", "owl\nfox\nOwl\n"))


def test_user_control_questions(tmp_path):
    p = write(tmp_path, "q.jsonl", '{"text": "Is ice hot?", "kind": "factual"}\n')
    assert load_control_questions(p)[0].answer == "no"
    bad = write(
        tmp_path, "b.jsonl", '{"text": "Is ice hot?", "kind": "factual", "answer": "maybe"}\n'
    )
    with pytest.raises(DataError, match=r"b\.jsonl:1: answer must be 'yes' or 'no'"):
        load_control_questions(bad)


def test_docstring_examples_run():
    import emoscope.datasets._catalog as catalog
    import emoscope.datasets._dataset as dataset
    import emoscope.datasets._readers as readers
    import emoscope.datasets._words as words
    import emoscope.datasets.cards as cards

    for module in (dataset, readers, catalog, words, cards):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


# ---------------------------------------------------------------- CLI


def test_cli_lists_builtins(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in builtin_names():
        assert name in out
    assert "mean chars" in out
    assert main(["datasets", "list", "--json"]) == 0
    assert {d["name"] for d in json.loads(capsys.readouterr().out)} == set(builtin_names())


def test_cli_show_prints_card(capsys):
    assert main(["datasets", "show", "emotions-12"]) == 0
    out = capsys.readouterr().out
    assert "# emotions-12 (implicit)" in out and "length_stats" in out


def test_cli_show_user_file(capsys):
    assert main(["datasets", "show", str(DATA / "ds_example.csv")]) == 0
    out = capsys.readouterr().out
    assert "4 texts, 2 classes" in out and "gratitude" in out
    assert "six-line example" in out  # the sibling card follows the computed summary


def test_cli_unknown_name_is_one_line_exit_2(capsys):
    assert main(["datasets", "show", "no-such-set"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "unknown dataset 'no-such-set'" in lines[0]
    assert "emotions-basic" in lines[0] and captured.out == ""


def test_cli_bad_file_is_one_line_exit_2(capsys, tmp_path):
    p = write(tmp_path, "bad.jsonl", '{"text": "a", "label": "x"}\nnot json\n')
    assert main(["datasets", "show", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl:2: not valid JSON" in err[0]


def test_csv_short_row_and_empty_label(tmp_path):
    with pytest.raises(DataError, match=r"s\.csv:3: missing column\(s\) 'label'"):
        load_dataset(write(tmp_path, "s.csv", "text,label\na,x\nb\n"))
    with pytest.raises(DataError, match=r"l\.csv:2: empty label"):
        load_dataset(write(tmp_path, "l.csv", "text,label\na, \n"))
    ds = load_dataset(write(tmp_path, "i.jsonl", '{"text": "a", "label": 1, "group": 7}\n'))
    assert ds.labels == ["1"] and ds.groups == ["7"]


def test_builtin_name_wins_over_same_named_directory(tmp_path, monkeypatch):
    (tmp_path / "emotions-12").mkdir()
    monkeypatch.chdir(tmp_path)
    assert len(load_dataset("emotions-12")) == 520
    with pytest.raises(DataError, match="unsupported file type"):
        load_dataset(str(tmp_path / "emotions-12"))
