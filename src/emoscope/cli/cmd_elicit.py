"""``emoscope elicit``: the model writes short texts for each emotion, saved as a dataset, as a run.

    emoscope elicit --model smollm2-135m --emotions joy,sadness,anger,fear --n 30 --seed 0 --out runs/gen1

It runs the ``elicit`` stage into ``--out``: ``RUN/elicit/elicited.jsonl`` and
``RUN/elicit/elicited.card.md`` (``emoscope.elicit.save_elicited``), which ``--dataset
RUN/elicit/elicited.jsonl`` reads like any dataset, the tables ``elicit_counts`` and
``elicit_texts``, a manifest and ``report.html``. Every emotion and ``neutral`` are generated in
one batched decode seeded by ``--seed``. Every default and help text is the stage's
(``ElicitOptions``). Bad input (duplicate or empty emotion names, ``--n 0``, a chat style on a
model known to have no chat template) is one line, exit code 2, before the run directory is
written; a failure that needs the model (every text of an emotion rejected) writes no dataset.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run", "build_sections"]


def register(sub: argparse._SubParsersAction) -> None:
    from emoscope.cli.common import lazy_arguments

    p = sub.add_parser("elicit", help="the model writes texts for each emotion (a generation-based dataset)",
                       description="Generate n texts per emotion (and n neutral ones) in one seeded batched decode; "
                       "texts that name the emotion are rejected; save the rest as RUN/elicit/NAME.jsonl with a card, "
                       "as a one-stage run.")
    lazy_arguments(p, _arguments)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    from emoscope.cli.common import SHARED, add_generation, add_option, add_plain, add_run_arguments
    from emoscope.elicit.stage import ElicitOptions as O

    add_plain(p, "--model", required=True)
    add_option(p, "elicit", O, "emotions")
    add_option(p, "elicit", O, "n", type=int, metavar="N")
    add_option(p, "elicit", O, "oversample", type=float)
    add_generation(p, "elicit", O)
    style = add_option(p, "elicit", O, "style", choices=["auto", "chat", "completion"])
    p.add_argument("--no-chat", dest=style.dest, action="store_const", const="completion",
                   help=SHARED["--no-chat"].help + " (default: as --style says)")
    add_option(p, "elicit", O, "name")
    add_run_arguments(p)


def build_sections(args: argparse.Namespace) -> dict[str, dict]:
    from emoscope.cli.running import section

    return {"elicit": section(args, "elicit")}


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from emoscope.cli.running import print_notes, print_outcome, run_stages

    rd = run_stages(args, "elicit", ["elicit"], build_sections(args), model=args.model)
    counts = pd.read_csv(rd.tables / "elicit_counts.csv")
    print(counts.to_string(index=False))
    texts = pd.read_csv(rd.tables / "elicit_texts.csv", keep_default_na=False)
    kept = texts[texts.status == "kept"]
    for _, g in kept.groupby("class", sort=False):
        for _, r in g.head(3).iterrows():
            print(f"  [{r['class']}] {r['text']}")
    print_notes(rd.root, "elicit")
    print_outcome(rd.root)
    return 0
