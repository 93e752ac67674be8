"""The command line's one vocabulary: every flag that more than one command has is defined here,
once, with its type and help text (in the manner of inspect_ai's ``_cli/common.py``).

Every analysis command (``extract``, ``probe``, ``steer``, ``introspect``, ``patch``,
``heads {screen,ablate,patch}``, ``align``, ``elicit``) is a run: its flags become the sections of a
spec (``emoscope.cli.running.make_spec``), run into ``--out`` like ``emoscope run``.

- ``SHARED``: flag -> ``Flag`` (help text, converter, metavar, choices). A command adds a shared
  flag with ``add_shared(parser, STAGE, OPTIONS, "--flag")``: the default comes from the stage's
  options model (shown in ``--help``), the value lands in ``args.__dict__["STAGE.FIELD"]`` and
  ``running.section(args, STAGE)`` collects it back. A flag means the same in every command; the
  README's "Flags" section is this table.
- Groups: ``add_generation`` (max-new-tokens, temperature, top-k, top-p, seeds, chat, batch
  rows), ``add_random_controls`` (n-random, random-kind, random-match, random-test),
  ``add_run_arguments`` (out, resume, seed, dtype, device-map, executor): each adds the members
  whose field the stage's options model has.
- ``add_option``: a command's own flag for one field (help from the field's ``description`` when
  the command gives none).
- Renamed flags keep working for one release: ``old=("--permutations",)`` registers the old
  spelling, hidden from ``--help``, and its first use prints one ``emoscope: warning:`` line.

The converters (argparse ``type=``, in ``emoscope.cli.values``) refuse what can be refused without
a model (a malformed layer list, a non-finite strength, an unknown position word) with one line
naming the flag; what needs the model's shape (a layer past its depth, a token past its context)
is checked before the run directory is written (``emoscope.runs.precheck``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emoscope.cli.values import (
    EDIT_POSITIONS,
    READ_POSITIONS,
    Positions,
    count_or_all,
    floats,
    ints,
    layers,
    note_once,
    number,
    read_position,
    reset_notes,
    strengths,
    word_list,
    words,
)

__all__ = [
    "Flag", "SHARED", "Positions", "READ_POSITIONS", "EDIT_POSITIONS",
    "lazy_arguments", "field_default", "add_option", "add_shared", "add_plain", "rename",
    "add_generation", "add_random_controls", "add_run_arguments", "add_executor_arguments",
    "executor_from_args", "add_allow_other_model", "allow_negative_lists",
    "note_once", "reset_notes", "number", "floats", "strengths", "ints", "words", "word_list", "layers", "count_or_all",
    "read_position",
]


# -- the shared flags -------------------------------------------------------------------------
@dataclass(frozen=True)
class Flag:
    """One shared flag: its help text and how its value is read. ``action``: ``store_true`` /
    ``store_false`` for a switch."""

    help: str
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    action: str | None = None
    nargs: str | None = None


_UNITS = ("token_norm", "token_norm_robust", "trial_norm", "raw")
SHARED: dict[str, Flag] = {
    # what runs on what
    "--model": Flag("the model: an embedded alias (emoscope models), a local directory, a .gguf file or a hub id",
                    metavar="MODEL"),
    "--models": Flag("several models, every pair compared (each an alias, directory, .gguf file or hub id)",
                     metavar="MODEL", nargs="+"),
    "--dataset": Flag("a labelled dataset: a built-in name (emoscope datasets) or a JSONL/CSV path", metavar="DATASET"),
    "--prompts": Flag("generation prompts: a built-in dataset name, .txt, .jsonl or .csv", metavar="PROMPTS"),
    "--n-prompts": Flag("use only the first N prompts ('all': every one)", type=count_or_all, metavar="N"),
    "--source": Flag("source texts DATASET:CLASS, e.g. emotions-basic:anger", metavar="DATASET:CLASS"),
    "--vector": Flag("a ConceptVector .safetensors file", metavar="FILE"),
    "--emotion": Flag("fit a difference-of-means vector for this class of --dataset (instead of --vector)",
                      metavar="CLASS"),
    "--baseline": Flag("the class an emotion is contrasted with, or 'all' (the mean of all classes)",
                       metavar="LABEL|all"),
    "--allow-other-model": Flag("use a vector whose metadata names another model (its width and layers must "
                                "still fit)", action="store_true"),
    # where
    "--layers": Flag("layers: all, 12,18, a range 0-14, -1 (the last) or relative depths 0.5", type=layers,
                     metavar="LAYERS"),
    "--position": Flag(f"where a vector is read: {READ_POSITIONS}", type=read_position, metavar="POSITION"),
    "--positions": Flag("tokens an edit writes: " + "; ".join(f"{k}: {v}" for k, v in EDIT_POSITIONS.items()),
                        metavar="POSITIONS"),
    # how much
    "--strengths": Flag("comma-separated finite strengths, or auto (the stage chooses); see --unit", type=strengths,
                        metavar="S,S,..|auto"),
    "--unit": Flag("strength unit: token_norm (the layer's mean per-token residual norm, first token left out), "
                   "token_norm_robust (the same without massive dimensions), trial_norm (the trial prompt's mean "
                   "token norm) or raw (times the vector)", choices=_UNITS),
    # what is scored
    "--scorers": Flag("comma-separated scorers; classifier:/path/to/model adds a text classifier", type=word_list,
                      metavar="NAMES"),
    "--score": Flag("the scorer column the claim is about, e.g. nrc_anger", metavar="COLUMN"),
    "--alpha": Flag("level of the tests behind the claims (the run corrects across its tests)", type=number,
                    metavar="ALPHA"),
    "--n-permutations": Flag("label permutations behind a permutation p-value", type=int, metavar="N"),
    # random controls
    "--n-random": Flag("random controls (vectors, head sets or patches of the same size) per kind, each one a draw "
                       "of the null", type=int, metavar="K"),
    "--random-kind": Flag("random directions: isotropic, covariance-matched to neutral activations, or both",
                          choices=("isotropic", "covariance", "both")),
    "--random-match": Flag("random heads: as many per layer as the chosen ones (layer), in the layers they span "
                           "(band), or anywhere (any)", choices=("layer", "band", "any")),
    "--random-test": Flag("how the candidate is judged among its random draws: a prediction interval (interval) "
                          "or its rank (rank)", choices=("interval", "rank")),
    # generation
    "--max-new-tokens": Flag("tokens generated per prompt", type=int, metavar="N"),
    "--temperature": Flag("sampling temperature (0: greedy)", type=number, metavar="T"),
    "--top-k": Flag("top-k sampling (0: off)", type=int, metavar="K"),
    "--top-p": Flag("nucleus sampling (1: off)", type=number, metavar="P"),
    "--seeds": Flag("seeds a measurement is repeated with, comma-separated (generation: sampling seeds, greedy "
                    "uses the first; probe: split and fit seeds)", type=ints, metavar="SEEDS"),
    "--no-chat": Flag("do not wrap prompts in the model's chat template", action="store_false"),
    "--batch-rows": Flag("generation rows per decode batch (lower it to save memory)", type=int, metavar="N"),
    "--batch-size": Flag("texts per forward pass", type=int, metavar="N"),
    # storage and the run
    "--store-dtype": Flag("dtype the activations are stored in", choices=("float32", "float16")),
    "--out": Flag("run directory to create (new or empty, unless --resume)", metavar="DIR"),
    "--resume": Flag("continue an interrupted run in DIR (same arguments)", action="store_true"),
    "--seed": Flag("the run's seed", type=int, metavar="N"),
    "--dtype": Flag("model compute dtype, e.g. bfloat16", metavar="DTYPE"),
    "--device-map": Flag("shard the model over devices, e.g. auto (accelerate's device_map)", metavar="MAP"),
}
"""Every shared flag; the README's "Flags" table lists the same."""

GENERATION = ("--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seeds", "--no-chat", "--batch-rows")
RANDOM_CONTROLS = ("--n-random", "--random-kind", "--random-match", "--random-test")


# -- renamed flags: one warning line each ------------------------------------------------------
class _Renamed:
    """Mixed into an argparse action: a renamed spelling prints its note once, then acts."""

    renamed: dict[str, str]

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001, ANN204
        message = self.renamed.get(option_string or "")
        if message:
            note_once(option_string, message)
        return super().__call__(parser, namespace, values, option_string)  # type: ignore[misc]


def rename(parser: argparse.ArgumentParser | Any, action: argparse.Action, old: tuple[str, ...] = (),
           changed: dict[str, str] | None = None) -> argparse.Action:
    """Register ``old`` spellings of ``action`` (hidden from ``--help``; the first use prints that the
    flag was renamed) and ``changed`` flags whose meaning changed (``{flag: note}``)."""
    notes = {o: f"{o} is now {action.option_strings[0]} (the old spelling works until the next release)"
             for o in old}
    notes.update(changed or {})
    if not notes:
        return action
    if isinstance(action, _Renamed):
        action.renamed.update(notes)
    else:
        cls = type(action)
        action.__class__ = type(f"Renamed{cls.__name__}", (_Renamed, cls), {})
        action.renamed = notes  # type: ignore[attr-defined]
    for o in old:
        parser._option_string_actions[o] = action
    return action


# -- options from the stage's model ----------------------------------------------------------------
def lazy_arguments(parser: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``parser``'s arguments only when that subcommand is parsed or its help is shown.

    The flags' defaults come from stage options models, whose packages import torch; deferring
    them keeps ``emoscope --help`` and ``emoscope audit`` fast (``cli.main`` calls ``add``).
    """
    parser._emoscope_populate = add  # type: ignore[attr-defined]


def field_default(model: Any, name: str) -> Any:
    """The default of field ``name`` of pydantic ``model`` (its ``default_factory()`` if it has one).

    >>> from pydantic import BaseModel, Field
    >>> class O(BaseModel):
    ...     n: int = 3
    ...     xs: list[int] = Field(default_factory=lambda: [0, 1])
    >>> field_default(O, "n"), field_default(O, "xs")
    (3, [0, 1])
    """
    field = model.model_fields[name]
    if field.default_factory is not None:
        return field.default_factory()
    if field.is_required():
        raise ValueError(f"{model.__name__}.{name} has no default")
    return field.default


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def add_option(parser: argparse.ArgumentParser | Any, stage: str, model: Any, name: str, *flags: str,
               help: str = "", shown: str | None = None, old: tuple[str, ...] = (), **kw: Any) -> argparse.Action:
    """Add a flag for field ``name`` of ``stage``'s options ``model``, defaulting to the field's default.

    ``flags`` default to ``--NAME`` (underscores as dashes); the value lands in
    ``args.__dict__["STAGE.NAME"]``; ``--help`` shows the default (``shown`` overrides the text) after
    ``help`` (default: the field's ``description``). For a switch pass ``action=``; ``old``: renamed
    spellings that still work (see ``rename``).
    """
    default = field_default(model, name)
    help = help or model.model_fields[name].description or ""
    text = shown if shown is not None else _shown(default)
    if kw.get("action") in ("store_true", "store_false"):
        text = f"{name.replace('_', ' ')} {'on' if default else 'off'}"
    if kw.get("action") not in ("store_true", "store_false") and "choices" not in kw:
        kw.setdefault("metavar", name.upper())
    action = parser.add_argument(*(flags or ("--" + name.replace("_", "-"),)), dest=f"{stage}.{name}",
                                 default=default, help=f"{help} (default: {text})" if help else f"default: {text}",
                                 **kw)
    return rename(parser, action, old)


def _flag_kw(flag: str) -> dict[str, Any]:
    f = SHARED[flag]
    kw: dict[str, Any] = {}
    if f.action:
        kw["action"] = f.action
    else:
        for key in ("type", "metavar", "choices", "nargs"):
            if getattr(f, key) is not None:
                kw[key] = getattr(f, key)
    return kw


def add_shared(parser: argparse.ArgumentParser | Any, stage: str, model: Any, flag: str, *, field: str | None = None,
               shown: str | None = None, old: tuple[str, ...] = (), type: Callable[[str], Any] | None = None,
               **kw: Any) -> argparse.Action:
    """Add shared ``flag`` for field ``field`` (default: the flag's name) of ``stage``'s options ``model``.

    Help text, converter, metavar and choices come from ``SHARED[flag]``; ``type`` may only narrow
    the grammar of ``--positions`` (a ``Positions``). ``kw``: ``required`` and the like.
    """
    name = field or flag.removeprefix("--no-").removeprefix("--").replace("-", "_")
    fkw = _flag_kw(flag)
    if type is not None:
        if flag != "--positions" or not isinstance(type, Positions):
            raise ValueError(f"{flag}: the converter comes from SHARED")
        fkw["type"] = type
        if shown is None:  # which words of the one grammar this command writes
            shown = (f"{_shown(field_default(model, name))}; here: {' | '.join(type.accept)}"
                     + (", comma-separated for one cell each" if type.many else ""))
    return add_option(parser, stage, model, name, flag, help=SHARED[flag].help, shown=shown, old=old, **fkw, **kw)


def add_plain(parser: argparse.ArgumentParser | Any, flag: str, *, dest: str | None = None, default: Any = None,
              shown: str | None = None, old: tuple[str, ...] = (), **kw: Any) -> argparse.Action:
    """Add shared ``flag`` where no options field holds it (``--model``, ``--dataset``, ``--models``)."""
    text = SHARED[flag].help + (f" (default: {shown})" if shown else "")
    action = parser.add_argument(flag, dest=dest or flag[2:].replace("-", "_"), default=default, help=text,
                                 **_flag_kw(flag), **kw)
    return rename(parser, action, old)


def add_generation(parser: argparse.ArgumentParser | Any, stage: str, model: Any, *,
                   shown: dict[str, str] | None = None) -> None:
    """The generation block: each of ``GENERATION`` whose field ``model`` has."""
    for flag in GENERATION:
        name = flag.removeprefix("--no-").removeprefix("--").replace("-", "_")
        if name in model.model_fields:
            add_shared(parser, stage, model, flag, shown=(shown or {}).get(flag))


def add_random_controls(parser: argparse.ArgumentParser | Any, stage: str, model: Any) -> None:
    """The random-control block: each of ``RANDOM_CONTROLS`` whose field ``model`` has."""
    for flag in RANDOM_CONTROLS:
        if flag[2:].replace("-", "_") in model.model_fields:
            add_shared(parser, stage, model, flag)


def add_allow_other_model(parser: argparse.ArgumentParser, stage: str, model: Any) -> argparse.Action:
    """``--allow-other-model``: use a vector file whose metadata names another model (refused
    otherwise, before the model loads; see ``emoscope.vectors.checks``)."""
    return add_shared(parser, stage, model, "--allow-other-model")


def add_run_arguments(parser: argparse.ArgumentParser, *, old_seed: tuple[str, ...] = (),
                      dtype_note: str | None = None) -> None:
    """``--out``, ``--resume``, ``--seed``, ``--dtype`` (compute), ``--device-map`` and the executor
    flags: what every analysis command has. ``old_seed``: renamed spellings of ``--seed``;
    ``dtype_note``: a one-release note on ``--dtype`` where its meaning changed."""
    from emoscope.runs.spec import Spec

    add_plain(parser, "--out", required=True)
    add_plain(parser, "--resume")
    seed = field_default(Spec, "seed")
    add_plain(parser, "--seed", dest="spec.seed", default=seed, shown=str(seed), old=old_seed)
    dtype = add_plain(parser, "--dtype", dest="spec.model_dtype", default=field_default(Spec, "model_dtype"),
                      shown="float32 on CPU, bfloat16 on GPU", old=("--model-dtype",))
    if dtype_note:
        rename(parser, dtype, changed={"--dtype": dtype_note})
    add_plain(parser, "--device-map", dest="spec.device_map", default=field_default(Spec, "device_map"),
              shown="one device")
    add_executor_arguments(parser)


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--ray-address``, ``--workers``: where the sweeps' work units run."""
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="run the sweeps' work units in this process (local, the default) or on Ray")
    parser.add_argument("--ray-address", metavar="ADDR", default=None,
                        help="Ray cluster to join, e.g. auto (default with --executor ray: start Ray on this machine)")
    parser.add_argument("--workers", type=int, metavar="N", default=None,
                        help="Ray workers, each loading the model once (default: one per CPU, or per GPU with --gpus-per-worker)")
    parser.add_argument("--gpus-per-worker", type=float, metavar="G", default=0.0,
                        help="GPUs each Ray worker asks for (default 0: CPU workers)")


def executor_from_args(args: argparse.Namespace) -> Any:
    """The executor the flags ask for (``emoscope.core.executor.make_executor``)."""
    from emoscope.core.executor import make_executor
    from emoscope.errors import InputError

    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    gpus = float(getattr(args, "gpus_per_worker", 0.0) or 0.0)
    if gpus < 0:
        raise InputError(f"--gpus-per-worker must be >= 0, got {gpus:g}")
    name = getattr(args, "executor", "local")
    if name == "local" and gpus:
        raise InputError("--gpus-per-worker needs --executor ray")
    return make_executor(name, address=getattr(args, "ray_address", None), workers=workers, gpus_per_worker=gpus)


def allow_negative_lists(parser: argparse.ArgumentParser) -> None:
    """Let ``--strengths -8,-4,2`` read as a value: argparse only takes single negative numbers
    as values, so widen its matcher to comma lists of numbers."""
    parser._negative_number_matcher = re.compile(r"^-\d*\.?\d+([eE][-+]?\d+)?(,\s*-?\d*\.?\d+([eE][-+]?\d+)?)*,?$")
