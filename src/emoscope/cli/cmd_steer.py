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
    from emoscope.cli._stage_cmd import lazy_arguments

    p = sub.add_parser("steer", help="steer generation with a vector; sweep layers x strengths against controls",
                       description="Run the steer stage: steered multi-token generation over layers x strengths, "
                       "with strength 0, the negated vector and random matched-norm vectors in the same batch.")
    lazy_arguments(p, _arguments)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    from emoscope.cli._stage_cmd import (
        add_allow_other_model,
        add_option,
        add_run_arguments,
        allow_negative_lists,
        count_or_all,
        floats,
        ints,
        layers,
    )
    from emoscope.steering.stage import DEFAULT_DATASET
    from emoscope.steering.stage import SteerOptions as O
    from emoscope.vectors.units import STEERING_UNITS

    def words(text: str) -> list[str]:
        return [w.strip() for w in text.split(",") if w.strip()]

    p.add_argument("--model", required=True, help="embedded alias, local directory, .gguf file or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    add_option(src, "steer", O, "vector", help="a ConceptVector .safetensors file")
    add_option(src, "steer", O, "emotion", help="fit a difference-of-means vector for this class of --dataset instead")
    add_allow_other_model(p, "steer", O)
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"dataset for --emotion: built-in name or JSONL/CSV path (default: {DEFAULT_DATASET})")
    add_option(p, "steer", O, "baseline", metavar="LABEL|all",
               shown="'neutral' when the dataset has it, else 'all' (the mean of all classes)",
               help="class the --emotion vector is measured against, or 'all'")
    add_option(p, "steer", O, "position", help="extraction position for --emotion (mean_from:1: all tokens but the first)")
    add_option(p, "steer", O, "layers", type=layers, help="layers to steer at, e.g. 10,15,20 or relative depths 0.5")
    add_option(p, "steer", O, "strengths", type=floats, help="comma-separated strengths; see --unit")
    add_option(p, "steer", O, "unit", choices=STEERING_UNITS,
               help="token_norm: strength in mean per-token residual norms at the layer (first token left out); "
               "token_norm_robust: the same without massive dimensions; raw: x vector")
    add_option(p, "steer", O, "positions", help="all | prompt | generated | from:K")
    add_option(p, "steer", O, "mode", choices=["add", "ablate_add"], help="add the vector, or ablate then add")
    add_option(p, "steer", O, "prompts", help="built-in dataset name, .txt, .jsonl or .csv")
    add_option(p, "steer", O, "n_prompts", type=count_or_all, help="use only the first N prompts ('all': every one)")
    add_option(p, "steer", O, "chat", "--no-chat", action="store_false",
               help="do not wrap prompts in the chat template")
    add_option(p, "steer", O, "max_new_tokens", type=int, help="tokens generated per prompt")
    add_option(p, "steer", O, "n_random", type=int, help="random matched-norm control vectors (per kind)")
    add_option(p, "steer", O, "random_kind", choices=["isotropic", "covariance", "both"],
               help="random directions: isotropic, covariance-matched to neutral activations, or both")
    add_option(p, "steer", O, "seeds", type=ints, help="sampling seeds, comma-separated (greedy uses the first)")
    add_option(p, "steer", O, "temperature", type=float, help="0 = greedy")
    add_option(p, "steer", O, "top_p", type=float, help="nucleus sampling")
    add_option(p, "steer", O, "top_k", type=int, help="top-k sampling (0: off)")
    add_option(p, "steer", O, "scorers", type=words,
               help="comma-separated scorers; classifier:/path/to/model adds a text classifier")
    add_option(p, "steer", O, "target", shown="from the vector's name, e.g. nrc_joy", help="target score column")
    add_option(p, "steer", O, "batch_rows", type=int, help="rows per decode batch (memory)")
    add_option(p, "steer", O, "alpha", type=float, help="level of the held-out test behind the claim (the cell is chosen on the other prompts)")
    add_run_arguments(p, seed_flags=("--seed", "--random-state"))
    allow_negative_lists(p)


def build_sections(args: argparse.Namespace) -> dict[str, dict]:
    from emoscope.cli._stage_cmd import section

    return {"steer": section(args, "steer")}


def run(args: argparse.Namespace) -> int:
    from emoscope.cli._stage_cmd import print_notes, print_outcome, run_stages

    dataset = None if getattr(args, "steer.vector") else args.dataset
    rd = run_stages(args, "steer", ["steer"], build_sections(args), model=args.model, dataset=dataset)
    _print_summary(rd)
    print_notes(rd.root, "steer")
    print_outcome(rd.root)
    return 0


def _print_summary(rd) -> None:  # noqa: ANN001 - emoscope.core.rundir.RunDir
    """The success table and regime switches, read back from the run's tables."""
    import pandas as pd

    from emoscope.steering.regimes import regime_switches

    t = pd.read_csv(rd.tables / "steer_outputs.csv")
    s = pd.read_csv(rd.tables / "steer_success.csv")
    m = rd.read_manifest().stages["steer"].metrics
    base = t.loc[t.kind == "baseline", "target_score"].mean()
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
    for line in regime_switches(t):
        print("regimes, " + line)
