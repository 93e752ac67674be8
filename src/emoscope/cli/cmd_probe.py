"""``emoscope probe``: per-layer probes with controls on, as a run.

It is a run of ``extract`` + ``vectors`` + ``probe`` into a run directory (spec, manifest,
tables, fitted vectors, figures, findings and report.html), so ``emoscope audit`` and
``emoscope report`` work on its output like on any run.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_sections"]


def register(sub: argparse._SubParsersAction) -> None:
    from emoscope.cli.common import lazy_arguments

    p = sub.add_parser("probe", help="per-layer probes with shuffled-label, length and bag-of-words controls",
                       description="Extract activations, fit vectors and probe every layer with its controls, as one "
                       "run (extract -> vectors -> probe) into a run directory.")
    lazy_arguments(p, _arguments)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    from emoscope.activations.stage import ExtractOptions
    from emoscope.cli.common import add_option, add_plain, add_run_arguments, add_shared
    from emoscope.probing.stage import ProbeOptions
    from emoscope.vectors.stage import VectorOptions

    add_plain(p, "--model", required=True)
    add_plain(p, "--dataset", required=True)
    add_shared(p, "extract", ExtractOptions, "--layers")
    add_shared(p, "extract", ExtractOptions, "--position")
    add_shared(p, "extract", ExtractOptions, "--batch-size")
    add_option(p, "probe", ProbeOptions, "n_folds", "--folds", type=int, help="cross-validation folds")
    add_shared(p, "probe", ProbeOptions, "--seeds")
    add_shared(p, "probe", ProbeOptions, "--n-permutations", old=("--permutations",))
    add_option(p, "probe", ProbeOptions, "heldout", type=float,
               help="share of texts held out from choosing the layer (0: none)")
    add_option(p, "probe", ProbeOptions, "transfer", metavar="DATASET",
               help="a second dataset: the probe fitted here is scored on the classes both share (a control)")
    add_option(p, "vectors", VectorOptions, "method", choices=["diff_means", "pca_diff", "probe", "token_diff"],
               help="estimator for the saved vectors")
    add_shared(p, "vectors", VectorOptions, "--baseline",
               shown="'neutral' when the dataset has it, else 'all' (the mean of all classes)")
    add_run_arguments(p)


def build_sections(args: argparse.Namespace) -> dict[str, dict]:
    from emoscope.cli.running import section

    return {stage: section(args, stage) for stage in ("extract", "vectors", "probe")}


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from emoscope.cli.running import print_notes, print_outcome, run_stages

    rd = run_stages(args, "probe", ["extract", "vectors", "probe"], build_sections(args), model=args.model,
                    dataset=args.dataset)
    table = pd.read_csv(rd.tables / "probe_layers.csv")
    cols = [c for c in ("layer", "rel_depth", "acc", "acc_lo", "acc_hi", "shuffled_acc", "perm_p_holm",
                        "random_dir_acc", "seed_sd", "selectivity") if c in table]
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    base = pd.read_csv(rd.tables / "probe_baselines.csv")
    print(base.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print_notes(rd.root, "vectors")
    print_notes(rd.root, "probe")
    print_outcome(rd.root)
    return 0
