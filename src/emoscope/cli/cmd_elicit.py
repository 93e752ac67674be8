"""``emoscope elicit``: the model writes short texts for each emotion; saved as a dataset with a card.

    emoscope elicit --model smollm2-135m --emotions joy,sadness,anger,fear --n 30 --seed 0 --out runs/gen1

Writes ``OUT/elicited.jsonl`` and ``OUT/elicited.card.md`` (``emoscope.elicit.save_elicited``), which
``--dataset OUT/elicited.jsonl`` reads like any dataset. Every emotion and ``neutral`` are generated
in one batched, seeded decode. Bad input (duplicate or empty emotion names, ``--n 0``, chat
style on a model without a chat template, every text of an emotion rejected) is one line, exit
code 2, and nothing is written.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("elicit", help="the model writes texts for each emotion (a generation-based dataset)",
                       description="Generate n texts per emotion (and n neutral ones) in one seeded batched decode; "
                       "texts that name the emotion are rejected; save the rest as OUT/NAME.jsonl with a card.")
    p.add_argument("--model", required=True, help="embedded alias, local directory or .gguf file")
    p.add_argument("--emotions", required=True, help="comma-separated emotion names, e.g. joy,sadness,anger")
    p.add_argument("--n", type=int, default=30, help="texts kept per emotion at most (default 30)")
    p.add_argument("--oversample", type=float, default=1.0,
                   help="generate ceil(n * oversample) per class and keep the first n that pass (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--style", choices=["auto", "chat", "completion"], default="auto",
                   help="chat template (instruct models), completion prompt (base models), or auto")
    p.add_argument("--name", default="elicited", help="file stem of the dataset (default elicited)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model-dtype", default=None, metavar="DTYPE",
                   help="model compute dtype, e.g. bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emoscope._io import ensure_writable_dir
    from emoscope.elicit.generate import check_request
    from emoscope.errors import InputError

    style = {"auto": "auto", "chat": True, "completion": False}[args.style]
    check_request(None, args.emotions, args.n, args.max_new_tokens, style)  # before the model loads
    from emoscope.models.decode import Sampling

    if Sampling(args.temperature, 0, args.top_p).greedy and args.n > 1:
        raise InputError("--temperature 0 is greedy: every text of an emotion would be the same; use e.g. 0.9")
    if not 1.0 <= args.oversample <= 20.0:
        raise InputError(f"--oversample must be between 1 and 20, got {args.oversample}")
    if not args.name or not all(ch.isalnum() or ch in "-_." for ch in args.name):
        raise InputError(f"--name {args.name!r} must be letters, digits, '-', '_' or '.'")
    from emoscope.models.loading import resolve_dtype

    resolve_dtype(args.model_dtype, "cpu")  # an unknown dtype is one line, before anything is written
    ensure_writable_dir(args.out)

    import emoscope.models
    from emoscope._progress import is_quiet
    from emoscope.elicit import elicit, save_elicited

    model = emoscope.models.load_model(args.model, dtype=args.model_dtype)
    el = elicit(model, args.emotions, args.n, seed=args.seed, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=args.top_p, chat=style, oversample=args.oversample,
                progress=not is_quiet())
    path = save_elicited(el, args.out, args.name)
    counts = el.rejection_counts()
    print(f"{model.name}: {len(el.kept)} of {len(el.labels)} texts kept ({el.settings['style']} prompt, seed {args.seed}, "
          f"{el.new_tokens} new tokens in {el.seconds:.1f} s) -> {path}")
    cols = ["generated", "kept", "forbidden", "empty", "duplicate", "surplus"]
    print(f"{'class':<14}" + "".join(f"{c:>10}" for c in cols))
    for lab, c in counts.items():
        print(f"{lab:<14}" + "".join(f"{c[k]:>10}" for k in cols))
    shown: dict[str, int] = {}
    for r in el.kept:
        lab = el.labels[r]
        if shown.get(lab, 0) < 3:
            shown[lab] = shown.get(lab, 0) + 1
            print(f"  [{lab}] {el.texts[r]}")
    return 0
