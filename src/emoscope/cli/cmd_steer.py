"""``emoscope steer``: steered generation swept over layers and strengths, with controls.

    emoscope steer --model smollm2-135m --vector runs/probe1/vectors/joy.safetensors \\
        --layers 10,15,20 --strengths -8,-4,-2,0,2,4,8 --prompts neutral-starts \\
        --max-new-tokens 48 --out runs/steer-joy

Without ``--vector``, ``--emotion joy --dataset emotions-basic`` fits a difference-of-means vector
on the fly. Writes outputs.csv (every generation with scores and regime), success.csv,
regimes.csv, dose_response.csv, summary.json and the figures into ``--out``.
"""

from __future__ import annotations

import argparse
import re


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("steer", help="steer generation with a vector; sweep layers x strengths against controls")
    p.add_argument("--model", required=True, help="embedded alias, local directory, .gguf file or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vector", help="a ConceptVector .safetensors file")
    src.add_argument("--emotion", help="fit a difference-of-means vector for this class of --dataset instead")
    p.add_argument("--dataset", default="emotions-basic", help="dataset for --emotion (default: emotions-basic)")
    p.add_argument("--position", default="mean_from:1",
                   help="extraction position for --emotion (default mean_from:1: all tokens but the first)")
    p.add_argument("--layers", required=True, help="layers to steer at, e.g. 10,15,20 or 0.5")
    p.add_argument("--strengths", default="-8,-4,-2,0,2,4,8",
                   help="comma-separated strengths (default -8,-4,-2,0,2,4,8); see --unit")
    p.add_argument("--unit", default="norm", choices=["norm", "raw"],
                   help="norm: strength in typical per-token residual norms at the layer (default); raw: x vector")
    p.add_argument("--positions", default="generated", help="all | prompt | generated | from:K (default generated)")
    p.add_argument("--mode", default="add", choices=["add", "ablate_add"])
    p.add_argument("--prompts", default="neutral-starts", help="built-in dataset name, .txt, .jsonl or .csv")
    p.add_argument("--n-prompts", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--n-random", type=int, default=3, help="random matched-norm control vectors (default 3)")
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument("--seeds", default="0", help="sampling seeds, comma-separated (greedy uses the first)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--scorers", default="nrc,vader,perplexity,repetition,script",
                   help="comma-separated scorers; classifier:/path/to/model adds a text classifier")
    p.add_argument("--target", default=None, help="target score column (default from the vector's name, e.g. nrc_joy)")
    p.add_argument("--batch-rows", type=int, default=256, help="rows per decode batch (memory)")
    p.add_argument("--out", required=True, help="output directory")
    # "--strengths -8,-4,2" must read as a value, not an option: argparse only takes single
    # negative numbers as values, so widen its matcher to comma lists of numbers.
    p._negative_number_matcher = re.compile(r"^-\d*\.?\d+([eE][-+]?\d+)?(,\s*-?\d*\.?\d+([eE][-+]?\d+)?)*,?$")
    p.set_defaults(func=run)


def _numbers(text: str, what: str, cast=float) -> list:
    from emoscope.errors import InputError

    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(cast(part))
        except ValueError:
            raise InputError(f"{what} must be comma-separated numbers; {part!r} is not a number") from None
    if not out:
        raise InputError(f"{what} is empty; give e.g. -4,-2,0,2,4")
    return out


def _fit_vector(model, dataset: str, emotion: str, layers: list[int], position: str):
    import numpy as np

    from emoscope.activations import extract
    from emoscope.datasets import load_dataset
    from emoscope.errors import InputError
    from emoscope.vectors import ConceptVector, DiffMeans

    ds = load_dataset(dataset)
    if emotion not in ds.classes:
        raise InputError(f"--emotion {emotion!r} is not a class of {dataset} (classes: {', '.join(ds.classes)})")
    acts = extract(model, ds.texts, layers, position=position, progress=False)
    labels = np.asarray(ds.labels)
    vecs = {layer: DiffMeans(emotion).fit(acts.get(layer), labels).vector_.astype(np.float32) for layer in layers}
    return ConceptVector(emotion, vecs, {"method": "diff_means", "baseline": "neutral", "dataset": dataset,
                                         "position": position, "model": model.name})


def run(args: argparse.Namespace) -> int:
    from emoscope._io import ensure_writable_dir
    from emoscope._progress import is_quiet
    from emoscope.datasets import load_texts
    from emoscope.errors import InputError
    from emoscope.models import load_model
    from emoscope.steering import SteeringSweep, parse_window
    from emoscope.vectors import ConceptVector

    # Everything cheap is checked before the model loads.
    strengths = _numbers(args.strengths, "--strengths")
    seeds = _numbers(args.seeds, "--seeds", int)
    parse_window(args.positions)
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    prompts = [t for t in load_texts(args.prompts) if t.strip()]
    if args.n_prompts is not None:
        if args.n_prompts < 1:
            raise InputError(f"--n-prompts must be at least 1, got {args.n_prompts}")
        prompts = prompts[: args.n_prompts]
    if not prompts:
        raise InputError(f"no prompts in {args.prompts}; give a dataset name or a file with one prompt per line")
    vector = ConceptVector.load(args.vector) if args.vector else None
    out = ensure_writable_dir(args.out)
    scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]

    model = load_model(args.model)
    layers = model.resolve_layers(args.layers)
    if vector is None:
        vector = _fit_vector(model, args.dataset, args.emotion, layers, args.position)
    elif vector.d != model.d_model:
        raise InputError(f"vector {vector.name!r} has d_model={vector.d} but {model.name} has d_model={model.d_model}; "
                         "use a vector fitted on this model")
    sweep = SteeringSweep(model, vector, layers, strengths, prompts, seeds, args.max_new_tokens,
                          positions=args.positions, mode=args.mode, unit=args.unit, n_random=args.n_random,
                          random_state=args.random_state, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, chat=not args.no_chat and "auto", batch_rows=args.batch_rows,
                          scorers=scorers, target=args.target, progress=not is_quiet())
    result = sweep.run()
    if result.meta.get("unit_norms"):  # the vector carries the strength unit it was run with
        norms = {**(vector.meta.get("token_norm") or {}), **result.meta["unit_norms"]}
        vector = ConceptVector(vector.name, dict(vector.vectors), {**vector.meta, "token_norm": norms})
    vector.save(out / "vector.safetensors")
    result.save(out)
    _print_summary(result, out)
    return 0


def _print_summary(result, out) -> None:
    s = result.success
    t = result.table
    base = t.loc[t.kind == "baseline", "target_score"].mean()
    print(f"{len(t)} generations ({result.meta['decode_seconds']:.1f} s decoding); target {result.target}, "
          f"baseline mean {base:.3f}")
    if len(s):
        cols = ["vector", "layer", "strength", "mean_change", "mean_change_random", "effect", "p_bonferroni",
                "success_rate", "share_surgical", "share_repetitive_collapse", "share_explosive"]
        print(s[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    from emoscope.steering.regimes import regime_switches

    for line in regime_switches(t):
        print("regimes, " + line)
    print(f"-> {out}")
