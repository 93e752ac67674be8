"""``emoscope heads {screen,ablate,patch}``: attention heads against a vector, as one-stage runs.

    emoscope heads screen --model smollm2-135m --vector runs/v/vectors/anger.safetensors \\
        --dataset emotions-basic --out runs/h1
    emoscope heads ablate --model smollm2-135m --heads top:8 --from runs/h1 --prompts neutral-starts --out runs/h2
    emoscope heads patch  --model smollm2-135m --heads top:8 --from runs/h1 \\
        --source emotions-basic:anger --target neutral-starts --out runs/h3

Each subcommand runs the ``heads`` stage with one mode (``ablate`` / ``patch`` with ``top:K`` and
no ``--from`` screen first, in the same run). ``--emotion CLASS`` fits a difference-of-means
vector on ``--dataset`` instead of ``--vector``. Every default is the stage's (``HeadsOptions``).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_sections", "modes_for"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from emoscope.cli._stage_cmd import lazy_arguments

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
    from emoscope.cli._stage_cmd import (
        add_allow_other_model,
        add_option,
        add_run_arguments,
        count_or_all,
        ints,
        layers,
    )
    from emoscope.heads.stage import DEFAULT_DATASET
    from emoscope.heads.stage import HeadsOptions as O

    def words(text: str) -> list[str]:
        return [w.strip() for w in text.split(",") if w.strip()]

    p.add_argument("--model", required=True, help="embedded alias, local directory, .gguf file or hub id")
    src = p.add_mutually_exclusive_group(required=(mode == "screen"))
    add_option(src, "heads", O, "vector", help="a ConceptVector .safetensors file",
               **({} if mode == "screen" else {"shown": "the vector of the --from screen, if any"}))
    add_option(src, "heads", O, "emotion", help="fit a difference-of-means vector for this class of --dataset instead")
    add_allow_other_model(p, "heads", O)
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"labelled dataset to screen on / fit --emotion on (default: {DEFAULT_DATASET})")
    add_option(p, "heads", O, "baseline", metavar="LABEL|all",
               shown="'neutral' when the dataset has it, else 'all'", help="class the emotion texts are contrasted with")
    add_option(p, "heads", O, "fit_position", help="extraction position when fitting an --emotion vector")
    add_option(p, "heads", O, "vector_layers", type=layers, help="layers an --emotion vector is fitted at")
    add_option(p, "heads", O, "layers", type=layers, help="blocks whose heads are screened")
    add_option(p, "heads", O, "direction_layer", type=int, metavar="L",
               shown="each head against its block's vector, or the next vector layer above",
               help="read every head against the vector of this one layer")
    add_option(p, "heads", O, "position", help="screening read position: last, token:I, mean, mean_from:K")
    add_option(p, "heads", O, "n_permutations", type=int, shown="enough for Holm over the heads to reach alpha/2",
               help="label permutations of the screening null")
    add_option(p, "heads", O, "alternative", choices=["greater", "less", "two-sided"],
               help="screening test and ranking direction")
    add_option(p, "heads", O, "screen_batch_size", type=int, help="texts per screening forward")
    if mode != "screen":
        add_option(p, "heads", O, "heads", help="top:K (of the screen), L.H,L.H or L:H")
        add_option(p, "heads", O, "from_run", "--from", metavar="RUN", help="a run directory with a heads screen")
        add_option(p, "heads", O, "n_random", type=int, metavar="K", help="random head sets of the same size")
        add_option(p, "heads", O, "random_match", choices=["layer", "band", "any"],
                   help="random heads: the same number per layer as the chosen ones (falling back to band), "
                        "the layers the chosen ones span (falling back to any), or any layer")
        flags = ("--target", "--prompts") if mode == "patch" else ("--prompts",)
        add_option(p, "heads", O, "prompts", *flags, help="generation prompts: built-in dataset, .txt, .jsonl or .csv")
        add_option(p, "heads", O, "n_prompts", type=count_or_all, help="use only the first N prompts ('all': every one)")
        add_option(p, "heads", O, "chat", "--no-chat", action="store_false", help="do not wrap prompts in the chat template")
        add_option(p, "heads", O, "max_new_tokens", type=int, help="tokens generated per prompt")
        add_option(p, "heads", O, "seeds", type=ints, help="sampling seeds (greedy uses the first)")
        add_option(p, "heads", O, "temperature", type=float, help="0 = greedy")
        add_option(p, "heads", O, "top_p", type=float, help="nucleus sampling")
        add_option(p, "heads", O, "top_k", type=int, help="top-k sampling (0: off)")
        add_option(p, "heads", O, "scorers", type=words, help="comma-separated steering scorers")
        add_option(p, "heads", O, "target", "--target-score", shown="from the emotion, e.g. nrc_anger",
                   help="target score column")
        add_option(p, "heads", O, "probe_layer", type=int, shown="the vector's deepest layer",
                   help="layer of the probe projection")
        add_option(p, "heads", O, "metrics", type=words, help="metrics the findings test (table columns)")
        add_option(p, "heads", O, "batch_rows", type=int, help="rows per decode batch (memory)")
        add_option(p, "heads", O, "alpha", type=float, help="level of the tests behind the claims")
    if mode == "ablate":
        add_option(p, "heads", O, "methods", type=words, help="zero and/or mean ablation")
        add_option(p, "heads", O, "positions", help="ablated columns: all | prompt | generated | from:K")
        add_option(p, "heads", O, "mean_texts", help="texts whose mean head outputs mean ablation writes")
    if mode == "patch":
        add_option(p, "heads", O, "source", required=True, metavar="DATASET:CLASS",
                   help="source prompts, e.g. emotions-basic:anger (or a dataset / text file)")
        add_option(p, "heads", O, "patch_tokens", type=int, help="last prompt tokens patched, aligned from the end")
    add_run_arguments(p, seed_flags=("--seed", "--random-state"))


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
    from emoscope.cli._stage_cmd import section

    return {"heads": {**section(args, "heads"), "modes": modes_for(args)}}


def run(args: argparse.Namespace) -> int:
    from emoscope.cli._stage_cmd import print_notes, print_outcome, run_stages

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
