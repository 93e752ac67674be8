"""``emoscope probe``: per-layer probes with controls on, as a one-stage run.

It is a run of ``extract`` + ``vectors`` + ``probe`` into a run directory (spec, manifest,
tables, fitted vectors, figures, findings and report.html), so ``emoscope audit`` and
``emoscope report`` work on its output like on any run.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="per-layer probes with shuffled-label, length and bag-of-words controls")
    p.add_argument("--model", required=True, help="embedded alias, local directory, .gguf file or hub id")
    p.add_argument("--dataset", required=True, help="built-in dataset name or a JSONL/CSV path")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--layers", default="all")
    p.add_argument("--position", default="last", help="last | mean | mean_from:K | token:I")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated split/probe seeds")
    p.add_argument("--permutations", type=int, default=100, help="label permutations at the peak layer")
    p.add_argument("--method", default="diff_means", choices=["diff_means", "pca_diff", "probe"],
                   help="estimator for the saved vectors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from emoscope.activations import parse_position
    from emoscope.cli.cmd_run import print_outcome, stage_logger
    from emoscope.errors import InputError
    from emoscope.runs import run_spec
    from emoscope.runs.spec import parse_spec

    parse_position(args.position)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    spec = parse_spec({
        "name": "probe", "model": args.model, "dataset": args.dataset, "seed": args.seed,
        "stages": ["extract", "vectors", "probe"],
        "extract": {"layers": args.layers, "position": args.position, "batch_size": args.batch_size},
        "vectors": {"method": args.method},
        "probe": {"n_folds": args.folds, "seeds": seeds, "n_permutations": args.permutations},
    }, source="emoscope probe")
    rd = run_spec(spec, args.out, resume=args.resume, log=stage_logger(args.quiet))
    table = pd.read_csv(rd.tables / "probe_layers.csv")
    cols = [c for c in ("layer", "rel_depth", "acc", "acc_lo", "acc_hi", "shuffled_acc", "perm_p_holm",
                        "random_dir_acc", "seed_sd", "selectivity") if c in table]
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    base = pd.read_csv(rd.tables / "probe_baselines.csv")
    print(base.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    manifest = rd.read_manifest()
    rec = manifest.stages.get("probe")
    if rec is not None and getattr(rec, "summary", ""):
        print(rec.summary)
    print_outcome(rd.root)
    return 0
