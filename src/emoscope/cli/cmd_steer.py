"""``emoscope steer``: steered generation swept over layers and strengths, with controls, as a run.

    emoscope steer --model smollm2-135m --vector runs/probe1/vectors/joy.safetensors \\
        --layers 10,15,20 --strengths -2,-1,0,1,2 --out runs/steer-joy

Without ``--vector``, ``--emotion joy [--dataset NAME]`` fits a difference-of-means vector on the
fly (against ``--baseline``). It runs the ``steer`` stage into ``--out``: tables
``steer_outputs`` (every generation with its scores and regime), ``steer_success``,
``steer_regimes``, ``steer_dose_response``, the figures, the vector (``steer/vector.safetensors``),
findings and ``report.html``. Every default is the stage's (``SteerOptions``).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_sections"]


def register(sub: argparse._SubParsersAction) -> None:
    from emoscope.cli.common import lazy_arguments

    p = sub.add_parser("steer", help="steer generation with a vector; sweep layers x strengths against controls",
                       description="Run the steer stage: steered multi-token generation over layers x strengths, "
                       "with strength 0, the negated vector and random matched-norm vectors in the same batch.")
    lazy_arguments(p, _arguments)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    from emoscope.cli.common import (
        Positions,
        add_allow_other_model,
        add_generation,
        add_option,
        add_plain,
        add_random_controls,
        add_run_arguments,
        add_shared,
        allow_negative_lists,
    )
    from emoscope.steering.stage import DEFAULT_DATASET
    from emoscope.steering.stage import SteerOptions as O

    add_plain(p, "--model", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    add_shared(src, "steer", O, "--vector")
    add_shared(src, "steer", O, "--emotion")
    add_allow_other_model(p, "steer", O)
    add_plain(p, "--dataset", default=DEFAULT_DATASET, shown=f"{DEFAULT_DATASET}; used with --emotion")
    add_shared(p, "steer", O, "--baseline", shown="'neutral' when the dataset has it, else 'all' (the mean of all classes)")
    add_shared(p, "steer", O, "--position", shown=f"{O.model_fields['position'].default} (all tokens but the first); "
               "used with --emotion")
    add_shared(p, "steer", O, "--layers")
    add_shared(p, "steer", O, "--strengths")
    add_shared(p, "steer", O, "--unit")
    add_shared(p, "steer", O, "--positions", type=Positions(("all", "prompt", "generated", "from:K")))
    add_option(p, "steer", O, "mode", choices=["add", "ablate_add"], help="add the vector, or ablate then add")
    add_shared(p, "steer", O, "--prompts")
    add_shared(p, "steer", O, "--n-prompts")
    add_generation(p, "steer", O)
    add_random_controls(p, "steer", O)
    add_shared(p, "steer", O, "--scorers")
    add_shared(p, "steer", O, "--score", field="target", shown="from the vector's name, e.g. nrc_joy", old=("--target",))
    add_shared(p, "steer", O, "--alpha")
    add_run_arguments(p, old_seed=("--random-state",))
    allow_negative_lists(p)


def build_sections(args: argparse.Namespace) -> dict[str, dict]:
    from emoscope.cli.running import section

    return {"steer": section(args, "steer")}


def run(args: argparse.Namespace) -> int:
    from emoscope.cli.running import print_notes, print_outcome, run_stages

    dataset = None if getattr(args, "steer.vector") else args.dataset
    rd = run_stages(args, "steer", ["steer"], build_sections(args), model=args.model, dataset=dataset)
    _print_summary(rd)
    print_notes(rd.root, "steer")
    print_outcome(rd.root)
    return 0


def _print_summary(rd) -> None:  # noqa: ANN001 - emoscope.core.rundir.RunDir
    """The success table and regime switches, read back from the run's tables."""
    import pandas as pd

    from emoscope.cli.running import read_table
    from emoscope.steering.regimes import regime_switches

    t = read_table(rd.tables / "steer_outputs.csv")
    s = read_table(rd.tables / "steer_success.csv")
    m = rd.read_manifest().stages["steer"].metrics
    base = t.loc[t.kind == "baseline", "target_score"].mean() if len(t) else float("nan")
    print(f"{len(t)} generations ({m.get('decode_seconds', float('nan')):.1f} s decoding); target "
          f"{m.get('target', '?')}, baseline mean {base:.3f}")
    if len(s):
        cols = [c for c in ("vector", "layer", "strength", "n", "mean_change", "mean_change_random", "effect",
                            "p_value", "rank_p", "effect_cov", "success_rate", "share_surgical",
                            "share_repetitive_collapse", "share_explosive") if c in s]
        print("per cell, on all prompts (descriptive; the finding chooses its cell on half the prompts and "
              "reports it on the other half):")
        with pd.option_context("display.width", 200, "display.max_rows", 200):
            print(s[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for line in regime_switches(t) if len(t) else []:
        print("regimes, " + line)
