"""Shared plumbing of the one-stage commands (``extract``, ``probe``, ``steer``, ``introspect``).

Every analysis command is a run: its flags become the sections of a spec
(``emoscope.runs.parse_spec``), which ``run_spec`` runs into ``--out``, so ``emoscope audit``,
``emoscope report`` and ``--resume`` work on its output like on any run.

A stage's pydantic options model is the one source of defaults: ``add_option`` takes a flag's
default from the model's field (shown in ``--help``) and stores the value under
``"STAGE.FIELD"`` in the parsed namespace; ``section(args, "STAGE")`` collects them back.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "lazy_arguments",
    "field_default",
    "add_option",
    "add_run_arguments",
    "add_allow_other_model",
    "allow_negative_lists",
    "section",
    "make_spec",
    "run_stages",
    "run_built",
    "print_notes",
    "stage_logger",
    "print_outcome",
    "floats",
    "ints",
    "words",
    "layers",
    "count_or_all",
]


# -- converters (argparse ``type=``): one-line errors name the flag --------------------------------
def _split(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _numbers(text: str, cast: type, what: str, example: str) -> list:
    parts = _split(text)
    try:
        vals = [cast(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated {what}, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"is empty; give e.g. {example}")
    return vals


def floats(text: str) -> list[float]:
    """``"-2,0,2"`` -> ``[-2.0, 0.0, 2.0]``."""
    return _numbers(text, float, "numbers", "-2,0,2")


def ints(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    return _numbers(text, int, "integers", "0,1,2")


def words(text: str) -> str | list[str]:
    """A name or path stays a string; ``"a,b,c"`` becomes a list of words."""
    return _split(text) if "," in text else text


def layers(text: str) -> str | list[int | float]:
    """``"all"`` and ranges (``"0-14"``) stay strings for the model to resolve; ``"12,18"`` and
    relative depths (``"0.5"``) become lists."""
    parts = _split(text)
    if not parts:
        raise argparse.ArgumentTypeError("is empty; give e.g. all, 0-14, 12,18 or 0.5")
    if text.strip() == "all" or any("-" in x[1:] for x in parts):
        return text.strip()
    try:
        return [float(x) if "." in x else int(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be like 'all', '12,18', '0-14' or '0.5,0.67', got {text!r}") from None


def count_or_all(text: str) -> int | None:
    """A positive count, or ``all`` (``None``)."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or 'all'), got {n}")
    return n


def lazy_arguments(parser: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``parser``'s arguments only when that subcommand is parsed or its help is shown.

    The flags' defaults come from stage options models, whose packages import torch; deferring
    them keeps ``emoscope --help`` and ``emoscope audit`` fast (``cli.main`` calls ``add``).
    """
    parser._emoscope_populate = add  # type: ignore[attr-defined]


# -- options from the stage's model ----------------------------------------------------------------
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


def add_option(parser: argparse.ArgumentParser, stage: str, model: Any, name: str, *flags: str,
               help: str = "", shown: str | None = None, **kw: Any) -> argparse.Action:
    """Add a flag for field ``name`` of ``stage``'s options ``model``, defaulting to the field's default.

    ``flags`` default to ``--NAME`` (underscores as dashes); the value lands in
    ``args.__dict__["STAGE.NAME"]``; ``--help`` shows the default (``shown`` overrides the text).
    For a ``store_true`` / ``store_false`` flag pass ``action=``.
    """
    default = field_default(model, name)
    text = shown if shown is not None else _shown(default)
    if kw.get("action") in ("store_true", "store_false"):
        text = f"{name.replace('_', ' ')} {'on' if default else 'off'}"
    if kw.get("action") not in ("store_true", "store_false") and "choices" not in kw:
        kw.setdefault("metavar", name.upper())
    return parser.add_argument(*(flags or ("--" + name.replace("_", "-"),)), dest=f"{stage}.{name}",
                               default=default, help=f"{help} (default: {text})" if help else f"default: {text}",
                               **kw)


def add_allow_other_model(parser: argparse.ArgumentParser, stage: str, model: Any) -> argparse.Action:
    """``--allow-other-model``: use a vector file whose metadata names another model (refused
    otherwise, before the model loads; see ``emoscope.vectors.checks``)."""
    return add_option(parser, stage, model, "allow_other_model", "--allow-other-model", action="store_true",
                      help="use a vector whose metadata names another model (its width and layers must still fit)")


def section(args: argparse.Namespace, stage: str) -> dict[str, Any]:
    """The ``stage`` section of the spec from the flags ``add_option`` added for it."""
    prefix = stage + "."
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}


def add_run_arguments(parser: argparse.ArgumentParser, *, seed_flags: tuple[str, ...] = ("--seed",)) -> None:
    """``--out``, ``--resume``, ``--seed`` and ``--model-dtype``: what every one-stage command has."""
    from emoscope.runs.spec import Spec

    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run directory to create (new or empty, unless --resume)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in DIR (same arguments)")
    parser.add_argument(*seed_flags, dest="spec.seed", type=int, metavar="N", default=field_default(Spec, "seed"),
                        help=f"the run's seed (default: {field_default(Spec, 'seed')})")
    # `extract` has its own --dtype (the storage dtype): there only --model-dtype names the compute dtype
    dtype_flags = ("--model-dtype",) + (() if "--dtype" in parser._option_string_actions else ("--dtype",))
    parser.add_argument(*dtype_flags, dest="spec.model_dtype", metavar="DTYPE",
                        default=field_default(Spec, "model_dtype"),
                        help="model compute dtype, e.g. bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--device-map", dest="spec.device_map", metavar="MAP", default=field_default(Spec, "device_map"),
                        help="shard the model over devices, e.g. auto (accelerate's device_map; default: one device)")
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


# -- running and printing --------------------------------------------------------------------------
def stage_logger(quiet: bool) -> Callable[[str], None]:
    """Progress lines on stderr, silenced by --quiet."""
    if quiet:
        return lambda msg: None
    return lambda msg: print(f"emoscope: {msg}", file=sys.stderr, flush=True)


def make_spec(args: argparse.Namespace, name: str, stages: list[str], sections: dict[str, dict[str, Any]], *,
              model: str, dataset: str | None = None):  # noqa: ANN201 - emoscope.runs.Spec
    """The spec of a command: its flags as stage sections, validated like any spec.

    An invalid option value is one ``SpecError`` line naming the option.
    """
    from emoscope.runs import parse_spec

    data: dict[str, Any] = {"name": name, "description": f"emoscope {name} (command line)", "model": model,
                            "seed": getattr(args, "spec.seed", 0), "stages": stages, **sections}
    if getattr(args, "spec.model_dtype", None):
        data["model_dtype"] = getattr(args, "spec.model_dtype")
    if getattr(args, "spec.device_map", None):
        data["device_map"] = getattr(args, "spec.device_map")
    if dataset is not None:
        data["dataset"] = dataset
    return parse_spec(data, source=f"emoscope {name}")


def run_stages(args: argparse.Namespace, name: str, stages: list[str], sections: dict[str, dict[str, Any]], *,
               model: str, dataset: str | None = None, **run_kw: Any):  # noqa: ANN201 - emoscope.runs.RunDir
    """Build the spec of a command (``make_spec``) and run it into ``args.out``; returns the run dir.

    Input that no stage can use is refused before any model loads (see ``emoscope.core.stages``).
    """
    spec = make_spec(args, name, stages, sections, model=model, dataset=dataset)
    return run_built(args, spec, **run_kw)


def run_built(args: argparse.Namespace, spec: Any, **run_kw: Any):  # noqa: ANN201 - emoscope.runs.RunDir
    """Run ``spec`` into ``args.out`` (``--resume``, ``--quiet`` honoured)."""
    from emoscope.runs import run_spec

    run_kw.setdefault("executor", executor_from_args(args))
    return run_spec(spec, args.out, resume=args.resume, log=stage_logger(args.quiet), **run_kw)


def print_outcome(run_dir: Path) -> None:
    """One summary block on stdout: where the report is and how the claims fared."""
    from emoscope.audit import describe_counts
    from emoscope.core.rundir import RunDir

    rd = RunDir.open(run_dir)
    m = rd.read_manifest()
    run = rd.findings()
    print(f"run directory: {rd.root}")
    print(f"report: {rd.report_path}")
    print(f"findings: {len(run.findings)}: {describe_counts(run.findings, run.n_tested)} (emoscope audit {rd.root})")
    unfinished = [f"{n} ({r.status})" for n, r in m.ordered_stages() if r.status != "done"]
    if unfinished:
        print("stages not done: " + ", ".join(unfinished))


def print_notes(run_dir: Path, stage: str) -> None:
    """The stage's summary and notes from the manifest, one per line."""
    from emoscope.core.rundir import RunDir

    rec = RunDir(run_dir).read_manifest().stages.get(stage)
    if rec is None:
        return
    if rec.summary:
        print(rec.summary)
    for note in rec.notes:
        print(f"note: {note}")
