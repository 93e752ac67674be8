"""Benchmark: multi-token activation patching on smollm2-135m, emoscope against bare ``generate``.

The work: anger (class mean of emotions-basic) patched into 8 neutral-starts prompts at 2 layers,
positions ``last``, with the neutral-source patch, 4 random patches and the self-patch per cell and
the unpatched baseline per prompt (8 x (1 + 2 x 7) = 120 rows), 16 greedy tokens each, chat
template. Compared on the same rows (the same recorded values written at the same positions):

(a) emoscope ``PatchSweep``: one batched decode, a replacement per row, the unpatched prompt heads
    prefilled once and shared (``decode_rows(shared_prefix=...)``);
(b) the same without sharing the heads (every row prefilled in full);
(c) one row at a time through ``transformers.generate`` with a raw forward hook that overwrites the
    last prompt token at prefill (a subset of rows, extrapolated; the JSON says so).

(a) and (b) are timed alternately, best of ``--repeats``. The ceiling (``_ceiling.py``): the same
rows decoded with no edit and no hook in one batch (every prompt prefilled once), and the FLOP count
of the work a patch cannot avoid (each row's prompt from its first patched token on, then its
generated tokens; the unpatched prompt heads once) at the measured matmul rate.

Recording the source states (100 + 100 texts) is timed separately: it is the same for every way.
Greedy outputs of (a) must agree with (c) row by row; a difference counts only when the first
differing step is a near-tie (logit gap < 1e-3 under the reference's own scores).

    python benchmarks/patch.py --out bench-results/patch.json [--dtype bfloat16]
    python benchmarks/patch.py --smoke --out /tmp/patch.json      # tiny model, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import Flops, ceiling_summary, rates_for, summary  # noqa: E402
from _common import NEAR_TIE, agreement, machine, pin_threads, sayer, trim, write_json  # noqa: E402
from _tiny import smoke_model  # noqa: E402

_say = sayer("patch")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default=None, help="model compute dtype (default float32 on CPU), e.g. bfloat16")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model and a few rows: checks it runs")
    ap.add_argument("--layers", default="0.3,0.5")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--n-random", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternating timings of (a) and (b); the best is reported")
    ap.add_argument("--one-at-a-time-rows", type=int, default=12,
                    help="rows timed one at a time through generate (the rest extrapolated); -1 runs all")
    ap.add_argument("--out", default="bench-results/patch.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_prompts, args.n_random, args.max_new_tokens, args.repeats, args.one_at_a_time_rows = 2, 1, 4, 1, 3
    pin_threads(1 if args.smoke else args.threads)

    import numpy as np
    import torch

    from emoscope.datasets import load_dataset
    from emoscope.models import load_model
    from emoscope.models.batching import eos_ids
    from emoscope.patching import PatchSweep

    model = load_model(smoke_model(args), dtype=args.dtype)
    tok = model.tokenizer
    ds = load_dataset("emotions-basic")
    anger = [t for t, y in zip(ds.texts, ds.labels, strict=True) if y == "anger"][: 8 if args.smoke else None]
    neutral = [t for t, y in zip(ds.texts, ds.labels, strict=True) if y == "neutral"][: 8 if args.smoke else None]
    prompts = load_dataset("neutral-starts").texts[: args.n_prompts]
    layers = model.resolve_layers([float(x) for x in args.layers.split(",")])
    stop = eos_ids(model)
    n = args.max_new_tokens

    def sweep(share: bool) -> PatchSweep:
        return PatchSweep(model, anger, prompts, layers, ["last"], source_name="anger", neutral=neutral,
                          n_random=args.n_random, max_new_tokens=n, scorers=(), target="nrc_anger",
                          share_prefix=share, progress=False)

    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    plan = sweep(True).plan()
    results["record_and_plan"] = {"seconds": time.perf_counter() - t0, "source_texts": len(anger) + len(neutral)}
    _say(f"record + plan: {results['record_and_plan']['seconds']:.1f} s")

    from emoscope.models.decode import decode_rows
    from emoscope.models.interventions import Window

    ids = sweep(True).token_ids(prompts)
    t = plan.table
    row_prompt = t["prompt_id"].tolist()
    untouched = (t["target_tokens"] - np.maximum(t["n_patched"], 1)).tolist()
    decoded: dict[str, list] = {}
    times: dict[str, list[float]] = {"emoscope_shared_heads": [], "emoscope_full_prefill": []}
    for _ in range(args.repeats):  # alternating, best of `repeats`: the machine may be shared
        for name, share in (("emoscope_shared_heads", True), ("emoscope_full_prefill", False)):
            t0 = time.perf_counter()
            dec = decode_rows(model, ids, row_prompt, plan.edits, Window("generated"), max_new_tokens=n,
                              share_prefill=False, shared_prefix=untouched if share else None)
            times[name].append(time.perf_counter() - t0)
            decoded[name] = [trim(x, stop) for x in dec.tokens]
            _say(f"{name}: {times[name][-1]:.1f} s")
    for name, ts in times.items():
        results[name] = {"seconds": min(ts), "all_seconds": ts, "rows": len(t), "timing": f"best of {len(ts)}"}
    results["emoscope_shared_heads"]["identical_to_full_prefill"] = int(sum(
        a == b for a, b in zip(decoded["emoscope_shared_heads"], decoded["emoscope_full_prefill"], strict=True)))

    def reference(r: int):
        """Row ``r`` alone: generate with a raw hook writing its recorded values at prefill."""
        p, layer = int(t.at[r, "prompt_id"]), int(t.at[r, "layer"])
        value = plan.values[r]
        width = len(ids[p])

        def hook(_m, _i, out):
            h = out[0] if isinstance(out, tuple) else out
            if h.shape[1] != width or value is None:
                return None
            h = h.clone()
            h[0, width - len(value):] = value.to(h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = model.blocks[layer].register_forward_hook(hook) if layer >= 0 else None
        try:
            with torch.inference_mode():
                out = model.hf.generate(input_ids=torch.tensor([ids[p]], device=model.device),
                                        attention_mask=torch.ones(1, width, dtype=torch.long, device=model.device),
                                        max_new_tokens=n, do_sample=False,
                                        pad_token_id=tok.pad_token_id, output_scores=True,
                                        return_dict_in_generate=True)
        finally:
            if handle is not None:
                handle.remove()
        return trim(out.sequences[0, width:].tolist(), stop), torch.stack(out.scores, 1)[0]

    m = len(t) if args.one_at_a_time_rows < 0 else min(args.one_at_a_time_rows, len(t))
    pick = np.linspace(0, len(t) - 1, m).round().astype(int).tolist()
    t0 = time.perf_counter()
    refs = {r: reference(r) for r in pick}
    dt = time.perf_counter() - t0
    results["hf_one_at_a_time"] = {"seconds_measured": dt, "rows_measured": m, "seconds": dt * len(t) / m,
                                   "extrapolated": m < len(t),
                                   "note": f"{m} of {len(t)} rows timed; seconds = measured x rows / rows_measured"}
    got = [decoded["emoscope_shared_heads"][r] for r in pick]
    ref = [refs[r][0] for r in pick]

    def gap(i, step, tok):  # the reference's own logit margin of its token over ours at the first difference
        scores = refs[pick[i]][1]
        return float(scores[step, ref[i][step]] - scores[step, tok])

    results["hf_one_at_a_time"]["agreement_vs_emoscope"] = agreement(got, ref, stop, gap)
    _say(f"one at a time: {dt:.1f} s for {m} rows")
    emo = results["emoscope_shared_heads"]["seconds"]
    # the ceiling: the same rows with no edit, one decode; and the FLOPs a patch cannot avoid
    from emoscope.models.decode import RowEdits

    t0 = time.perf_counter()
    decode_rows(model, ids, row_prompt, RowEdits(), Window("generated"), max_new_tokens=n, batch_rows=len(t))
    bare_s = time.perf_counter() - t0
    heads = {p: len(ids[p]) for p in set(row_prompt)}
    tails = [len(ids[p]) - max(0, min(u, len(ids[p]) - 1)) for p, u in zip(row_prompt, untouched, strict=True)]
    fed = [max(len(x) - 1, 0) for x in decoded["emoscope_shared_heads"]]
    mean_len = float(np.mean([len(ids[p]) for p in row_prompt]))
    flops = (Flops(model).tokens(sum(heads.values()) - len(heads), ctx=mean_len / 2).tokens(sum(tails), ctx=mean_len)
             .unembed(len(t)).tokens(sum(fed), ctx=mean_len + n / 2).unembed(sum(fed)).total)
    rates = rates_for(model, len(t), min_seconds=0.05 if args.smoke else 0.5)
    ceiling = ceiling_summary(flops, rates, str(model.dtype).replace("torch.", ""), bare_s,
                              "decode_rows of the same rows with no edit or hook, one batch, prompts prefilled once")
    payload = {
        "benchmark": "patch", "smoke": args.smoke, "model": model.name, "dtype": str(model.dtype), "layers": layers, "positions": "last",
        "n_prompts": len(prompts), "n_random": args.n_random, "max_new_tokens": n, "rows": len(t),
        "prompt_tokens": [len(i) for i in ids], "greedy": True, "near_tie_threshold": NEAR_TIE,
        "results": results,
        "speedup": {"vs_full_prefill": results["emoscope_full_prefill"]["seconds"] / emo,
                    "vs_one_at_a_time": results["hf_one_at_a_time"]["seconds"] / emo},
        "ceiling": ceiling,
        "summary": summary(f"patching sweep, {len(t)} rows x {n} tokens", emo,
                           {"hf_one_at_a_time": results["hf_one_at_a_time"]["seconds"],
                            "emoscope_full_prefill": results["emoscope_full_prefill"]["seconds"]}, ceiling),
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else ["patch.py", *argv])]),
    }
    write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
