"""``emoscope patch``: multi-token activation patching into a run directory.

    emoscope patch --model smollm2-135m --source emotions-basic:anger --prompts neutral-starts \\
        --layers 0.3,0.5,0.7 --positions last --max-new-tokens 32 --out runs/p1
        [--pairing per_target] [--positions last,prompt,window:4] [--generated] [--neutral DATASET:CLASS]

``--prompts`` are the target prompts the source is patched into (the ``targets`` option);
``--positions prompt`` patches every prompt token (the ``all`` of the ``patch`` section).

The arguments become the ``patch`` section of a one-stage spec, run like ``emoscope run``: the run
directory gets the spec, a manifest, tables, figures, findings and ``report.html``. Every default
is the stage's (``PatchOptions``).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_sections"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from emoscope.cli.common import lazy_arguments

    p = subparsers.add_parser(
        "patch",
        help="activation patching on multi-token generations, against random patches and a neutral source",
        description="Record residuals on source prompts (the mean over a class, or one source per target) and "
        "write them into target prompts at chosen layers and positions while the model generates; score the "
        "outputs against random patches of the same norm and a neutral-source patch in the same batch, with the "
        "next-token (step-1) view beside the multi-token effect.",
    )
    lazy_arguments(p, _arguments)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    from emoscope.cli.common import (
        Positions,
        add_generation,
        add_option,
        add_plain,
        add_random_controls,
        add_run_arguments,
        add_shared,
        count_or_all,
    )
    from emoscope.patching.stage import PatchOptions as O

    add_plain(p, "--model", required=True)
    add_shared(p, "patch", O, "--source", required=True, shown="none, required")
    add_option(p, "patch", O, "pairing", choices=["class_mean", "per_target"],
               help="class_mean: the mean of the class's states; per_target: source i for target i, cycling")
    add_option(p, "patch", O, "n_sources", type=count_or_all, help="use only the first N source texts ('all': every one)")
    add_option(p, "patch", O, "neutral", metavar="DATASET[:CLASS]|auto|none",
               help="neutral-source control: auto = the source dataset's 'neutral' class, else neutral-corpus")
    add_shared(p, "patch", O, "--prompts", field="targets", old=("--target", "--targets"))
    add_shared(p, "patch", O, "--n-prompts", field="n_targets", old=("--n-targets",))
    add_shared(p, "patch", O, "--layers")
    add_shared(p, "patch", O, "--positions", type=Positions(("last", "prompt", "window:K"), many=True,
                                                             renamed={"all": "prompt"}, spell={"prompt": "all"}))
    add_option(p, "patch", O, "generated", action="store_true",
               help="also write the source's last-token state at every generated position")
    add_generation(p, "patch", O)
    add_random_controls(p, "patch", O)
    add_option(p, "patch", O, "self_rows", "--no-self-rows", action="store_false",
               help="skip the self-patch (strength 0) rows")
    add_shared(p, "patch", O, "--scorers")
    add_shared(p, "patch", O, "--score", field="target_score", shown="from the source class, e.g. nrc_anger",
               old=("--target-score",))
    add_shared(p, "patch", O, "--alpha")
    add_run_arguments(p, old_seed=("--random-state",))


def build_sections(args: argparse.Namespace) -> dict[str, dict]:
    from emoscope.cli.running import section

    return {"patch": section(args, "patch")}


def run(args: argparse.Namespace) -> int:
    from emoscope.cli.running import print_notes, print_outcome, run_stages

    rd = run_stages(args, "patch", ["patch"], build_sections(args), model=args.model)
    _print_summary(rd)
    print_notes(rd.root, "patch")
    print_outcome(rd.root)
    return 0


def _print_summary(rd) -> None:  # noqa: ANN001 - emoscope.core.rundir.RunDir
    """The cell table, read back from the run: the multi-token effect beside the step-1 view."""
    import pandas as pd

    from emoscope.cli.running import read_table

    t = read_table(rd.tables / "patch_outputs.csv")
    c = read_table(rd.tables / "patch_cells.csv")
    m = rd.read_manifest().stages["patch"].metrics
    print(f"{len(t)} generations ({m.get('decode_seconds', float('nan')):.1f} s decoding); target "
          f"{m.get('target', '?')}")
    if len(c):
        cols = [x for x in ("layer", "positions", "n", "dropped_tokens", "mean_change", "mean_change_neutral",
                            "mean_change_random", "effect", "p_value", "rank_p", "effect_vs_neutral", "step1_change",
                            "step1_effect", "p_step1", "views", "share_broken") if x in c]
        print("per cell, on all target prompts (descriptive; the finding chooses its cell on half the prompts and "
              "reports it on the other half); effect = change over the mean random patch; step1 = the next-token "
              "view:")
        with pd.option_context("display.width", 220, "display.max_rows", 200):
            print(c[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
