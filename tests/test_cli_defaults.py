"""The stage's options model is the one source of defaults: every flag of a one-stage command,
left unset, equals the stage option it fills, and the spec the command builds equals the
stage's defaults. Changing a default on one side only (a literal in the CLI) fails here."""

from __future__ import annotations

import argparse

import pytest

from emoscope.activations.stage import ExtractOptions
from emoscope.cli.common import field_default
from emoscope.cli.main import build_parser
from emoscope.cli.running import make_spec, section
from emoscope.elicit.stage import ElicitOptions
from emoscope.heads.stage import HeadsOptions
from emoscope.introspection.stage import IntrospectOptions
from emoscope.patching.stage import PatchOptions
from emoscope.probing.stage import ProbeOptions
from emoscope.runs.spec import Spec
from emoscope.steering.stage import DEFAULT_DATASET, SteerOptions
from emoscope.vectors.stage import VectorOptions

OPTIONS = {"extract": ExtractOptions, "vectors": VectorOptions, "probe": ProbeOptions, "steer": SteerOptions,
           "introspect": IntrospectOptions, "patch": PatchOptions, "heads": HeadsOptions, "elicit": ElicitOptions}
_HEADS_SCREEN = {"vector", "emotion", "baseline", "fit_position", "vector_layers", "layers", "direction_layer", "position",
                 "n_permutations", "alternative", "screen_batch_size"}
_HEADS_RUN = {"heads", "from_run", "n_random", "random_match", "prompts", "n_prompts", "chat", "max_new_tokens", "seeds",
              "temperature", "top_k", "top_p", "scorers", "target", "probe_layer", "metrics", "batch_rows", "alpha",
              "random_test"}

COMMANDS = {
    # command: (required args, stages, fields that must have a flag, options set by the required args)
    "extract": (["--model", "m", "--dataset", "d", "--out", "o"], ["extract"],
                {"extract": {"layers", "position", "batch_size", "texts", "dtype", "padding_side", "cache"}},
                {"extract": {"save": True}}),
    "probe": (["--model", "m", "--dataset", "d", "--out", "o"], ["extract", "vectors", "probe"],
              {"extract": {"layers", "position", "batch_size"}, "vectors": {"method", "baseline"},
               "probe": {"n_folds", "seeds", "n_permutations", "heldout", "transfer"}}, {}),
    "steer": (["--model", "m", "--emotion", "joy", "--out", "o"], ["steer"],
              {"steer": {"vector", "emotion", "baseline", "position", "layers", "strengths", "unit", "positions",
                         "mode", "prompts", "n_prompts", "chat", "max_new_tokens", "n_random", "seeds",
                         "temperature", "top_k", "top_p", "scorers", "target", "batch_rows", "alpha", "random_kind",
                         "random_test"}},
              {"steer": {"emotion": "joy"}}),
    "introspect": (["--model", "m", "--out", "o"], ["introspect"],
                   {"introspect": {"concepts", "baseline_words", "controls", "layers", "strengths", "window",
                                   "n_random", "free_text", "max_new_tokens", "temperature", "prefill",
                                   "focus_layer", "focus_strength", "heads", "n_boot", "batch_size", "unit", "claim",
                                   "random_kind", "n_splits", "ablate"}},
                   {}),
    "patch": (["--model", "m", "--source", "emotions-basic:anger", "--out", "o"], ["patch"],
              {"patch": {"source", "pairing", "n_sources", "neutral", "targets", "n_targets", "layers", "positions",
                         "generated", "chat", "max_new_tokens", "n_random", "self_rows", "scorers", "target_score",
                         "batch_rows", "alpha", "random_kind", "random_test"}},
              {"patch": {"source": "emotions-basic:anger"}}),
    "elicit": (["--model", "m", "--out", "o"], ["elicit"],
               {"elicit": {"emotions", "n", "oversample", "max_new_tokens", "temperature", "top_p", "top_k", "style",
                           "name"}}, {}),
    # subcommands of `emoscope heads`: "heads MODE" (one stage, its `modes` set by the subcommand)
    "heads screen": (["--model", "m", "--emotion", "anger", "--out", "o"], ["heads"], {"heads": _HEADS_SCREEN},
                     {"heads": {"emotion": "anger", "modes": ["screen"]}}),
    "heads ablate": (["--model", "m", "--from", "r", "--out", "o"], ["heads"],
                     {"heads": _HEADS_SCREEN | _HEADS_RUN | {"methods", "positions", "mean_texts"}},
                     {"heads": {"from_run": "r", "modes": ["ablate"]}}),
    "heads patch": (["--model", "m", "--from", "r", "--source", "emotions-basic:anger", "--out", "o"], ["heads"],
                    {"heads": _HEADS_SCREEN | _HEADS_RUN | {"source", "patch_tokens"}},
                    {"heads": {"from_run": "r", "source": "emotions-basic:anger", "modes": ["patch"]}}),
}


def _subparser(command: str) -> argparse.ArgumentParser:
    p = build_parser()
    for word in command.split():  # "heads ablate": a subcommand of a subcommand
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[word]
    p.format_help()  # adds the (lazily added) arguments
    return p


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unset_flags_equal_the_stage_defaults(command):
    required, stages, must_have, set_by_required = COMMANDS[command]
    args = build_parser().parse_args([*command.split(), *required])
    flagged: dict[str, set[str]] = {}
    for dest, value in vars(args).items():
        stage, _, field = dest.partition(".")
        if stage in OPTIONS:
            flagged.setdefault(stage, set()).add(field)
            expected = set_by_required.get(stage, {}).get(field, field_default(OPTIONS[stage], field))
            assert value == expected, f"{command} --{field.replace('_', '-')}: CLI {value!r} != stage {expected!r}"
    for stage, fields in must_have.items():
        assert fields <= flagged.get(stage, set()), f"{command}: no flag for {fields - flagged.get(stage, set())}"
    assert getattr(args, "spec.seed") == field_default(Spec, "seed")

    # the spec the command builds holds exactly the stage defaults (plus what the required args set)
    sections = {s: section(args, s) for s in stages}
    for stage, extra in set_by_required.items():
        sections[stage].update(extra)
    spec = make_spec(args, command.replace(" ", "-"), stages, sections, model="m")
    for stage in stages:
        want = OPTIONS[stage](**set_by_required.get(stage, {})).model_dump()
        assert spec.options(stage).model_dump() == want, stage


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_every_stage_default(command):
    p = _subparser(command)
    stage_actions = [a for a in p._actions if a.dest.partition(".")[0] in OPTIONS]
    assert stage_actions
    for a in stage_actions:
        assert "default:" in (a.help or ""), f"{command} {a.option_strings}: help does not show the default"
    text = p.format_help()
    assert "default:" in text


def test_steer_defaults_match_the_stage_not_the_old_cli():
    """The old `emoscope steer` had its own defaults (strengths -8..8, 3 random vectors, 48 tokens)."""
    from emoscope.cli.common import field_default

    args = build_parser().parse_args(["steer", "--model", "m", "--emotion", "joy", "--out", "o"])
    strengths = field_default(SteerOptions, "strengths")
    assert getattr(args, "steer.strengths") == SteerOptions().strengths == strengths != list(range(-8, 9))
    assert getattr(args, "steer.n_random") == SteerOptions().n_random != 3
    assert getattr(args, "steer.max_new_tokens") == SteerOptions().max_new_tokens != 48
    assert args.dataset == DEFAULT_DATASET
    helps = {a.dest: a.help for a in _subparser("steer")._actions}
    shown = strengths if isinstance(strengths, str) else ",".join(f"{s:g}" for s in strengths)
    assert helps["steer.strengths"].endswith(f"(default: {shown})")
    assert helps["steer.n_random"].endswith(f"(default: {SteerOptions().n_random})")
    assert helps["steer.chat"].endswith("(default: chat on)")


def test_flags_reach_the_spec():
    args = build_parser().parse_args(["steer", "--model", "m", "--emotion", "praise", "--out", "o",
                                      "--strengths", "-4,-2,0,2,4", "--n-random", "3", "--no-chat", "--top-k", "5",
                                      "--seeds", "0,1", "--baseline", "all", "--n-prompts", "all", "--seed", "7"])
    spec = make_spec(args, "steer", ["steer"], {"steer": section(args, "steer")}, model="m", dataset="x.csv")
    o = spec.options("steer")
    assert (o.strengths, o.n_random, o.chat, o.top_k, o.seeds, o.baseline, o.n_prompts, o.emotion) == (
        [-4.0, -2.0, 0.0, 2.0, 4.0], 3, False, 5, [0, 1], "all", None, "praise")
    assert spec.seed == 7 and spec.dataset == "x.csv"


@pytest.mark.parametrize("argv, modes", [
    (["heads", "screen", "--model", "m", "--emotion", "anger", "--out", "o"], ["screen"]),
    (["heads", "ablate", "--model", "m", "--from", "r", "--out", "o"], ["ablate"]),
    (["heads", "ablate", "--model", "m", "--heads", "1.2,3:4", "--out", "o"], ["ablate"]),
    (["heads", "ablate", "--model", "m", "--emotion", "anger", "--out", "o"], ["screen", "ablate"]),
    (["heads", "patch", "--model", "m", "--source", "emotions-basic:anger", "--emotion", "anger", "--out", "o"],
     ["screen", "patch"]),
])
def test_heads_subcommands_set_the_stage_modes(argv, modes):
    from emoscope.cli.cmd_heads import build_sections

    args = build_parser().parse_args(argv)
    sections = build_sections(args)
    assert sections["heads"]["modes"] == modes
    spec = make_spec(args, "heads-x", ["heads"], sections, model="m")
    assert spec.options("heads").modes == modes
