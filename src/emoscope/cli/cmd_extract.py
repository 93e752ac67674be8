"""``emoscope extract``: residual-stream activations for your texts, as a one-stage run.

    emoscope extract --model smollm2-135m --texts prompts.txt --layers all --out runs/acts

The activations are written to ``RUN/activations/`` (``activations.safetensors`` +
``manifest.json``, read back with ``emoscope.activations.Activations.load``), next to the norm
table and figure of the ``extract`` stage, the run's manifest, findings and ``report.html``.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_sections"]


def register(sub: argparse._SubParsersAction) -> None:
    from emoscope.cli._stage_cmd import lazy_arguments

    p = sub.add_parser("extract", help="extract per-layer residual-stream activations (a one-stage run)",
                       description="Extract resid[l] for your texts into RUN/activations/ (safetensors + manifest) "
                       "as a one-stage run: RUN also gets the norm table and figure, a manifest and report.html.")
    lazy_arguments(p, _arguments)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    from emoscope.activations.stage import ExtractOptions as O
    from emoscope.cli._stage_cmd import add_option, add_run_arguments, layers

    p.add_argument("--model", required=True, help="embedded alias, local directory, .gguf file or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    add_option(src, "extract", O, "texts", help="a .txt file (one text per line), or .jsonl/.csv with a 'text' column")
    src.add_argument("--dataset", help="a built-in dataset name or a JSONL/CSV dataset path")
    add_option(p, "extract", O, "layers", type=layers, help="'all', '0,5,10', '0-14' or relative depths '0.5'")
    add_option(p, "extract", O, "position", help="last | mean | mean_from:K | token:I | all")
    add_option(p, "extract", O, "batch_size", type=int, help="texts per forward pass")
    add_option(p, "extract", O, "dtype", choices=["float32", "float16"], help="storage dtype")
    add_option(p, "extract", O, "padding_side", choices=["left", "right"], help="padding side of a batch")
    add_option(p, "extract", O, "cache", "--no-cache", action="store_false",
               help="do not read or write the activation cache ($EMOSCOPE_CACHE)")
    add_run_arguments(p)


def build_sections(args: argparse.Namespace) -> dict[str, dict]:
    from emoscope.cli._stage_cmd import section

    return {"extract": {**section(args, "extract"), "save": True}}


def run(args: argparse.Namespace) -> int:
    from emoscope.activations.stage import SAVE_DIR
    from emoscope.cli._stage_cmd import print_outcome, run_stages

    rd = run_stages(args, "extract", ["extract"], build_sections(args), model=args.model, dataset=args.dataset)
    rec = rd.read_manifest().stages["extract"]
    print(rec.summary.split("; ")[0])
    print(f"activations: {rd.root / SAVE_DIR}")
    print_outcome(rd.root)
    return 0
