"""Benchmark: residual-stream extraction on smollm2-135m.

256 prompts of 20–40 tokens, batch 32, last token, all layers, 2 threads, median of >= 3 runs.
Compares (a) the bare transformers forward with output_hidden_states=True, (b) emoscope
``extract`` (all layers, and the first half of the layers), (c) TransformerLens 4.x
``TransformerBridge`` ``run_with_cache`` and (d) nnsight tracing, where those install.

    python benchmarks/extract.py --out bench-results/extract.json
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_prompts, machine, median_time, pin_threads, write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench-results/extract.json")
    args = ap.parse_args()
    pin_threads(args.threads)

    import numpy as np
    import torch

    from emoscope.activations import extract, pad_batch
    from emoscope.models import load_model

    model = load_model(args.model)
    tok = model.tokenizer
    prompts = bench_prompts(tok, args.n, 20, 40)
    ids = [tok(p)["input_ids"] for p in prompts]
    lengths = [len(i) for i in ids]
    bs = args.batch_size
    pad_id = tok.pad_token_id

    def bare():
        """What a user writes with plain transformers: batches in data order, right padding."""
        outs = []
        with torch.inference_mode():
            for i in range(0, len(ids), bs):
                inp, mask, _, _ = pad_batch(ids[i : i + bs], pad_id, "right")
                hs = model.hf(input_ids=inp, attention_mask=mask, output_hidden_states=True).hidden_states
                last = mask.sum(1) - 1
                rows = torch.arange(inp.shape[0])
                outs.append(torch.stack([h[rows, last] for h in hs[1:]]).numpy())
        return np.concatenate(outs, axis=1)

    half = list(range(model.n_layers // 2))
    results: dict[str, dict] = {}

    def record(name, fn, **extra):
        try:
            med, times = median_time(fn, args.repeats)
            results[name] = {"median_s": med, "times_s": times, "prompts_per_s": args.n / med, **extra}
        except Exception as e:  # a peer that fails to run is recorded, not fatal
            results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}

    record("bare_transformers_hidden_states", bare)
    record("emoscope_all_layers", lambda: extract(model, prompts, "all", "last", batch_size=bs, cache=False, progress=False))
    record("emoscope_first_half_layers",
           lambda: extract(model, prompts, half, "last", batch_size=bs, cache=False, progress=False))

    # Numbers must agree before speed means anything (hidden_states[l+1] == resid[l], l < n-1).
    ref = bare()
    got = extract(model, prompts, "all", "last", batch_size=bs, cache=False, progress=False)
    max_rel = max(float(np.abs(got.get(layer) - ref[layer]).max() / np.abs(ref[layer]).max())
                  for layer in range(model.n_layers - 1))

    directory = Path(model.source.get("gguf", "")).parent
    local_dir = next(iter(sorted((Path.home() / ".cache/emoscope/models").glob(f"{args.model}-*"))), None)
    from emoscope.models import cache_dir

    local_dir = next(iter(sorted((cache_dir() / "models").glob(f"{args.model}-*"))), local_dir)
    _transformer_lens(record, local_dir, prompts, bs)
    _nnsight(record, model, prompts, bs)

    base = results["bare_transformers_hidden_states"]["prompts_per_s"]
    ratios = {k: v["prompts_per_s"] / base for k, v in results.items() if "prompts_per_s" in v}
    payload = {
        "benchmark": "extract", "model": args.model, "n_prompts": args.n, "batch_size": bs,
        "token_length": {"min": min(lengths), "max": max(lengths), "mean": float(np.mean(lengths))},
        "position": "last", "repeats": args.repeats, "results": results,
        "ratio_vs_bare_forward": ratios, "max_rel_diff_vs_bare_hidden_states": max_rel,
        "targets": {"emoscope_all_layers": 1.3, "emoscope_first_half_layers": 1.8},
        "machine": machine(), "unused_gguf_dir": str(directory),
    }
    write_json(args.out, payload)
    return 0


def _transformer_lens(record, local_dir, prompts, bs):
    try:
        from transformer_lens.model_bridge import TransformerBridge  # TransformerLens 4.x
    except Exception as e:
        record("transformer_lens_run_with_cache", _raiser(f"not installed: {type(e).__name__}: {e}"))
        return
    try:
        bridge = TransformerBridge.boot_transformers(str(local_dir), device="cpu")
    except Exception as e:
        record("transformer_lens_run_with_cache", _raiser(f"boot failed: {type(e).__name__}: {e}"))
        return

    def run():
        import torch

        with torch.inference_mode():
            for i in range(0, len(prompts), bs):
                bridge.run_with_cache(prompts[i : i + bs])

    record("transformer_lens_run_with_cache", run)


def _nnsight(record, model, prompts, bs):
    try:
        from nnsight import LanguageModel
    except Exception as e:
        record("nnsight_trace", _raiser(f"not installed: {type(e).__name__}: {e}"))
        return
    lm = LanguageModel(model.hf, tokenizer=model.tokenizer)

    def run():
        import torch

        with torch.inference_mode():
            for i in range(0, len(prompts), bs):
                saved = []
                with lm.trace(prompts[i : i + bs]):
                    for layer in lm.model.layers:
                        saved.append(layer.output[0][:, -1].save())

    record("nnsight_trace", run)


def _raiser(msg):
    def fn():
        raise RuntimeError(msg)
    return fn


if __name__ == "__main__":
    sys.exit(main())
