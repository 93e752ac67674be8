"""``emoscope introspect``: concept-injection trials into a run directory.

    emoscope introspect --model smollm2-135m --concepts default --layers 0.3,0.5,0.67,0.8 \\
        --strengths 1,2,4,8,16 --out runs/intro1 [--free-text N] [--window before_trial] [--n-random K]
        [--random-kind isotropic|covariance|both] [--ablate refusal.safetensors]

The arguments become the ``introspect`` section of a one-stage spec, run like ``emoscope run``:
the run directory gets the spec, a manifest, tables, figures, findings and ``report.html``.
Every default is the stage's (``IntrospectOptions``).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_spec"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from emoscope.cli.common import lazy_arguments

    p = subparsers.add_parser(
        "introspect",
        help="concept injection: detection vs control questions vs random vectors, by logit differences",
        description="Inject concept vectors over a window of a trial prompt and measure the yes-minus-no "
        "logit difference on the detection question and on control questions at the same layer and strength, "
        "against no injection and random vectors of the same norm.",
    )
    lazy_arguments(p, _arguments)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    from emoscope.cli.common import (
        add_allow_other_model,
        add_generation,
        add_option,
        add_plain,
        add_random_controls,
        add_run_arguments,
        add_shared,
        allow_negative_lists,
        words,
    )
    from emoscope.introspection.stage import IntrospectOptions as O

    add_plain(p, "--model", required=True)
    add_option(p, "introspect", O, "concepts", type=words,
               help="'default' (built-in list), a word-list file (.txt/.jsonl/.csv) or comma-separated words")
    add_option(p, "introspect", O, "baseline_words", type=words, help="'default' or a word-list file")
    add_option(p, "introspect", O, "controls", help="control-question set name or file")
    add_shared(p, "introspect", O, "--layers")
    add_shared(p, "introspect", O, "--strengths")
    add_shared(p, "introspect", O, "--unit")
    add_option(p, "introspect", O, "window", choices=["before_trial", "prompt_start", "generation_only"],
               help="where the vector is added (before_trial: from the blank line before 'Trial 1')")
    add_random_controls(p, "introspect", O)
    add_option(p, "introspect", O, "n_splits", type=int,
               help="seeds of the concept split behind the seed-spread control (at least 3)")
    add_option(p, "introspect", O, "free_text", type=int, metavar="N",
               help="also sample N answers per detection cell and grade them by rules (slow)")
    add_generation(p, "introspect", O)
    add_option(p, "introspect", O, "prefill", help="assistant prefill appended after the generation prompt")
    add_option(p, "introspect", O, "focus_layer", type=int, shown="nearest 2/3 depth",
               help="layer for the logit lens and heads")
    add_option(p, "introspect", O, "focus_strength", type=float, shown="the middle strength",
               help="strength for lens, heads and findings")
    add_option(p, "introspect", O, "heads", "--no-heads", action="store_false",
               help="skip the eager-attention pass for per-head attention")
    add_option(p, "introspect", O, "n_boot", type=int, help="bootstrap resamples for the intervals")
    add_shared(p, "introspect", O, "--batch-size")
    add_option(p, "introspect", O, "ablate", metavar="FILE",
               help="a ConceptVector .safetensors file (e.g. a refusal direction): every cell also runs with its "
                    "projection removed at the injected layer (conditions '+ablated', table introspect_ablation)")
    add_allow_other_model(p, "introspect", O)
    add_option(p, "introspect", O, "claim", help="a claim to record with the findings (the audit judges it)")
    add_run_arguments(p)
    allow_negative_lists(p)


def build_spec(args: argparse.Namespace):  # noqa: ANN201 - emoscope.runs.Spec
    """The one-stage spec equivalent to the command line."""
    from emoscope.cli.running import make_spec, section

    return make_spec(args, "introspect", ["introspect"], {"introspect": section(args, "introspect")},
                     model=args.model)


def run(args: argparse.Namespace) -> int:
    from emoscope.cli.running import print_notes, print_outcome, run_built

    rd = run_built(args, build_spec(args))
    _print_table(rd.root)
    print_notes(rd.root, "introspect")
    print_outcome(rd.root)
    return 0


def _print_table(root) -> None:  # noqa: ANN001
    import pandas as pd

    path = root / "tables" / "introspect_summary.csv"
    if not path.exists():
        return
    s = pd.read_csv(path)
    cols = [c for c in ("condition", "layer", "strength", "n", "detection_shift", "control_shift", "score",
                        "score_lo", "score_hi", "detection_p_yes") if c in s]
    print("shift in logit(yes) - logit(no) from no injection; score = detection shift - control shift")
    print(s[cols].to_string(index=False, float_format=lambda x: f"{x:+.3f}"))
