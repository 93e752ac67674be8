"""``emoscope heads {screen,ablate,patch}``: attention heads against a vector, as one-stage runs.

    emoscope heads screen --model smollm2-135m --vector runs/v/vectors/anger.safetensors \\
        --dataset emotions-basic --out runs/h1
    emoscope heads ablate --model smollm2-135m --heads top:8 --from runs/h1 --prompts neutral-starts --out runs/h2
    emoscope heads patch  --model smollm2-135m --heads top:8 --from runs/h1 \\
        --source emotions-basic:anger --prompts neutral-starts --out runs/h3

Each subcommand runs the ``heads`` stage with one mode (``ablate`` / ``patch`` with ``top:K`` and
no ``--from`` screen first, in the same run). ``--emotion CLASS`` fits a difference-of-means
vector on ``--dataset`` instead of ``--vector``. Every default is the stage's (``HeadsOptions``).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_sections", "modes_for"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from emoscope.cli.common import lazy_arguments

    p = subparsers.add_parser(
        "heads", help="attention heads: screen against a vector, ablate or patch against random heads",
        description="Screen every attention head's direct contribution to a vector's direction, then ablate "
        "(zero / mean) or patch the top heads while generating, against random heads of the same count.")
    sub = p.add_subparsers(dest="heads_mode", metavar="MODE", parser_class=type(p))
    p.set_defaults(func=_no_mode)
    helps = {
        "screen": ("each head's contribution to the vector's direction, emotion vs baseline texts",
                   "Screen every head (the o_proj input split per head) against the vector at the read position: "
                   "emotion texts minus baseline texts, label-permutation p, Holm across heads, heatmap."),
        "ablate": ("zero / mean ablation of chosen heads while generating, against random heads",
                   "Ablate the chosen heads (top:K of a screen, or L.H,...) while generating and measure the "
                   "scorers and probe projections against random head sets of the same size in the same batch."),
        "patch": ("patch chosen heads' outputs from source prompts into target prompts, against random heads",
                  "Record the chosen heads' outputs on source prompts and write them into the target prompts at the "
                  "last prompt token(s), against random head sets of the same size patched the same way."),
    }
    for mode, (short, long) in helps.items():
        sp = sub.add_parser(mode, help=short, description=long)
        lazy_arguments(sp, lambda q, m=mode: _arguments(q, m))
        sp.set_defaults(func=run, heads_mode=mode)


def _no_mode(args: argparse.Namespace) -> int:
    import sys

    print("emoscope heads: error: give a mode: screen, ablate or patch (see --help)", file=sys.stderr)
    return 2


def _arguments(p: argparse.ArgumentParser, mode: str) -> None:
    from emoscope.cli.common import (
        Positions,
        add_allow_other_model,
        add_generation,
        add_option,
        add_plain,
        add_random_controls,
        add_run_arguments,
        add_shared,
        layers,
        read_position,
        word_list,
    )
    from emoscope.heads.stage import DEFAULT_DATASET
    from emoscope.heads.stage import HeadsOptions as O

    add_plain(p, "--model", required=True)
    src = p.add_mutually_exclusive_group(required=(mode == "screen"))
    add_shared(src, "heads", O, "--vector", **({} if mode == "screen" else {"shown": "the vector of the --from screen"}))
    add_shared(src, "heads", O, "--emotion")
    add_allow_other_model(p, "heads", O)
    add_plain(p, "--dataset", default=DEFAULT_DATASET, shown=f"{DEFAULT_DATASET}; screened on, and --emotion fitted on")
    add_shared(p, "heads", O, "--baseline", shown="'neutral' when the dataset has it, else 'all'")
    add_option(p, "heads", O, "fit_position", type=read_position, help="read position when fitting an --emotion vector")
    add_option(p, "heads", O, "vector_layers", type=layers, help="layers an --emotion vector is fitted at")
    add_shared(p, "heads", O, "--layers")
    add_option(p, "heads", O, "direction_layer", type=int, metavar="L",
               shown="each head against its block's vector, or the next vector layer above",
               help="read every head against the vector of this one layer")
    add_shared(p, "heads", O, "--position")
    add_shared(p, "heads", O, "--n-permutations", shown="enough for Holm over the heads to reach alpha/2")
    add_option(p, "heads", O, "alternative", choices=["greater", "less", "two-sided"],
               help="screening test and ranking direction")
    add_option(p, "heads", O, "screen_batch_size", type=int, help="texts per screening forward")
    if mode != "screen":
        add_option(p, "heads", O, "heads", help="top:K (of the screen), L.H,L.H or L:H")
        add_option(p, "heads", O, "from_run", "--from", metavar="RUN", help="a run directory with a heads screen")
        add_random_controls(p, "heads", O)
        add_shared(p, "heads", O, "--prompts", old=("--target",) if mode == "patch" else ())
        add_shared(p, "heads", O, "--n-prompts")
        add_generation(p, "heads", O)
        add_shared(p, "heads", O, "--scorers")
        add_shared(p, "heads", O, "--score", field="target", shown="from the emotion, e.g. nrc_anger",
                   old=("--target-score",))
        add_option(p, "heads", O, "probe_layer", type=int, shown="the vector's deepest layer",
                   help="layer of the probe projection")
        add_option(p, "heads", O, "metrics", type=word_list, help="metrics the findings test (table columns)")
        add_shared(p, "heads", O, "--alpha")
    if mode == "ablate":
        add_option(p, "heads", O, "methods", type=word_list, help="zero and/or mean ablation")
        add_shared(p, "heads", O, "--positions", type=Positions(("all", "prompt", "generated", "from:K")))
        add_option(p, "heads", O, "mean_texts", help="texts whose mean head outputs mean ablation writes")
    if mode == "patch":
        add_shared(p, "heads", O, "--source", required=True)
        add_option(p, "heads", O, "patch_tokens", type=int, help="last prompt tokens patched, aligned from the end")
    add_run_arguments(p, old_seed=("--random-state",))


def modes_for(args: argparse.Namespace) -> list[str]:
    """The stage modes a subcommand runs: its own, after a screen when it needs one (``top:K`` and
    no ``--from``)."""
    from emoscope.heads.select import parse_heads

    mode = args.heads_mode
    if mode == "screen":
        return ["screen"]
    needs = parse_heads(getattr(args, "heads.heads")).top and not getattr(args, "heads.from_run")
    return ["screen", mode] if needs else [mode]


def build_sections(args: argparse.Namespace) -> dict[str, dict]:
    from emoscope.cli.running import section

    return {"heads": {**section(args, "heads"), "modes": modes_for(args)}}


def run(args: argparse.Namespace) -> int:
    from emoscope.cli.running import print_notes, print_outcome, run_stages

    sections = build_sections(args)
    modes = sections["heads"]["modes"]
    fits = not getattr(args, "heads.vector") and getattr(args, "heads.emotion")
    dataset = args.dataset if ("screen" in modes or fits) else None
    rd = run_stages(args, f"heads-{args.heads_mode}", ["heads"], sections, model=args.model, dataset=dataset)
    _print_summary(rd, modes)
    print_notes(rd.root, "heads")
    print_outcome(rd.root)
    return 0


def _print_summary(rd, modes: list[str]) -> None:  # noqa: ANN001 - emoscope.core.rundir.RunDir
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_rows", 200):
        if "screen" in modes and (rd.tables / "heads_screen.csv").exists():
            t = pd.read_csv(rd.tables / "heads_screen.csv").sort_values("rank").head(10)
            print("top heads of the screen:")
            print(t[["rank", "layer", "head", "diff", "z", "p", "p_holm", "direction_layer"]].to_string(
                index=False, float_format=lambda x: f"{x:.3g}"))
        for mode in ("ablate", "patch"):
            path = rd.tables / f"heads_{mode}_effects.csv"
            if mode in modes and path.exists():
                e = pd.read_csv(path)
                print(f"{mode}: chosen heads minus the mean of {int(e['k'].max()) if len(e) else 0} random head sets, "
                      "per prompt (interval: bootstrap over prompts; p: paired Wilcoxon):")
                cols = ["method", "metric", "n", "mean_change", "mean_change_random", "effect", "effect_lo", "effect_hi",
                        "p_value", "rank", "rank_p", "floor"]
                print(e[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
