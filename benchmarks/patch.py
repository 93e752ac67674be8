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

(a) and (b) are timed alternately, best of ``--repeats``.

Recording the source states (100 + 100 texts) is timed separately: it is the same for every way.
Greedy outputs of (a) must agree with (c) row by row; a difference counts only when the first
differing step is a near-tie (logit gap < 1e-3 under the reference's own scores).

    python benchmarks/patch.py --out bench-results/patch.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NEAR_TIE, agreement, machine, pin_threads, sayer, trim, write_json  # noqa: E402

_say = sayer("patch")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default="0.3,0.5")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--n-random", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternating timings of (a) and (b); the best is reported")
    ap.add_argument("--one-at-a-time-rows", type=int, default=12,
                    help="rows timed one at a time through generate (the rest extrapolated); -1 runs all")
    ap.add_argument("--out", default="bench-results/patch.json")
    args = ap.parse_args()
    pin_threads(args.threads)

    import numpy as np
    import torch

    from emoscope.datasets import load_dataset
    from emoscope.models import load_model
    from emoscope.models.batching import eos_ids
    from emoscope.patching import PatchSweep

    model = load_model(args.model)
    tok = model.tokenizer
    ds = load_dataset("emotions-basic")
    anger = [t for t, y in zip(ds.texts, ds.labels, strict=True) if y == "anger"]
    neutral = [t for t, y in zip(ds.texts, ds.labels, strict=True) if y == "neutral"]
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
                out = model.hf.generate(input_ids=torch.tensor([ids[p]]), attention_mask=torch.ones(1, width,
                                        dtype=torch.long), max_new_tokens=n, do_sample=False,
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
    payload = {
        "benchmark": "patch", "model": args.model, "layers": layers, "positions": "last",
        "n_prompts": len(prompts), "n_random": args.n_random, "max_new_tokens": n, "rows": len(t),
        "prompt_tokens": [len(i) for i in ids], "greedy": True, "near_tie_threshold": NEAR_TIE,
        "results": results,
        "speedup": {"vs_full_prefill": results["emoscope_full_prefill"]["seconds"] / emo,
                    "vs_one_at_a_time": results["hf_one_at_a_time"]["seconds"] / emo},
        "machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
