"""``emoscope placebo SPEC|RUN --n N``: re-run an analysis with decoys in the candidate's place and
report how often each finding kind ships (the pipeline's own false-positive rate)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "placebo_spec"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "placebo",
        help="re-run an analysis with decoys (random draws) in place of its vectors, head sets or patch sources",
        description="Re-run the steer, introspect, heads (ablate/patch) and patch stages of SPEC (a YAML file, a "
        "built-in spec, or a run directory) with N decoys in place of each candidate: a decoy is one more random "
        "draw, drawn the way the stage draws its random controls, judged exactly as the candidate would be. How "
        "often each finding kind ships is the pipeline's own false-positive rate on this model and data; it "
        "should stay near the level (0.05). Writes a run directory with the table placebo_rates and a report.",
    )
    p.add_argument("spec", metavar="SPEC|RUN", help="YAML file, built-in spec name, or run directory")
    p.add_argument("--n", type=int, default=10, metavar="N",
                   help="decoys per stage (heads: decoy head sets; introspect: decoy runs, each replacing every "
                        "concept); default 10")
    p.add_argument("--out", metavar="DIR", default=None, help="run directory (default: runs/NAME-placebo)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted placebo run in DIR")
    from emoscope.cli.common import add_executor_arguments

    add_executor_arguments(p)
    p.set_defaults(func=run)


def placebo_spec(spec: Any, n: int) -> Any:
    """``spec`` with only its decoy stages, each with ``decoys: n``, and the placebo stage last."""
    from emoscope.errors import InputError
    from emoscope.placebo.stage import DECOY_STAGES
    from emoscope.runs.spec import parse_spec

    if n < 1:
        raise InputError(f"--n must be a positive number of decoys, got {n}")
    stages = [s for s in spec.stages if s in DECOY_STAGES]
    heads = spec.options("heads") if "heads" in stages else None
    if heads is not None and not ({"ablate", "patch"} & set(getattr(heads, "modes", []))):
        stages.remove("heads")  # a screen alone has no head set to replace
    if not stages:
        have = ", ".join(spec.stages)
        raise InputError(f"placebo: {spec.source} has no vector, head set or patch source to replace (stages: {have}); "
                         f"placebo re-runs {', '.join(DECOY_STAGES)} (heads with ablate or patch)")
    data = spec.to_dict()
    for s in spec.stages:
        if s not in stages:
            data.pop(s, None)
    data["name"] = f"{spec.name}-placebo"
    data["stages"] = [*stages, "placebo"]
    for s in stages:
        data[s] = {**data.get(s, {}), "decoys": int(n)}
    data.pop("yardsticks", None)
    return parse_spec(data, source=f"{spec.source} (placebo)")


def run(args: argparse.Namespace) -> int:
    from emoscope.cli.common import executor_from_args
    from emoscope.cli.running import print_outcome, stage_logger
    from emoscope.core.rundir import RunDir
    from emoscope.runs import load_spec, run_spec

    spec_arg, out = args.spec, args.out
    spec = load_spec(spec_arg)
    if args.resume and "placebo" in spec.stages:  # `emoscope placebo PLACEBO_RUN --resume`
        out = out or (spec_arg if Path(spec_arg).is_dir() else None)
    else:
        spec = placebo_spec(spec, args.n)
    executor = executor_from_args(args)
    rd = run_spec(spec, out, resume=args.resume, log=stage_logger(args.quiet), executor=executor)
    path = RunDir.open(rd.root).tables / "placebo_rates.csv"
    if path.is_file():
        import pandas as pd

        rates = pd.read_csv(path)
        print("placebo: how often a decoy ships a claim (exact 95% interval; level 0.05)")
        for r in rates.itertuples():
            print(f"  {r.kind:<14} {r.n_ship:>3}/{r.n_decoys:<3} = {r.rate:.2f} [{r.lo:.2f}, {r.hi:.2f}]  ({r.stages})")
    print_outcome(rd.root)
    return 0
