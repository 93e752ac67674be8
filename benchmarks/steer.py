"""Benchmark: a steering sweep of 8 strengths x 16 prompts x 32 new tokens on smollm2-135m.

Compared on the same 128 rows (greedy, chat-template prompts, joy vector at one layer):

(a) emoscope ``SteeringSweep``: one batch, a delta per row, the prompts prefilled once and their KV
    cache shared across strengths (only generated tokens are steered);
(b) 8 separate batched ``transformers.generate`` calls (16 prompts each) under ``steer``;
(c) one prompt at a time through ``generate`` (a subset of rows, extrapolated; the JSON says so);
(d) emoscope with every position steered (no prefill sharing) and, where they install with
    ``--no-deps`` into a side directory (``--peers-path``), the ``steering-vectors`` and ``repeng``
    libraries, 8 calls each (they steer every position, so they are compared with (d));
(e) the ceiling (``_ceiling.py``): the same rows decoded with no edit and no hook in one batch
    (``decode_rows`` with empty edits: the unique prompts prefilled once, every row one token per
    step), and the FLOP count of that work at the measured matmul rate;
(f) scoring: the sweep with the perplexity scorer (computed from the decode's clean states,
    ``models.rescore``) against the same perplexities run from scratch (``output_perplexity``).

Greedy outputs must agree with the reference row by row; a difference counts only when the
first differing step is a near-tie (logit gap < 1e-3 under the reference's own computation).

    python benchmarks/steer.py --out bench-results/steer.json [--dtype bfloat16]
    python benchmarks/steer.py --smoke --out /tmp/steer.json      # tiny model, seconds
    pip install --no-deps --target .venv/steer-peers steering-vectors repeng   # optional peers (make bench does it)
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import Flops, ceiling_summary, rates_for, summary  # noqa: E402
from _common import load_avg, machine, pin_threads, sayer, write_json  # noqa: E402
from _common import trim as trim_at  # noqa: E402
from _tiny import smoke_model  # noqa: E402

STRENGTHS = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0]
NEAR_TIE = 1e-3
_say = sayer("steer")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default=None, help="model compute dtype (default float32 on CPU), e.g. bfloat16")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one-at-a-time-rows", type=int, default=16,
                    help="rows timed one prompt at a time (the rest extrapolated); 0 skips, -1 runs all")
    ap.add_argument("--peers-path", default=str(Path(sys.prefix) / "steer-peers"),
                    help="directory with steering_vectors / repeng (make bench installs them there)")
    ap.add_argument("--skip-all-positions", action="store_true", help="skip (d) and the peers")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model and a few rows: checks it runs")
    ap.add_argument("--out", default="bench-results/steer.json")
    args = ap.parse_args(argv)
    strengths = STRENGTHS
    if args.smoke:
        args.layer, args.n_prompts, args.max_new_tokens, args.one_at_a_time_rows = 1, 3, 4, 2
        strengths = [-1.0, 0.0, 1.0]
    pin_threads(1 if args.smoke else args.threads)  # a tiny model: one thread (no barrier waits on a busy machine)

    import numpy as np
    import torch

    from emoscope.activations import extract
    from emoscope.datasets import load_dataset
    from emoscope.models import load_model
    from emoscope.models.batching import eos_ids
    from emoscope.models.decode import RowEdits, decode_rows
    from emoscope.models.interventions import Window
    from emoscope.models.kvcache import cache_kwargs, output_cache
    from emoscope.steering import SteeringSweep, steer
    from emoscope.steering.scorers import output_perplexity
    from emoscope.vectors import ConceptVector, DiffMeans
    from emoscope.vectors.strength import measure_unit

    load_start = load_avg()
    model = load_model(smoke_model(args), dtype=args.dtype)
    tok = model.tokenizer
    layer = args.layer
    prompts = load_dataset("neutral-starts").texts[: args.n_prompts]
    chat = [model.chat(p) for p in prompts]
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in chat]
    ds = load_dataset("emotions-12")
    keep = [i for i, y in enumerate(ds.labels) if y in ("joy", "neutral")]
    acts = extract(model, [ds.texts[i] for i in keep], [layer], position="mean_from:1", progress=False)
    joy = ConceptVector("joy", {layer: DiffMeans("joy").fit(acts.get(layer), [ds.labels[i] for i in keep]).vector_})
    norms = measure_unit(model, [layer]).values
    stop = eos_ids(model)
    n = args.max_new_tokens

    def trim(seq):
        return trim_at(seq, stop)

    def hf_generate(rows_prompts, s, positions):
        side, tok.padding_side = tok.padding_side, "left"
        enc = tok([chat[p] for p in rows_prompts], add_special_tokens=False, return_tensors="pt", padding=True)
        tok.padding_side = side
        with torch.inference_mode(), steer(model, joy, [layer], s, positions=positions, norms=norms):
            out = model.hf.generate(**enc.to(model.device), max_new_tokens=n, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
        return [trim(r) for r in out[:, enc["input_ids"].shape[1]:].tolist()]

    def gap_at(p, s, positions, prefix, a, b):
        """Reference logit gap between tokens a (reference) and b at the step after ``prefix``."""
        with torch.inference_mode(), steer(model, joy, [layer], s, positions=positions, norms=norms):
            out = model.hf(input_ids=torch.tensor([ids[p]], device=model.device), use_cache=True)
            logits = out.logits[0, -1]
            if prefix:  # a cached continuation, so "generated" covers exactly the prefix
                logits = model.hf(input_ids=torch.tensor([prefix], device=model.device), use_cache=True,
                                  **cache_kwargs(model.hf, output_cache(out))).logits[0, -1]
        return float(logits[a] - logits[b])

    def agreement(got, ref, keys, positions):
        same = near = 0
        bad = []
        for g, r, (p, s) in zip(got, ref, keys, strict=True):
            if g == r:
                same += 1
                continue
            step = next((i for i, (x, y) in enumerate(zip(g, r, strict=False)) if x != y), min(len(g), len(r)))
            if step >= min(len(g), len(r)):  # one stopped earlier: compare eos vs the other's token
                bad.append({"prompt": p, "strength": s, "step": step, "why": "length"})
                continue
            gap = abs(gap_at(p, s, positions, r[:step], r[step], g[step]))
            if gap < NEAR_TIE:
                near += 1
            else:
                bad.append({"prompt": p, "strength": s, "step": step, "gap": gap})
        return {"rows": len(got), "identical": same, "near_tie": near, "mismatch": len(bad), "mismatches": bad[:10]}

    results: dict[str, dict] = {}
    keys = [(p, s) for s in strengths for p in range(len(prompts))]

    def run_sweep(positions, scorers=()):
        t0 = time.perf_counter()
        res = SteeringSweep(model, joy, [layer], strengths, prompts, max_new_tokens=n, positions=positions,
                            norms=norms, n_random=0, negate=False, scorers=scorers, batch_rows=256,
                            target="perplexity" if scorers else None, progress=False).run()
        dt = time.perf_counter() - t0
        t = res.table
        by_key = {}
        for i, row in t.iterrows():
            s = 0.0 if row.kind == "baseline" else float(row.strength)
            by_key[(int(row.prompt_id), s)] = trim(res.tokens[i])
        return dt, res, [by_key[k] for k in keys]

    # (a) emoscope, generated tokens steered, shared prefill
    dt, res, emo = run_sweep("generated")
    meta = res.meta
    results["emoscope_batched"] = {"seconds": dt, "decode_seconds": meta["decode_seconds"], "rows": len(keys),
                                   "batches": meta["batches"], "prefill_rows": meta["prefill_rows"],
                                   "positions": "generated"}
    _say(f"emoscope batched: {dt:.1f} s")
    # (b) 8 separate batched generate calls
    t0 = time.perf_counter()
    ref = []
    for s in strengths:
        ref += hf_generate(list(range(len(prompts))), s, "generated")
    results["hf_generate_8_calls"] = {"seconds": time.perf_counter() - t0, "calls": len(strengths),
                                      "rows_per_call": len(prompts), "positions": "generated"}
    _say(f"8 generate calls: {results['hf_generate_8_calls']['seconds']:.1f} s")
    results["emoscope_batched"]["agreement_vs_8_calls"] = agreement(emo, ref, keys, "generated")
    # (c) one prompt at a time
    m = len(keys) if args.one_at_a_time_rows < 0 else min(args.one_at_a_time_rows, len(keys))
    if m:
        pick = [keys[i] for i in np.linspace(0, len(keys) - 1, m).round().astype(int)]
        t0 = time.perf_counter()
        single = [hf_generate([p], s, "generated")[0] for p, s in pick]
        dt = time.perf_counter() - t0
        results["hf_one_at_a_time"] = {"seconds_measured": dt, "rows_measured": m,
                                       "seconds": dt * len(keys) / m, "extrapolated": m < len(keys),
                                       "note": f"{m} of {len(keys)} rows timed, spread over all strengths; "
                                               "seconds = measured x rows / rows_measured"}
        _say(f"one at a time: {dt:.1f} s for {m} rows")
        results["hf_one_at_a_time"]["agreement_vs_emoscope"] = agreement(
            single, [emo[keys.index(k)] for k in pick], pick, "generated")
    # (d) every position steered: emoscope without prefill sharing, and the peer libraries
    if not args.skip_all_positions:
        dt, res_all, emo_all = run_sweep("all")
        results["emoscope_batched_all_positions"] = {"seconds": dt, "decode_seconds": res_all.meta["decode_seconds"],
                                                     "prefill_rows": res_all.meta["prefill_rows"], "positions": "all"}
        results.update(_peers(args.peers_path, model, joy, layer, norms, chat, strengths, n, keys, emo_all, trim,
                              agreement))

    # (e) the ceiling: the same rows, no edit, no hook, one batch; and their FLOPs at the matmul rate
    row_prompt = [p for _ in strengths for p in range(len(prompts))]
    t0 = time.perf_counter()
    bare = decode_rows(model, ids, row_prompt, RowEdits(), Window("generated"), max_new_tokens=n,
                       batch_rows=len(row_prompt))
    bare_s = time.perf_counter() - t0
    fed = [max(len(t) - 1, 0) for t in res.tokens]  # tokens run through the model after the prefill
    ctx = float(np.mean([len(ids[p]) for p in row_prompt])) + n / 2
    flops = (Flops(model).tokens(sum(len(i) for i in ids), ctx=float(np.mean([len(i) for i in ids])) / 2)
             .unembed(len(ids)).tokens(sum(fed), ctx=ctx).unembed(sum(fed)).total)
    rates = rates_for(model, len(row_prompt), min_seconds=0.05 if args.smoke else 0.5)
    ceiling = ceiling_summary(flops, rates, str(model.dtype).replace("torch.", ""), bare_s,
                              "decode_rows of the same rows with no edit or hook, one batch, prompts prefilled once")
    _say(f"ceiling: bare decode {bare_s:.1f} s, {flops / 1e9:.1f} GFLOP at {rates} GFLOP/s")
    results["bare_decode_no_edits"] = {"seconds": bare_s, "rows": len(row_prompt),
                                       "tokens": sum(len(t) for t in bare.tokens)}

    # (f) scoring: the perplexity with the decode (clean states) against the scorer from scratch
    t0 = time.perf_counter()
    _, res_ppl, _ = run_sweep("generated", scorers=("perplexity",))
    with_ppl = time.perf_counter() - t0
    t0 = time.perf_counter()
    scratch = output_perplexity(model, [ids[p] for p in res_ppl.table["prompt_id"]], res_ppl.tokens)
    scratch_s = time.perf_counter() - t0
    got = res_ppl.table["perplexity"].to_numpy(float)
    results["scoring"] = {"sweep_with_perplexity_seconds": with_ppl,
                          "perplexity_seconds_in_sweep": with_ppl - results["emoscope_batched"]["seconds"],
                          "perplexity_from_scratch_seconds": scratch_s,
                          "max_rel_diff_vs_scratch": float(np.nanmax(np.abs(got / scratch - 1)))}

    base = results["hf_generate_8_calls"]["seconds"]
    emo_s = results["emoscope_batched"]["seconds"]
    speed = {"vs_8_calls": base / emo_s}
    if "hf_one_at_a_time" in results:
        speed["vs_one_at_a_time"] = results["hf_one_at_a_time"]["seconds"] / emo_s
    baselines = {"hf_generate_8_calls": base, "hf_one_at_a_time": results.get("hf_one_at_a_time", {}).get("seconds")}
    baselines.update({k: v["seconds"] for k, v in results.items() if k.endswith("_8_calls") and "seconds" in v
                      and k != "hf_generate_8_calls"})
    payload = {
        "benchmark": "steer", "smoke": args.smoke, "model": model.name, "dtype": str(model.dtype), "layer": layer,
        "strengths": strengths, "unit": "norm", "unit_norm": norms[layer], "n_prompts": len(prompts),
        "max_new_tokens": n, "rows": len(keys), "prompt_tokens": [len(i) for i in ids], "greedy": True,
        "near_tie_threshold": NEAR_TIE, "results": results, "speedup": speed, "ceiling": ceiling,
        "summary": summary(f"steering sweep, {len(keys)} rows x {n} tokens", emo_s, baselines, ceiling),
        "targets": {"vs_8_calls": 2.8, "vs_one_at_a_time": 16.0, "fraction_of_ceiling": 0.8},
        "load_average_start": load_start, "load_average_end": load_avg(), "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else ["steer.py", *argv])]),
    }
    write_json(args.out, payload)
    return 0


def _peers(path, model, joy, layer, norms, chat, strengths, n, keys, emo_all, trim, agreement):
    """steering-vectors and repeng, 8 calls each, every position steered with emoscope's deltas."""
    import numpy as np
    import torch

    out: dict[str, dict] = {}
    if path and Path(path).is_dir() and path not in sys.path:
        sys.path.insert(0, path)
    tok = model.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    enc = tok(chat, add_special_tokens=False, return_tensors="pt", padding=True).to(model.device)
    tok.padding_side = side
    unit = torch.tensor(joy[layer] / np.linalg.norm(joy[layer]) * norms[layer], dtype=model.dtype)  # strength-1 delta

    def run(name, make_ctx):
        try:
            t0 = time.perf_counter()
            got = []
            for s in strengths:
                with torch.inference_mode(), make_ctx(s):
                    o = model.hf.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
                got += [trim(r) for r in o[:, enc["input_ids"].shape[1]:].tolist()]
            _say(f"{name}: {time.perf_counter() - t0:.1f} s")
            out[name] = {"seconds": time.perf_counter() - t0, "calls": len(strengths), "positions": "all",
                         "agreement_vs_emoscope_all_positions": agreement(got, emo_all, keys, "all")}
        except Exception as e:  # a peer that fails to run is recorded, not fatal
            out[name] = {"skipped": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=2)}

    try:
        from steering_vectors import SteeringVector

        def sv_ctx(s):
            return SteeringVector({layer: unit}, layer_type="decoder_block").apply(model.hf, multiplier=s)

        run("steering_vectors_8_calls", sv_ctx)
    except ImportError as e:
        out["steering_vectors_8_calls"] = {"skipped": f"not installed ({e}); pip install --no-deps --target {path} "
                                                      "steering-vectors"}
    try:
        if not hasattr(np, "float_"):
            np.float_ = np.float64  # repeng still uses the NumPy 1 alias
        import contextlib

        from repeng import ControlModel, ControlVector

        @contextlib.contextmanager
        def rp_ctx(s):
            cm = ControlModel(model.hf, [layer])  # wraps the block in place; unwrap restores it
            try:
                cm.set_control(ControlVector(model_type="llama", directions={layer: unit.float().numpy()}), coeff=s)
                yield
            finally:
                cm.unwrap()

        run("repeng_8_calls", rp_ctx)
    except ImportError as e:
        out["repeng_8_calls"] = {"skipped": f"not installed ({e}); pip install --no-deps --target {path} repeng"}
    return out


if __name__ == "__main__":
    sys.exit(main())
