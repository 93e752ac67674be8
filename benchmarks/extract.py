"""Benchmark: residual-stream extraction on smollm2-135m.

256 prompts of 20–40 tokens, batch 32, last token, all layers, 2 threads, median of >= 3 runs.
Compares (a) the bare transformers forward with output_hidden_states=True, (b) emoscope
``extract`` (all layers, and the first half of the layers), (c) TransformerLens 4.x
``TransformerBridge`` ``run_with_cache`` and (d) nnsight tracing, where those install, and (e)
the ceiling (``_ceiling.py``): a bare decoder forward (``model.base``, no hook, no unembedding)
over the same prompts in length-sorted batches (the least padding), and the FLOP count of the
prompts' real tokens through every block at the measured matmul rate.

    python benchmarks/extract.py --out bench-results/extract.json [--dtype bfloat16]
    python benchmarks/extract.py --smoke --out /tmp/extract.json     # tiny model, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import Flops, ceiling_summary, rates_for, summary  # noqa: E402
from _common import bench_prompts, machine, pin_threads, write_json  # noqa: E402
from _tiny import smoke_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default=None, help="model compute dtype (default float32 on CPU), e.g. bfloat16")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model and a few prompts: checks it runs")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench-results/extract.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.batch_size, args.repeats = 12, 4, 1
    pin_threads(1 if args.smoke else args.threads)

    import numpy as np
    import torch

    from emoscope.activations import extract
    from emoscope.models import load_model
    from emoscope.models.batching import pad_batch

    model = load_model(smoke_model(args), dtype=args.dtype)
    tok = model.tokenizer
    prompts = bench_prompts(tok, args.n, 20, 40)
    ids = [tok(p)["input_ids"] for p in prompts]
    lengths = [len(i) for i in ids]
    bs = args.batch_size
    pad_id = tok.pad_token_id

    def bare(prompts=prompts):
        """What a user writes with plain transformers: batches in data order, right padding."""
        ids = [tok(p)["input_ids"] for p in prompts]
        outs = []
        with torch.inference_mode():
            for i in range(0, len(ids), bs):
                inp, mask, _, _ = pad_batch(ids[i : i + bs], pad_id, "right")
                hs = model.hf(input_ids=inp, attention_mask=mask, output_hidden_states=True).hidden_states
                last = mask.sum(1) - 1
                rows = torch.arange(inp.shape[0])
                outs.append(torch.stack([h[rows, last] for h in hs[1:]]).float().cpu().numpy())
        return np.concatenate(outs, axis=1)

    def bare_sorted(prompts=prompts):
        """The ceiling's arithmetic: the decoder alone, no hook, no hidden states kept, batches sorted by length."""
        ids = sorted((tok(p)["input_ids"] for p in prompts), key=len)
        with torch.inference_mode():
            for i in range(0, len(ids), bs):
                inp, mask, pos, _ = pad_batch(ids[i: i + bs], pad_id, "right", model.device)
                model.base(input_ids=inp, attention_mask=mask, position_ids=pos, use_cache=False)

    half = list(range(model.n_layers // 2))
    # Methods are timed in interleaved rounds (one run of each per round, first round is warm-up),
    # so a change in machine load hits every method alike and the ratios stay comparable.
    methods = {
        "bare_transformers_hidden_states": bare,
        "ceiling_bare_decoder_sorted": bare_sorted,
        "emoscope_all_layers": lambda P: extract(model, P, "all", "last", batch_size=bs, cache=False, progress=False),
        "emoscope_first_half_layers": lambda P: extract(model, P, half, "last", batch_size=bs, cache=False,
                                                        progress=False),
    }
    errors: dict[str, str] = {}
    methods.update(_transformer_lens(errors, bs, smoke_model(args)))
    methods.update(_nnsight(errors, model, bs))
    times: dict[str, list[float]] = {k: [] for k in methods}
    for rnd in range(args.repeats + 1):
        for name, fn in list(methods.items()):
            try:
                t0 = time.perf_counter()
                fn(prompts if rnd else prompts[:bs])  # round 0: one batch, to warm up
                if rnd:
                    times[name].append(time.perf_counter() - t0)
            except Exception as e:  # a peer that fails to run is recorded, not fatal
                errors[name] = f"{type(e).__name__}: {e}"
                methods.pop(name)
                times.pop(name)
        print(f"round {rnd} done", flush=True)
        if rnd:  # partial results survive an interrupted run
            from emoscope._io import atomic_write_json

            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(args.out, {"partial": True, "rounds_done": rnd, "times_s": times, "errors": errors})
    results: dict[str, dict] = {name: {"error": err} for name, err in errors.items()}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {"median_s": med, "times_s": ts, "prompts_per_s": args.n / med}

    # Numbers must agree before speed means anything (hidden_states[l+1] == resid[l], l < n-1).
    ref = bare()
    got = extract(model, prompts, "all", "last", batch_size=bs, cache=False, progress=False)
    max_rel = max(float(np.abs(got.get(layer) - ref[layer]).max() / np.abs(ref[layer]).max())
                  for layer in range(model.n_layers - 1))

    base = results["bare_transformers_hidden_states"]["prompts_per_s"]
    ratios = {k: v["prompts_per_s"] / base for k, v in results.items() if "prompts_per_s" in v}
    flops = Flops(model).tokens(sum(lengths), ctx=float(np.mean(lengths)) / 2).total
    rates = rates_for(model, bs * int(np.mean(lengths)), min_seconds=0.05 if args.smoke else 0.5)
    ceiling = ceiling_summary(flops, rates, str(model.dtype).replace("torch.", ""),
                              results["ceiling_bare_decoder_sorted"].get("median_s"),
                              "model.base over length-sorted batches: no hook, no hidden states, no unembedding")
    peers = {k: results[k].get("median_s") for k in ("transformer_lens_run_with_cache", "nnsight_trace") if k in results}
    emo_s = results["emoscope_all_layers"]["median_s"]
    payload = {
        "benchmark": "extract", "smoke": args.smoke, "model": model.name, "dtype": str(model.dtype),
        "n_prompts": args.n, "batch_size": bs,
        "token_length": {"min": min(lengths), "max": max(lengths), "mean": float(np.mean(lengths))},
        "position": "last", "repeats": args.repeats, "results": results,
        "ratio_vs_bare_forward": ratios, "max_rel_diff_vs_bare_hidden_states": max_rel,
        "targets": {"emoscope_all_layers": 1.3, "emoscope_first_half_layers": 1.8, "fraction_of_ceiling": 0.8},
        "ceiling": ceiling,
        "summary": summary(f"extraction, {args.n} prompts, all layers, last token", emo_s,
                           {"bare_transformers_hidden_states": results["bare_transformers_hidden_states"]["median_s"],
                            **peers}, ceiling),
        "machine": machine(),
        "timing": "interleaved rounds; first round discarded as warm-up",
    }
    write_json(args.out, payload)
    return 0


def _transformer_lens(errors, bs, alias):
    name = "transformer_lens_run_with_cache"
    try:
        from transformer_lens.model_bridge import (
            TransformerBridge,  # TransformerLens 4.x has no HookedTransformer
        )

        from emoscope.models.loading import cache_dir

        local_dir = (Path(alias) if Path(alias).is_dir()
                     else next(iter(sorted((cache_dir() / "models").glob(f"{alias}-*")))))
        bridge = TransformerBridge.boot_transformers(str(local_dir), device="cpu")
    except Exception as e:
        errors[name] = f"unavailable: {type(e).__name__}: {e}"
        return {}

    def run(prompts):
        import torch

        with torch.inference_mode():
            for i in range(0, len(prompts), bs):
                bridge.run_with_cache(prompts[i : i + bs])

    return {name: run}


def _nnsight(errors, model, bs):
    name = "nnsight_trace"
    try:
        from nnsight import LanguageModel

        lm = LanguageModel(model.hf, tokenizer=model.tokenizer)
    except Exception as e:
        errors[name] = f"unavailable: {type(e).__name__}: {e}"
        return {}

    def run(prompts):
        import torch

        with torch.inference_mode():
            for i in range(0, len(prompts), bs):
                with lm.trace(prompts[i : i + bs]):
                    saved = [layer.output[0][:, -1].save() for layer in lm.model.layers]  # noqa: F841

    return {name: run}


if __name__ == "__main__":
    sys.exit(main())
