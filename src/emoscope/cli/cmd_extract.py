"""``emoscope extract``: residual-stream activations for your texts, as a one-stage run.

    emoscope extract --model smollm2-135m --texts prompts.txt --layers all --out runs/acts

``--dtype`` is the model's compute dtype, as in every command; ``--store-dtype`` is the dtype the
activations are stored in (until this release extract's ``--dtype`` was the storage dtype).

The activations are written to ``RUN/activations/`` (``activations.safetensors`` +
``manifest.json``, read back with ``emoscope.activations.Activations.load``), next to the norm
table and figure of the ``extract`` stage, the run's manifest, findings and ``report.html``.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_sections"]


def register(sub: argparse._SubParsersAction) -> None:
    from emoscope.cli.common import lazy_arguments

    p = sub.add_parser("extract", help="extract per-layer residual-stream activations (a one-stage run)",
                       description="Extract resid[l] for your texts into RUN/activations/ (safetensors + manifest) "
                       "as a one-stage run: RUN also gets the norm table and figure, a manifest and report.html.")
    lazy_arguments(p, _arguments)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    from emoscope.activations.stage import ExtractOptions as O
    from emoscope.cli.common import add_option, add_plain, add_run_arguments, add_shared

    add_plain(p, "--model", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    add_option(src, "extract", O, "texts", help="a .txt file (one text per line), or .jsonl/.csv with a 'text' column")
    add_plain(src, "--dataset")
    add_shared(p, "extract", O, "--layers")
    add_shared(p, "extract", O, "--position")
    add_shared(p, "extract", O, "--batch-size")
    add_shared(p, "extract", O, "--store-dtype", field="dtype")
    add_option(p, "extract", O, "padding_side", choices=["left", "right"], help="padding side of a batch")
    add_option(p, "extract", O, "cache", "--no-cache", action="store_false",
               help="do not read or write the activation cache ($EMOSCOPE_CACHE)")
    add_run_arguments(p, dtype_note="extract --dtype is now the compute dtype, as in every command; the storage "
                                    "dtype is --store-dtype")


def build_sections(args: argparse.Namespace) -> dict[str, dict]:
    from emoscope.cli.running import section

    return {"extract": {**section(args, "extract"), "save": True}}


def run(args: argparse.Namespace) -> int:
    from emoscope.activations.stage import SAVE_DIR
    from emoscope.cli.running import print_outcome, run_stages

    rd = run_stages(args, "extract", ["extract"], build_sections(args), model=args.model, dataset=args.dataset)
    rec = rd.read_manifest().stages["extract"]
    print(rec.summary.split("; ")[0])
    print(f"activations: {rd.root / SAVE_DIR}")
    print_outcome(rd.root)
    return 0
