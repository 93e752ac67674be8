"""``emoscope run SPEC [--out DIR] [--resume] [--executor ray [--ray-address ADDR]]``: run an
experiment spec into a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run an experiment spec (YAML file or built-in name) into a run directory",
        description="Run every stage of SPEC into a run directory (spec, manifest, tables, figures, "
        "findings, report.html). SPEC is a YAML file, a built-in spec name (demo, emotions, "
        "introspection, cross-model, extraction-modes, leakage), or, with --resume, an existing run directory.",
    )
    p.add_argument("spec", metavar="SPEC", help="YAML file, built-in spec name, or run directory (with --resume)")
    p.add_argument("--out", metavar="DIR", default=None, help="run directory (default: runs/NAME)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in DIR, redoing only unfinished stages and, inside a "
                   "stage, only the work units that had not finished")
    from emoscope.cli.common import add_executor_arguments

    add_executor_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emoscope.cli.common import executor_from_args
    from emoscope.cli.running import print_outcome, stage_logger
    from emoscope.runs import load_spec, run_spec

    spec_arg, out = args.spec, args.out
    if args.resume and Path(spec_arg, "manifest.json").is_file():  # `emoscope run RUN --resume`
        out = out or spec_arg
        spec_arg = str(Path(spec_arg, "spec.yaml"))
    spec = load_spec(spec_arg)
    executor = executor_from_args(args)
    rd = run_spec(spec, out, resume=args.resume, log=stage_logger(args.quiet), executor=executor)
    print_outcome(rd.root)
    return 0
