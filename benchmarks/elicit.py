"""Benchmark: ``emoscope elicit`` (one batched, seeded decode over emotions x samples) against one
``transformers.generate`` call per text, on the same prompts and sampling settings.

(a) ``emoscope.elicit.elicit``: every (class, sample) row in one ``decode_rows`` batch, the unique
    prompts prefilled once and their KV cache forked to the rows;
(b) one ``model.hf.generate`` call per text (``do_sample=True``, same temperature / top-p and
    number of new tokens), on a subset of the rows, extrapolated to all of them (the JSON says so).

Both count generated tokens (through end-of-sequence) per second of wall time. Sampled texts
differ between (a) and (b) (different random streams); the work per text is the same.

The ceiling (``_ceiling.py``) is the FLOP count of the work (the unique prompts prefilled once,
every generated token after the first through every block) at the measured matmul rate.

    OMP_NUM_THREADS=1 python benchmarks/elicit.py --out bench-results/elicit.json
    python benchmarks/elicit.py --smoke --out /tmp/elicit.json      # tiny model, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import Flops, ceiling_summary, rates_for, summary  # noqa: E402
from _common import load_avg, machine, pin_threads, sayer, write_json  # noqa: E402
from _tiny import smoke_model  # noqa: E402

say = sayer("elicit")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default=None, help="model compute dtype (default float32 on CPU), e.g. bfloat16")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model and a few rows: checks it runs")
    ap.add_argument("--emotions", default="joy,sadness,anger,fear,surprise,disgust,calm,pride")
    ap.add_argument("--n", type=int, default=4, help="texts per class (the batch is (emotions + 1) x n rows)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--loop-rows", type=int, default=6, help="rows timed one generate call at a time")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench-results/elicit.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.emotions, args.n, args.max_new_tokens, args.loop_rows = "joy,fear", 2, 4, 2
    pin_threads(1 if args.smoke else args.threads)

    import torch

    from emoscope.elicit import elicit
    from emoscope.elicit.prompts import check_emotions, class_prompts
    from emoscope.models import load_model
    from emoscope.models.batching import eos_ids

    model = load_model(smoke_model(args), dtype=args.dtype)
    load_before = load_avg()
    say(f"batched elicit: {(len(check_emotions(args.emotions)) + 1) * args.n} rows x {args.max_new_tokens} tokens")
    t0 = time.perf_counter()
    el = elicit(model, args.emotions, args.n, seed=0, max_new_tokens=args.max_new_tokens, require_all=False,
                progress=False)
    batched_s = time.perf_counter() - t0
    stop = eos_ids(model)
    # the batched run decodes one extra token per row (so the last kept token is fed through the model)
    batched_tokens = sum(len(g) for g in el.generated)

    labels, prompts = class_prompts(model, check_emotions(args.emotions), model.has_chat_template, args.n)
    step = max(1, len(prompts) // args.loop_rows)
    picked = list(range(0, len(prompts), step))[: args.loop_rows]
    say(f"one generate call per text: {len(picked)} of {len(prompts)} rows")
    loop_tokens, t0 = 0, time.perf_counter()
    for i in picked:
        text = model.chat(prompts[i]) if model.has_chat_template else prompts[i]
        enc = model.tokenizer(text, return_tensors="pt", add_special_tokens=not model.has_chat_template)
        torch.manual_seed(i)
        with torch.inference_mode():
            out = model.hf.generate(**enc, do_sample=True, temperature=0.9, top_p=0.95,
                                    max_new_tokens=args.max_new_tokens + 1, pad_token_id=model.tokenizer.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        loop_tokens += next((k + 1 for k, t in enumerate(new) if t in stop), len(new))
    loop_s = time.perf_counter() - t0
    per_text = loop_s / len(picked)
    texts = [model.chat(p) if model.has_chat_template else p for p in prompts]
    plens = [len(model.tokenizer(t, add_special_tokens=not model.has_chat_template)["input_ids"]) for t in set(texts)]
    fed = sum(max(len(g) - 1, 0) for g in el.generated)
    flops = (Flops(model).tokens(sum(plens), ctx=sum(plens) / len(plens) / 2).unembed(len(prompts))
             .tokens(fed, ctx=sum(plens) / len(plens) + args.max_new_tokens / 2).unembed(fed).total)
    rates = rates_for(model, len(prompts), min_seconds=0.05 if args.smoke else 0.5)
    ceiling = ceiling_summary(flops, rates, str(model.dtype).replace("torch.", ""), None, "")
    result = {
        "benchmark": "elicit", "smoke": args.smoke, "model": model.name, "dtype": str(model.dtype),
        "ceiling": ceiling,
        "summary": summary(f"elicit, {len(prompts)} sampled rows x {args.max_new_tokens} tokens", batched_s,
                           {"generate_per_text": per_text * len(prompts)}, ceiling), "rows": len(prompts), "max_new_tokens": args.max_new_tokens,
        "batched": {"seconds": round(batched_s, 2), "tokens": batched_tokens,
                    "tokens_per_s": round(batched_tokens / batched_s, 2), "kept": int(len(el.kept))},
        "generate_per_text": {"rows_timed": len(picked), "seconds_timed": round(loop_s, 2), "tokens": loop_tokens,
                              "tokens_per_s": round(loop_tokens / loop_s, 2),
                              "extrapolated_seconds_all_rows": round(per_text * len(prompts), 2)},
        "speedup_tokens_per_s": round((batched_tokens / batched_s) / (loop_tokens / loop_s), 2),
        "load_avg_before": load_before, "load_avg_after": load_avg(), "machine": machine(),
    }
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
