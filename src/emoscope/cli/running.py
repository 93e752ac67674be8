"""How an analysis command runs: its flags become a spec (``make_spec``), which ``run_spec``
runs into ``--out`` (``run_built``), and the outcome is printed (``print_outcome``,
``print_notes``). The flags themselves are defined in ``emoscope.cli.common``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["section", "make_spec", "run_stages", "run_built", "print_notes", "stage_logger", "print_outcome",
           "read_table"]


def section(args: argparse.Namespace, stage: str) -> dict[str, Any]:
    """The ``stage`` section of the spec from the flags ``common.add_option`` added for it."""
    prefix = stage + "."
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}


def stage_logger(quiet: bool) -> Callable[[str], None]:
    """Progress lines on stderr, silenced by --quiet."""
    if quiet:
        return lambda msg: None
    return lambda msg: print(f"emoscope: {msg}", file=sys.stderr, flush=True)


def make_spec(args: argparse.Namespace, name: str, stages: list[str], sections: dict[str, dict[str, Any]], *,
              model: str, dataset: str | None = None, models: list[str] | None = None):  # noqa: ANN201 - Spec
    """The spec of a command: its flags as stage sections, validated like any spec.

    An invalid option value is one ``SpecError`` line naming the option.
    """
    from emoscope.runs import parse_spec

    data: dict[str, Any] = {"name": name, "description": f"emoscope {name} (command line)", "model": model,
                            "seed": getattr(args, "spec.seed", 0), "stages": stages, **sections}
    if models:
        data["models"] = list(models)
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

    Input that no stage can use is refused before the run directory is written or any model loads
    (``emoscope.runs.runner.check_inputs``).
    """
    spec = make_spec(args, name, stages, sections, model=model, dataset=dataset)
    return run_built(args, spec, **run_kw)


def run_built(args: argparse.Namespace, spec: Any, **run_kw: Any):  # noqa: ANN201 - emoscope.runs.RunDir
    """Run ``spec`` into ``args.out`` (``--resume``, ``--quiet`` honoured)."""
    from emoscope.cli.common import executor_from_args
    from emoscope.runs import run_spec

    run_kw.setdefault("executor", executor_from_args(args))
    return run_spec(spec, args.out, resume=args.resume, log=stage_logger(args.quiet), **run_kw)


def read_table(path: Path):  # noqa: ANN201 - pandas.DataFrame
    """A run's CSV table for printing; an empty table when the stage wrote none or an empty one
    (e.g. a sweep whose only strength is 0 has no cells to compare)."""
    import pandas as pd

    try:
        return pd.read_csv(path, keep_default_na=True)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


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
