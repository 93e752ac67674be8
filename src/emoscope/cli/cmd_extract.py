"""``emoscope extract``: residual-stream activations for your texts, cached on disk."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract per-layer residual-stream activations")
    p.add_argument("--model", required=True, help="embedded alias, local directory, .gguf file or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--texts", help="a .txt file (one text per line) or .jsonl with a 'text' field")
    src.add_argument("--dataset", help="a built-in dataset name or a JSONL/CSV dataset path")
    p.add_argument("--layers", default="all", help="'all', '0,5,10', '0-14' or relative depths '0.5' (default: all)")
    p.add_argument("--position", default="last", help="last | mean | mean_from:K | token:I | all (default: last)")
    p.add_argument("--out", required=True, help="output directory (activations.safetensors + manifest.json)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="storage dtype")
    p.add_argument("--model-dtype", default=None, help="model compute dtype (default float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--padding-side", default="right", choices=["left", "right"])
    p.add_argument("--no-cache", action="store_true", help="do not read or write the activation cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emoscope._io import ensure_writable_dir
    from emoscope._progress import is_quiet
    from emoscope.activations import extract, parse_position
    from emoscope.datasets import load_dataset, load_texts
    from emoscope.errors import InputError
    from emoscope.models import load_model

    # Check everything cheap before loading a model.
    parse_position(args.position)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    ensure_writable_dir(args.out)
    texts = load_texts(args.texts) if args.texts else load_dataset(args.dataset).texts
    model = load_model(args.model, dtype=args.model_dtype)
    acts = extract(model, texts, layers=args.layers, position=args.position, batch_size=args.batch_size,
                   dtype=args.dtype, padding_side=args.padding_side, cache=not args.no_cache, out=args.out,
                   progress=not is_quiet())
    hit = " (cache hit)" if acts.cache_hit else ""
    print(f"extracted {acts.n_texts} texts x {len(acts.layers)} layers at position {acts.position} "
          f"from {model.name}{hit} -> {args.out}")
    return 0
