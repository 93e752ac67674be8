"""``emoscope align``: one model's emotion geometry mapped onto another's, as a run.

A run of ``extract`` (per model) + ``crossmodel`` (optionally ``probe`` per model, for the
relative-depth comparison) into a run directory: maps fitted on neutral texts only, applied to
the emotion vectors, against a shuffled-pairing control, with the identification test, debiased
CKA and the emotion space. ``emoscope audit`` and ``emoscope report`` work on its output.

    emoscope align --models smollm2-135m gemma3-270m --dataset emotions-12 --out runs/al

``--models A B [C ...]``: every pair is compared, A first (until this release: ``--source A
--target B [C ...]``, which still works).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    from emoscope.cli.common import lazy_arguments

    p = sub.add_parser("align", help="map one model's emotion vectors onto another's (neutral-fitted, with controls)",
                       description="Fit linear maps between two models' residual streams on neutral texts only "
                       "(ridge, Procrustes, shuffled-pairing controls) and compare the mapped emotion vectors, as "
                       "one run (extract per model -> crossmodel) into a run directory.")
    lazy_arguments(p, _arguments)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    from emoscope.activations.stage import ExtractOptions
    from emoscope.cli.common import (
        add_option,
        add_plain,
        add_run_arguments,
        add_shared,
        floats,
        rename,
    )
    from emoscope.geometry.crossmodel_stage import CrossModelOptions

    add_plain(p, "--models", default=None)
    old = p.add_argument("--source", dest="old_source", default=None, help=argparse.SUPPRESS)
    rename(p, old, changed={"--source": "align --source A is now the first of --models A B (the old spelling "
                                        "works until the next release)"})
    old = p.add_argument("--target", dest="old_target", nargs="+", default=None, help=argparse.SUPPRESS)
    rename(p, old, changed={"--target": "align --target B is now the rest of --models A B (the old spelling "
                                        "works until the next release)"})
    add_plain(p, "--dataset", required=True)
    add_shared(p, "extract", ExtractOptions, "--position")
    add_shared(p, "extract", ExtractOptions, "--batch-size")
    add_option(p, "crossmodel", CrossModelOptions, "neutral", help="neutral texts the maps are fitted on")
    add_option(p, "crossmodel", CrossModelOptions, "depth", type=_depth,
               help="relative depth (0.5) or absolute layer (an int every model has) of the findings")
    add_option(p, "crossmodel", CrossModelOptions, "sweep_depths", type=floats, help="more relative depths for the tables")
    add_option(p, "crossmodel", CrossModelOptions, "neutral_share", type=float,
               help="variance share of the neutral PCs projected out for the denoised vectors")
    add_option(p, "crossmodel", CrossModelOptions, "valence_arousal", metavar="FILE",
               shown="the shipped NRC VAD ratings", help="CSV/JSON table with emotion, valence, arousal columns")
    p.add_argument("--probe", action="store_true", help="also probe every layer of each model (relative-depth peaks)")
    add_run_arguments(p)


def models_of(args: argparse.Namespace) -> list[str]:
    """The models to compare: ``--models``, or the old ``--source`` + ``--target``; at least two."""
    from emoscope.errors import InputError

    models = list(args.models or [])
    if args.old_source or args.old_target:
        if models:
            raise InputError("give the models once: --models A B (not with --source/--target)")
        models = [m for m in [args.old_source, *(args.old_target or [])] if m]
    if len(models) < 2:
        raise InputError(f"align compares models: give at least two, e.g. --models smollm2-135m gemma3-270m "
                         f"(got {len(models)})")
    return models


def _depth(text: str) -> int | float:
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a relative depth like 0.5 or a layer index, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from emoscope.cli.running import make_spec, print_notes, print_outcome, run_built, section

    stages = ["extract", "probe", "crossmodel"] if args.probe else ["extract", "crossmodel"]
    sections = {"extract": {"layers": "all", **section(args, "extract")}, "crossmodel": section(args, "crossmodel")}
    if args.probe:
        sections["probe"] = {}
    models = models_of(args)
    spec = make_spec(args, "align", stages, sections, model=models[0], models=models[1:], dataset=args.dataset)
    rd = run_built(args, spec)
    al = pd.read_csv(rd.tables / "alignment.csv")
    depth = spec.options("crossmodel").depth
    cols = [c for c in ("source", "target", "layer_a", "layer_b", "vectors", "map", "matched_cos2", "mismatched_cos2",
                        "subspace_overlap", "chance_overlap", "id_acc", "id_acc_centred", "chance_id", "r2_heldout")
            if c in al]
    with pd.option_context("display.width", 200, "display.max_rows", 200, "display.max_columns", 30):
        print(al[al.depth == depth][cols].to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="undefined"))
        if (rd.tables / "emotion_space.csv").is_file():
            es = pd.read_csv(rd.tables / "emotion_space.csv")
            print(es[es.depth == depth].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        if (rd.tables / "depth_peaks.csv").is_file():
            print(pd.read_csv(rd.tables / "depth_peaks.csv").to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print_notes(rd.root, "crossmodel")
    print_outcome(rd.root)
    return 0
