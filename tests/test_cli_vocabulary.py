"""One vocabulary: a flag means one thing in every command.

For every command (subcommands of ``heads`` included), each flag of the shared table
(``emoscope.cli.common.SHARED``) has the table's help text and converter, and the same text
parses to the same value in every command that has it; the renamed spellings still parse to the
value of their new name and print one warning line, once; the README's "Flags" section lists
every shared flag."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from emoscope.cli.common import EDIT_POSITIONS, SHARED, Positions, reset_notes
from emoscope.cli.main import build_parser, main

# the arguments each command needs before it parses (a flag under test is appended after them)
REQUIRED = {
    "extract": ["--model", "m", "--dataset", "d", "--out", "o"],
    "probe": ["--model", "m", "--dataset", "d", "--out", "o"],
    "steer": ["--model", "m", "--emotion", "joy", "--out", "o"],
    "introspect": ["--model", "m", "--out", "o"],
    "patch": ["--model", "m", "--source", "emotions-basic:anger", "--out", "o"],
    "heads screen": ["--model", "m", "--emotion", "anger", "--out", "o"],
    "heads ablate": ["--model", "m", "--from", "r", "--out", "o"],
    "heads patch": ["--model", "m", "--from", "r", "--source", "emotions-basic:anger", "--out", "o"],
    "align": ["--models", "a", "b", "--dataset", "d", "--out", "o"],
    "elicit": ["--model", "m", "--out", "o"],
}
# a value per shared flag: parsed in every command that has the flag, it must give one value
SAMPLES = {
    "--layers": "0-2,5", "--position": "token:-2", "--strengths": "-1,0.5", "--unit": "raw", "--scorers": "nrc,vader",
    "--score": "valence", "--alpha": "0.01", "--n-permutations": "99", "--n-random": "3", "--random-kind": "covariance",
    "--random-match": "band", "--random-test": "rank", "--max-new-tokens": "7", "--temperature": "0.5",
    "--top-k": "5", "--top-p": "0.9", "--seeds": "0,1", "--batch-rows": "64", "--batch-size": "16",
    "--prompts": "p.txt", "--n-prompts": "all", "--source": "emotions-basic:fear",
    "--baseline": "all", "--seed": "9", "--dtype": "bfloat16", "--device-map": "auto", "--dataset": "x.csv",
    "--store-dtype": "float16",
}
RETIRED = {"--permutations", "--target", "--target-score", "--targets", "--n-targets", "--random-state", "--model-dtype"}


def _parser(command: str) -> argparse.ArgumentParser:
    p = build_parser()
    for word in command.split():
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[word]
    p._populate()
    return p


def _shared_actions(command: str) -> dict[str, argparse.Action]:
    return {s: a for a in _parser(command)._actions for s in a.option_strings
            if s in SHARED and a.help != argparse.SUPPRESS}


def _plain_help(text: str) -> str:
    return re.sub(r" \(default: .*\)$", "", text or "")


def test_every_command_that_runs_is_covered():
    def leaves(p, name=""):
        p._populate()
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield name.strip(), p
        for sub in subs:
            for word, child in sub.choices.items():
                yield from leaves(child, f"{name} {word}")

    runs = {name for name, p in leaves(build_parser())
            if any("--out" in a.option_strings and a.required for a in p._actions)}
    assert runs == set(REQUIRED)


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_shared_flags_have_the_table_help_and_converter(command):
    actions = _shared_actions(command)
    assert {"--out", "--seed", "--dtype"} <= set(actions), command
    for flag, a in actions.items():
        f = SHARED[flag]
        assert _plain_help(a.help) == f.help, (command, flag, a.help)
        if flag == "--positions":
            assert isinstance(a.type, Positions) and a.type.grammar is EDIT_POSITIONS
            assert set(a.type.accept) <= set(EDIT_POSITIONS), (command, a.type.accept)
        elif f.action is not None:
            assert a.nargs == 0, (command, flag)  # a switch
        else:
            assert a.type is f.type and a.metavar == f.metavar and a.nargs == f.nargs, (command, flag)
            assert tuple(a.choices or ()) == tuple(f.choices or ()), (command, flag)
    # a retired spelling is never a visible flag of any command
    visible = {s for a in _parser(command)._actions for s in a.option_strings if a.help != argparse.SUPPRESS}
    assert not visible & RETIRED, (command, visible & RETIRED)


def test_one_text_parses_to_one_value_in_every_command():
    """Parsed by each command that has it, a shared flag's text gives one value (the converters
    are shared, not copied)."""
    seen: dict[str, dict[str, object]] = {}
    for command, required in REQUIRED.items():
        actions = _shared_actions(command)
        for flag, text in SAMPLES.items():
            if flag not in actions or flag in required:
                continue
            args = build_parser().parse_args([*command.split(), *required, flag, text])
            seen.setdefault(flag, {})[command] = getattr(args, actions[flag].dest)
    for flag, values in seen.items():
        assert len({repr(v) for v in values.values()}) == 1, (flag, values)
    # every sampled flag is in at least two commands, or it would not need to be shared
    assert {f for f, v in seen.items() if len(v) >= 2} >= {"--layers", "--position", "--n-random", "--max-new-tokens",
                                                           "--score", "--prompts", "--seeds", "--strengths", "--seed"}
    assert seen["--layers"]["extract"] == "0-2,5" and seen["--strengths"]["steer"] == [-1.0, 0.5]
    assert seen["--position"]["steer"] == "token:-2" and seen["--n-prompts"]["patch"] is None


@pytest.mark.parametrize("command, old, new, value", [
    ("probe", "--permutations", "--n-permutations", "7"),
    ("steer", "--target", "--score", "nrc_joy"),
    ("steer", "--random-state", "--seed", "3"),
    ("heads ablate", "--target-score", "--score", "nrc_fear"),
    ("heads patch", "--target", "--prompts", "p.txt"),
    ("patch", "--target", "--prompts", "p.txt"),
    ("patch", "--targets", "--prompts", "p.txt"),
    ("patch", "--n-targets", "--n-prompts", "3"),
    ("patch", "--target-score", "--score", "valence"),
    ("introspect", "--model-dtype", "--dtype", "bfloat16"),
    ("elicit", "--model-dtype", "--dtype", "bfloat16"),
])
def test_old_spellings_parse_like_the_new_and_warn_once(capsys, command, old, new, value):
    reset_notes()
    required = REQUIRED[command]
    dest = _shared_actions(command)[new].dest
    want = getattr(build_parser().parse_args([*command.split(), *required, new, value]), dest)
    assert capsys.readouterr().err == ""
    got = build_parser().parse_args([*command.split(), *required, old, value, old, value])
    assert getattr(got, dest) == want
    err = capsys.readouterr().err.splitlines()
    assert err == [f"emoscope: warning: {old} is now {new} (the old spelling works until the next release)"]
    assert old not in _parser(command).format_help()


def test_old_spelling_warns_once_per_command_through_main(tmp_path, capsys, no_model):
    """Through ``main``: one warning line even when the old flag is given twice, and again on the next command."""
    for _ in range(2):
        rc = main(["-q", "probe", "--model", "m", "--dataset", "emotions-basic", "--permutations", "5",
                   "--permutations", "6", "--folds", "1", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.splitlines()
        assert rc == 2 and len([ln for ln in err if "--permutations is now --n-permutations" in ln]) == 1, err


def test_patch_positions_all_is_spelled_prompt(capsys):
    reset_notes()
    new = build_parser().parse_args(["patch", *REQUIRED["patch"], "--positions", "last,prompt"])
    assert capsys.readouterr().err == ""
    old = build_parser().parse_args(["patch", *REQUIRED["patch"], "--positions", "last,all,all"])
    assert getattr(old, "patch.positions") == getattr(new, "patch.positions") == "last,all"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--positions all is spelled prompt here" in err[0]


@pytest.mark.parametrize("command, text, needle", [
    ("steer", "window:4", "not a position this command writes; use all | prompt | generated | from:K"),
    ("steer", "all,prompt", "takes one position"),
    ("heads ablate", "last", "not a position this command writes"),
    ("patch", "generated", "not a position this command writes; use last | prompt | window:K"),
    ("patch", "window:0", "K must be an integer >= 1"),
    ("steer", "from:x", "K must be an integer >= 0"),
])
def test_each_command_accepts_its_words_of_the_one_position_grammar(capsys, command, text, needle):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command.split(), *REQUIRED[command], "--positions", text])
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_extract_dtype_is_the_compute_dtype_with_a_note(capsys):
    reset_notes()
    args = build_parser().parse_args(["extract", *REQUIRED["extract"], "--dtype", "bfloat16", "--store-dtype",
                                      "float16"])
    assert getattr(args, "spec.model_dtype") == "bfloat16" and getattr(args, "extract.dtype") == "float16"
    err = capsys.readouterr().err.splitlines()
    assert err == ["emoscope: warning: extract --dtype is now the compute dtype, as in every command; the storage "
                   "dtype is --store-dtype"]
    build_parser().parse_args(["steer", *REQUIRED["steer"], "--dtype", "bfloat16"])
    assert capsys.readouterr().err == ""  # elsewhere --dtype always meant the compute dtype: no note


def test_align_models_and_the_old_source_target():
    from emoscope.cli.cmd_align import models_of
    from emoscope.errors import InputError

    new = build_parser().parse_args(["align", "--models", "a", "b", "c", "--dataset", "d", "--out", "o"])
    old = build_parser().parse_args(["align", "--source", "a", "--target", "b", "c", "--dataset", "d", "--out", "o"])
    assert models_of(new) == models_of(old) == ["a", "b", "c"]
    with pytest.raises(InputError, match="at least two"):
        models_of(build_parser().parse_args(["align", "--models", "a", "--dataset", "d", "--out", "o"]))


def test_strengths_auto_parses_wherever_strengths_are():
    for command in ("steer", "introspect"):
        args = build_parser().parse_args([command, *REQUIRED[command], "--strengths", "auto"])
        assert getattr(args, f"{command}.strengths") == "auto"


def test_the_readme_flags_table_lists_every_shared_flag():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(--[a-z-]+)", section))
    assert set(SHARED) <= listed, set(SHARED) - listed
    assert RETIRED <= listed  # the renamed spellings are listed with their new names
