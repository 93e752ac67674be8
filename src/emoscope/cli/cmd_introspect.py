"""``emoscope introspect``: concept-injection trials into a run directory.

    emoscope introspect --model smollm2-135m --concepts default --layers 0.3,0.5,0.67,0.8 \\
        --strengths 1,2,4,8,16 --out runs/intro1 [--free-text N] [--window before_trial] [--n-random K]

The arguments become the ``introspect`` section of a one-stage spec, run like ``emoscope run``:
the run directory gets the spec, a manifest, tables, figures, findings and ``report.html``.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run", "build_spec"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "introspect",
        help="concept injection: detection vs control questions vs random vectors, by logit differences",
        description="Inject concept vectors over a window of a trial prompt and measure the yes-minus-no "
        "logit difference on the detection question and on control questions at the same layer and strength, "
        "against no injection and random vectors of the same norm.",
    )
    p.add_argument("--model", required=True, help="embedded alias, local directory, .gguf file or hub id")
    p.add_argument("--concepts", default="default",
                   help="'default' (built-in list), a word-list file (.txt/.jsonl/.csv) or comma-separated words")
    p.add_argument("--baseline-words", default="default", help="'default' or a word-list file")
    p.add_argument("--controls", default="control-questions", help="control-question set name or file")
    p.add_argument("--layers", default="0.3,0.5,0.67,0.8",
                   help="layers to inject at: '12,18', '0-14' or relative depths '0.5' (default 0.3,0.5,0.67,0.8)")
    p.add_argument("--strengths", default="1,2,4,8,16",
                   help="strengths in units of the mean residual norm at the layer (default 1,2,4,8,16)")
    p.add_argument("--window", default="before_trial", choices=["before_trial", "prompt_start", "generation_only"],
                   help="where the vector is added (default: from the blank line before 'Trial 1')")
    p.add_argument("--n-random", type=int, default=4, metavar="K", help="random vectors of the same norm (default 4)")
    p.add_argument("--free-text", type=int, default=0, metavar="N",
                   help="also sample N answers per detection cell and grade them by rules (slow)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="free-text answer length (default 40)")
    p.add_argument("--temperature", type=float, default=1.0, help="free-text sampling temperature (default 1)")
    p.add_argument("--prefill", default=None, help="assistant prefill appended after the generation prompt")
    p.add_argument("--focus-layer", type=int, default=None, help="layer for the logit lens and heads (default: nearest 2/3 depth)")
    p.add_argument("--focus-strength", type=float, default=None, help="strength for lens, heads and findings (default: middle)")
    p.add_argument("--no-heads", action="store_true", help="skip the eager-attention pass for per-head attention")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (must be new or empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in DIR")
    p.set_defaults(func=run)


def _floats(text: str, what: str) -> list[float]:
    from emoscope.errors import InputError

    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise InputError(f"--{what} is empty")
    return vals


def _layers(text: str) -> str | list[int | float]:
    from emoscope.errors import InputError

    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not parts:
        raise InputError("--layers is empty")
    if any("-" in x[1:] for x in parts) or text.strip() == "all":
        return text  # ranges: the model resolves them
    try:
        return [float(x) if "." in x else int(x) for x in parts]
    except ValueError:
        raise InputError(f"--layers must be like '12,18', '0-14' or '0.5,0.67', got {text!r}") from None


def build_spec(args: argparse.Namespace):  # noqa: ANN201 - emoscope.runs.Spec
    """The one-stage spec equivalent to the command line."""
    from emoscope.errors import InputError
    from emoscope.runs import parse_spec

    if args.n_random < 0 or args.free_text < 0 or args.batch_size < 1:
        raise InputError("--n-random and --free-text must be >= 0, --batch-size >= 1")
    concepts: str | list[str] = args.concepts
    if "," in concepts:
        concepts = [w.strip() for w in concepts.split(",") if w.strip()]
    section = {
        "concepts": concepts, "baseline_words": args.baseline_words, "controls": args.controls,
        "layers": _layers(args.layers), "strengths": _floats(args.strengths, "strengths"),
        "window": args.window, "n_random": args.n_random, "prefill": args.prefill,
        "batch_size": args.batch_size, "focus_layer": args.focus_layer, "focus_strength": args.focus_strength,
        "heads": not args.no_heads, "free_text": args.free_text, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
    }
    return parse_spec({"name": "introspect", "description": "emoscope introspect (command line)",
                       "model": args.model, "seed": args.seed, "stages": ["introspect"], "introspect": section},
                      source="emoscope introspect")


def run(args: argparse.Namespace) -> int:
    from emoscope._io import ensure_writable_dir
    from emoscope.cli.cmd_run import print_outcome, stage_logger
    from emoscope.introspection.concepts import load_words
    from emoscope.runs import run_spec

    spec = build_spec(args)
    opts = spec.options("introspect")
    # cheap checks before a model loads: word lists and the output directory
    load_words(opts.concepts, "concepts")
    load_words(opts.baseline_words, "baseline-words")
    ensure_writable_dir(args.out)
    rd = run_spec(spec, args.out, resume=args.resume, log=stage_logger(args.quiet))
    _print_table(rd.root)
    print_outcome(rd.root)
    return 0


def _print_table(root) -> None:  # noqa: ANN001
    import pandas as pd

    path = root / "tables" / "introspect_summary.csv"
    if not path.exists():
        return
    s = pd.read_csv(path)
    cols = ["condition", "layer", "strength", "n", "detection_shift", "control_shift", "score", "score_lo",
            "score_hi", "detection_p_yes"]
    print("shift in logit(yes) - logit(no) from no injection; score = detection shift - control shift")
    print(s[cols].to_string(index=False, float_format=lambda x: f"{x:+.3f}"), file=sys.stdout)
