"""``emoscope patch``: multi-token activation patching into a run directory.

    emoscope patch --model smollm2-135m --source emotions-basic:anger --target neutral-starts \\
        --layers 0.3,0.5,0.7 --positions last --max-new-tokens 32 --out runs/p1
        [--pairing per_target] [--positions last,all,window:4] [--generated] [--neutral DATASET:CLASS]

The arguments become the ``patch`` section of a one-stage spec, run like ``emoscope run``: the run
directory gets the spec, a manifest, tables, figures, findings and ``report.html``. Every default
is the stage's (``PatchOptions``).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_sections"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from emoscope.cli._stage_cmd import lazy_arguments

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
    from emoscope.cli._stage_cmd import add_option, add_run_arguments, count_or_all, layers
    from emoscope.patching.stage import PatchOptions as O

    def words(text: str) -> list[str]:
        return [w.strip() for w in text.split(",") if w.strip()]

    p.add_argument("--model", required=True, help="embedded alias, local directory, .gguf file or hub id")
    add_option(p, "patch", O, "source", required=True, metavar="DATASET:CLASS", shown="none, required",
               help="source class (its mean, or one text per target with --pairing per_target), e.g. "
                    "emotions-basic:anger")
    add_option(p, "patch", O, "pairing", choices=["class_mean", "per_target"],
               help="class_mean: the mean of the class's states; per_target: source i for target i, cycling")
    add_option(p, "patch", O, "n_sources", type=count_or_all, help="use only the first N source texts ('all': every one)")
    add_option(p, "patch", O, "neutral", metavar="DATASET[:CLASS]|auto|none",
               help="neutral-source control: auto = the source dataset's 'neutral' class, else neutral-corpus")
    add_option(p, "patch", O, "targets", "--target", "--targets", metavar="PROMPTS",
               help="target prompts: built-in dataset name, .txt, .jsonl or .csv")
    add_option(p, "patch", O, "n_targets", type=count_or_all, help="use only the first N target prompts ('all')")
    add_option(p, "patch", O, "layers", type=layers, help="layers to patch (one cell each), e.g. 9,15 or 0.3,0.5")
    add_option(p, "patch", O, "positions", type=words,
               help="prompt positions, comma-separated cells: last | all | window:K (the last K prompt tokens), "
                    "aligned from the end")
    add_option(p, "patch", O, "generated", action="store_true",
               help="also write the source's last-token state at every generated position")
    add_option(p, "patch", O, "chat", "--no-chat", action="store_false",
               help="do not wrap sources and targets in the chat template")
    add_option(p, "patch", O, "max_new_tokens", type=int, help="tokens generated per row")
    add_option(p, "patch", O, "n_random", type=int, help="random patches of the same norm per cell")
    add_option(p, "patch", O, "random_kind", choices=["isotropic", "covariance", "both"],
               help="random patch directions: isotropic, covariance-matched to neutral activations, or both")
    add_option(p, "patch", O, "self_rows", "--no-self-rows", action="store_false",
               help="skip the self-patch (strength 0) rows")
    add_option(p, "patch", O, "scorers", type=words,
               help="comma-separated scorers; classifier:/path/to/model adds a text classifier")
    add_option(p, "patch", O, "target_score", shown="from the source class, e.g. nrc_anger",
               help="scorer column the patch should raise")
    add_option(p, "patch", O, "batch_rows", type=int, help="rows per decode batch (memory)")
    add_option(p, "patch", O, "alpha", type=float,
               help="level of the held-out test behind the claim (the cell is chosen on the other prompts)")
    add_run_arguments(p, seed_flags=("--seed", "--random-state"))


def build_sections(args: argparse.Namespace) -> dict[str, dict]:
    from emoscope.cli._stage_cmd import section

    return {"patch": section(args, "patch")}


def run(args: argparse.Namespace) -> int:
    from emoscope.cli._stage_cmd import print_notes, print_outcome, run_stages

    rd = run_stages(args, "patch", ["patch"], build_sections(args), model=args.model)
    _print_summary(rd)
    print_notes(rd.root, "patch")
    print_outcome(rd.root)
    return 0


def _print_summary(rd) -> None:  # noqa: ANN001 - emoscope.core.rundir.RunDir
    """The cell table, read back from the run: the multi-token effect beside the step-1 view."""
    import pandas as pd

    t = pd.read_csv(rd.tables / "patch_outputs.csv")
    c = pd.read_csv(rd.tables / "patch_cells.csv")
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
