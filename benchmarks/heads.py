"""Benchmark: head screening and a batched head-ablation sweep on smollm2-135m.

(1) Screening every head: ``emoscope.heads.screen.head_projections`` (a pre-hook on every block's
    ``o_proj`` reading all heads along the block's vector at the last token) on the anger and
    neutral texts of emotions-basic, against a bare decoder forward of the same texts in the same
    batches (no hooks, no LM head); texts/s of each and their ratio. The full ``screen_heads``
    (with its permutation null and Holm) is timed too.
(2) An ablation sweep of k = 8 configurations (8 heads zero-ablated each) x ``--n-prompts`` chat
    prompts x ``--max-new-tokens`` greedy tokens: one batched decode with per-row head masks
    (``emoscope.heads.sweep.decode_configs``) against running the configurations one at a time
    (the same loop, one configuration's prompts per decode) and, for ``positions=all``, against
    ``transformers.generate`` per configuration under plain o_proj pre-hooks that zero the heads'
    slices. Two windows: ``all`` (prompt and generated tokens ablated: every row prefills the blocks
    from the lowest ablated layer up on its own prompt, the blocks below once per unique prompt, and,
    timed beside it as ``batched_full_prefill``, the previous method with every block per row) and
    ``generated`` (the unedited prompts prefilled once and shared by all rows). The repeats are
    interleaved (min of each kept) and CPU time is recorded beside wall time: other jobs share the
    cores. Greedy outputs must agree row by row; a difference counts only when the first differing
    step is a near-tie (logit gap < 1e-3 in the configuration run alone). The random sets are drawn as
    the CLI draws them (``--random-match layer``, falling back to the chosen heads' layer band).
    For ``all``, the same rows are also decoded with no edit at all, in one decode and in one decode
    per configuration: the ratio of the two (``batching_ceiling``) is what batching alone can give
    when every row prefills its own prompt; the sweep can exceed it only by sharing the blocks below
    its lowest edited layer.

    The ceilings (``_ceiling.py``): for the screen, the bare forward above and the FLOPs of the texts
    through every block; for the ablation sweep (``all``), the bare batched decode above and the FLOPs
    a sweep that edits its rows' heads cannot avoid (the blocks below the lowest ablated layer once per
    unique prompt, the rest per row, then every generated token), each at the measured matmul rate.

    python benchmarks/heads.py --out bench-results/heads.json [--dtype bfloat16]
    python benchmarks/heads.py --smoke --out /tmp/heads.json      # tiny model, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import Flops, ceiling_summary, rates_for, summary  # noqa: E402
from _common import (  # noqa: E402
    NEAR_TIE,
    agreement,
    load_avg,
    machine,
    median_time,
    pin_threads,
    sayer,
    write_json,
)
from _tiny import smoke_model  # noqa: E402

_say = sayer("heads")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default=None, help="model compute dtype (default float32 on CPU), e.g. bfloat16")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model and a few rows: checks it runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="texts per screening forward")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of the screening passes")
    ap.add_argument("--sweep-repeats", type=int, default=2, help="interleaved repeats of each ablation timing (min kept)")
    ap.add_argument("--k", type=int, default=8, help="ablation configurations")
    ap.add_argument("--heads-per-config", type=int, default=8)
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--chosen", default=None,
                    help="ablate these heads (L.H,...) instead of the screen's top --heads-per-config, e.g. the "
                         "heads of a CLI screen, whose random sets can match their layers")
    ap.add_argument("--random-match", default="layer", choices=["layer", "band", "any"],
                    help="random sets as the CLI draws them (layer, falling back to band, then any)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--skip-generate", action="store_true", help="skip the transformers.generate comparison")
    ap.add_argument("--positions", nargs="+", default=["all", "generated"], choices=["all", "generated"],
                    help="ablation windows to time (all: every row prefills its prompt; generated: shared prefill)")
    ap.add_argument("--out", default="bench-results/heads.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.repeats, args.sweep_repeats, args.k, args.heads_per_config, args.n_prompts = 1, 1, 3, 2, 2
        args.max_new_tokens, args.batch_size = 4, 16
    pin_threads(1 if args.smoke else args.threads)

    import numpy as np
    import torch

    from emoscope.activations import extract
    from emoscope.datasets import load_dataset
    from emoscope.heads import random_head_sets, screen_heads
    from emoscope.heads.screen import head_projections, screen_directions
    from emoscope.heads.select import parse_heads
    from emoscope.heads.sweep import HeadConfig, decode_configs
    from emoscope.models import load_model
    from emoscope.models.batching import eos_ids, pad_batch
    from emoscope.models.decode import RowEdits, decode_rows
    from emoscope.models.head_outputs import head_shape
    from emoscope.models.interventions import Window
    from emoscope.vectors import ConceptVector, DiffMeans

    load_start = load_avg()
    model = load_model(smoke_model(args), dtype=args.dtype)
    tok = model.tokenizer
    n_heads, hd = head_shape(model, 0)
    ds = load_dataset("emotions-basic")
    keep = [i for i, y in enumerate(ds.labels) if y in ("anger", "neutral")]
    texts, labels = [ds.texts[i] for i in keep], [ds.labels[i] for i in keep]
    layers = list(range(model.n_layers))
    acts = extract(model, texts, layers, position="mean_from:1", progress=False)
    anger = ConceptVector("anger", {x: DiffMeans("anger", "neutral").fit(acts.get(x), labels).vector_ for x in layers})
    dirs = {b: u for b, (_, u) in screen_directions(model, anger).items()}
    ids = [list(x) for x in tok(texts)["input_ids"]]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [order[i: i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    pad = tok.pad_token_id

    def bare():
        with torch.inference_mode():
            for b in batches:
                x, mask, pos, _ = pad_batch([ids[i] for i in b], pad, "right", model.device)
                model.base(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=False)

    def screen():
        head_projections(model, ids, dirs, position="last", batch_size=args.batch_size)

    cpu0 = time.process_time()
    _, tb = median_time(bare, args.repeats)
    cpu_bare = (time.process_time() - cpu0) / (args.repeats + 1)  # + 1: the warm-up run
    cpu0 = time.process_time()
    _, ts = median_time(screen, args.repeats)
    cpu_screen = (time.process_time() - cpu0) / (args.repeats + 1)
    t_bare, t_screen = min(tb), min(ts)  # min of the repeats: robust to other work on the machine
    t0 = time.perf_counter()
    res = screen_heads(model, anger, texts, labels, "anger", "neutral", seed=0, batch_size=args.batch_size)
    t_full = time.perf_counter() - t0
    _say(f"screen: {t_screen:.2f} s vs bare forward {t_bare:.2f} s; full screen with null {t_full:.2f} s")
    screening = {"texts": len(ids), "heads": int(len(res.table)), "mean_tokens": float(np.mean([len(s) for s in ids])),
                 "bare_forward_seconds": t_bare, "screen_seconds": t_screen,
                 "bare_texts_per_s": len(ids) / t_bare, "screen_texts_per_s": len(ids) / t_screen,
                 "screen_over_bare_time": t_screen / t_bare, "bare_forward_cpu_seconds": cpu_bare,
                 "screen_cpu_seconds": cpu_screen, "screen_over_bare_cpu": cpu_screen / cpu_bare,
                 "full_screen_seconds": t_full,
                 "full_screen_permutations": res.meta["n_permutations"],
                 "top_heads": [f"{int(r.layer)}.{int(r['head'])}" for _, r in res.table.sort_values("rank").head(8).iterrows()]}

    # (2) k configurations of 8 heads: the screen's top 8 and k - 1 random sets of the same layers
    chosen = list(parse_heads(args.chosen).heads) if args.chosen else res.top(args.heads_per_config)
    randoms, match = random_head_sets(chosen, args.k - 1, n_layers=model.n_layers, n_heads=n_heads, seed=0,
                                      match=args.random_match)
    configs = [HeadConfig("chosen", "chosen", "zero", tuple(chosen))]
    configs += [HeadConfig("random", f"random-{j}", "zero", s) for j, s in enumerate(randoms)]
    prompts = load_dataset("neutral-starts").texts[: args.n_prompts]
    pids = [list(tok(model.chat(p), add_special_tokens=False)["input_ids"]) for p in prompts]
    n, P, stop = args.max_new_tokens, len(pids), eos_ids(model)

    def agree(got_rows, ref_rows, ref_gaps):
        return agreement(got_rows, ref_rows, stop, lambda r, step, _tok: float(ref_gaps[r][step]))

    rows = [c for c in range(len(configs)) for _ in range(P)]
    split = min(a for c in configs for a, _ in c.heads)
    ablation: dict = {"configurations": len(configs), "heads_per_configuration": args.heads_per_config, "prompts": P,
                      "rows": len(rows), "max_new_tokens": n, "prompt_tokens": [len(x) for x in pids],
                      "chosen": [f"{a}.{b}" for a, b in chosen], "random_match": match,
                      "chosen_from": "--chosen" if args.chosen else "the screen's top heads",
                      "lowest_ablated_layer": split,
                      "n_layers": model.n_layers}

    def batched(positions, share_below):
        return decode_configs(model, configs, pids, rows, [p for _ in configs for p in range(P)], max_new_tokens=n,
                              batch_rows=len(rows), positions=positions, share_below=share_below)

    def one_at_a_time(positions):  # the reference: one decode per configuration, its prompts as the rows
        return [decode_configs(model, [c], pids, [0] * P, list(range(P)), max_new_tokens=n, positions=positions)
                for c in configs]

    def bare(chunk):  # the same rows with no head edit at all, `chunk` rows per decode: the batching ceiling
        return [decode_rows(model, pids, [p for _ in configs for p in range(P)][lo: lo + chunk], RowEdits(),
                            Window("all"), max_new_tokens=n, batch_rows=chunk, share_prefill=False)
                for lo in range(0, len(rows), chunk)]

    for positions in args.positions:
        # positions=all: the batched sweep with the blocks below the lowest ablated layer prefilled once per
        # prompt (share_below, the default) and, as the previous method, with a full prefill per row
        ways = {"batched": lambda p=positions: batched(p, True), "one_at_a_time": lambda p=positions: one_at_a_time(p)}
        if positions != "generated":
            ways["batched_full_prefill"] = lambda p=positions: batched(p, False)
            # the ceiling of batching alone: no edits, every block per row, one decode of all rows against one
            # decode per configuration (P rows each); a sweep that edits every prompt cannot share more than
            # the blocks below its lowest edited layer, so beyond this ratio only that sharing can help
            ways["bare_batched"] = lambda: bare(len(rows))
            ways["bare_one_at_a_time"] = lambda: bare(P)
        wall: dict[str, list[float]] = {k: [] for k in ways}
        cpu: dict[str, list[float]] = {k: [] for k in ways}
        out: dict = {}
        for _ in range(args.sweep_repeats):  # interleaved, min of each: robust to other work on the machine
            for name, fn in ways.items():
                t0, c0 = time.perf_counter(), time.process_time()
                out[name] = fn()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
            _say(f"positions={positions}: " + "; ".join(f"{k} {wall[k][-1]:.1f} s wall / {cpu[k][-1]:.1f} s CPU"
                                                       for k in ways))
        alone = out["one_at_a_time"]
        ref_tokens = [t for a in alone for t in a.tokens]
        ref_gaps = [g for a in alone for g in a.gaps]
        t_alone, c_alone = min(wall["one_at_a_time"]), min(cpu["one_at_a_time"])
        res = {"one_at_a_time_seconds": t_alone, "one_at_a_time_cpu_seconds": c_alone,
               "one_at_a_time_seconds_all": wall["one_at_a_time"], "one_at_a_time_cpu_seconds_all": cpu["one_at_a_time"]}
        for name in [k for k in ways if k not in ("one_at_a_time", "bare_batched", "bare_one_at_a_time")]:
            pre = "batched" if name == "batched" else name
            res.update({f"{pre}_seconds": min(wall[name]), f"{pre}_cpu_seconds": min(cpu[name]),
                        f"{pre}_seconds_all": wall[name], f"{pre}_cpu_seconds_all": cpu[name],
                        f"speedup_{pre}_vs_one_at_a_time": t_alone / min(wall[name]),
                        f"speedup_cpu_{pre}_vs_one_at_a_time": c_alone / min(cpu[name]),
                        f"agreement_{pre}_vs_alone": agree(out[name].tokens, ref_tokens, ref_gaps)})
        if "bare_batched" in ways:
            res.update({"bare_batched_seconds": min(wall["bare_batched"]),
                        "bare_one_at_a_time_seconds": min(wall["bare_one_at_a_time"]),
                        "bare_batched_cpu_seconds": min(cpu["bare_batched"]),
                        "bare_one_at_a_time_cpu_seconds": min(cpu["bare_one_at_a_time"]),
                        "batching_ceiling": min(wall["bare_one_at_a_time"]) / min(wall["bare_batched"]),
                        "batching_ceiling_cpu": min(cpu["bare_one_at_a_time"]) / min(cpu["bare_batched"]),
                        "head_edit_overhead": min(wall["batched_full_prefill"]) / min(wall["bare_batched"])})
        res["speedup_vs_one_at_a_time"] = res["speedup_batched_vs_one_at_a_time"]
        res["speedup_cpu_time"] = res["speedup_cpu_batched_vs_one_at_a_time"]
        res["prefill"] = ("unique prompts once, KV cache shared by the rows" if positions == "generated" else
                          (f"blocks 0..{split - 1} once per unique prompt, blocks {split}.. per row (batched); "
                           if split else "every block per row in both: a configuration ablates a layer-0 head, so "
                           "nothing below it is shared (batched); ") + "every block per row (batched_full_prefill)")
        ablation[positions] = res
        if positions == "all":
            all_ref_tokens, all_ref_gaps, all_batched = ref_tokens, ref_gaps, res["batched_seconds"]
    if not args.skip_generate and "all" in args.positions:
        side, tok.padding_side = tok.padding_side, "left"
        enc = tok([model.chat(p) for p in prompts], add_special_tokens=False, return_tensors="pt", padding=True)
        tok.padding_side = side

        def zero(heads):
            def hook(_m, a):
                x = a[0].clone()
                for h in heads:
                    x[..., h * hd:(h + 1) * hd] = 0.0
                return (x,)
            return hook

        t0, c0 = time.perf_counter(), time.process_time()
        gen = []
        for c in configs:
            by_layer: dict[int, list[int]] = {}
            for a, b in c.heads:
                by_layer.setdefault(a, []).append(b)
            hs = [model.attn_out(a).register_forward_pre_hook(zero(b)) for a, b in by_layer.items()]
            try:
                with torch.inference_mode():
                    o = model.hf.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
            finally:
                for h in hs:
                    h.remove()
            gen += o[:, enc["input_ids"].shape[1]:].tolist()
        t_gen, cpu_gen = time.perf_counter() - t0, time.process_time() - c0
        _say(f"transformers.generate, one configuration at a time: {t_gen:.1f} s")
        ablation["all"].update({"hf_generate_one_at_a_time_seconds": t_gen, "hf_generate_cpu_seconds": cpu_gen, "speedup_vs_hf_generate": t_gen / all_batched,
                                "agreement_hf_generate_vs_emoscope_alone": agree(gen, all_ref_tokens, all_ref_gaps)})
    dtype = str(model.dtype).replace("torch.", "")
    lens = [len(x) for x in ids]
    sflops = Flops(model).tokens(sum(lens), ctx=float(np.mean(lens)) / 2).total
    srates = rates_for(model, args.batch_size * int(np.mean(lens)), min_seconds=0.05 if args.smoke else 0.5)
    screening["ceiling"] = ceiling_summary(sflops, srates, dtype, t_bare,
                                           "model.base over the same batches: no hook, no unembedding")
    summaries = [summary(f"head screen, {len(ids)} texts, every head", t_screen, {"bare_forward": t_bare},
                         screening["ceiling"])]
    if "all" in args.positions:
        plen = [len(pids[p]) for _ in configs for p in range(P)]
        fed = [max(len(x) - 1, 0) for x in all_ref_tokens]
        ctx = float(np.mean(plen))
        aflops = (Flops(model).tokens(sum(len(x) for x in pids), split, ctx=ctx / 2)
                  .tokens(sum(plen), model.n_layers - split, ctx=ctx / 2).unembed(len(rows))
                  .tokens(sum(fed), ctx=ctx + n / 2).unembed(sum(fed)).total)
        arates = rates_for(model, len(rows), min_seconds=0.05 if args.smoke else 0.5)
        a = ablation["all"]
        a["ceiling"] = ceiling_summary(aflops, arates, dtype, a.get("bare_batched_seconds"),
                                       "the same rows decoded with no edit in one decode (every block per row)")
        summaries.insert(0, summary(f"head ablation sweep, {len(rows)} rows x {n} tokens (positions all)",
                                    a["batched_seconds"], {"one_at_a_time": a["one_at_a_time_seconds"],
                                                           "hf_generate_one_at_a_time":
                                                           a.get("hf_generate_one_at_a_time_seconds")},
                                    a["ceiling"]))
    payload = {
        "benchmark": "heads", "smoke": args.smoke, "model": model.name, "dtype": str(model.dtype),
        "summary": summaries[0], "more_summaries": summaries[1:],
        "n_layers": model.n_layers, "n_heads": n_heads,
        "screening": screening, "ablation": ablation, "greedy": True, "near_tie_threshold": NEAR_TIE,
        "targets": {"ablation_speedup_vs_one_at_a_time": 2.5},
        "speedup": {p: ablation[p]["speedup_vs_one_at_a_time"] for p in args.positions},
        "speedup_cpu_time": {p: ablation[p]["speedup_cpu_time"] for p in args.positions},
        "speedup_full_prefill": {p: ablation[p].get("speedup_batched_full_prefill_vs_one_at_a_time")
                                 for p in args.positions},
        "speedup_cpu_full_prefill": {p: ablation[p].get("speedup_cpu_batched_full_prefill_vs_one_at_a_time")
                                     for p in args.positions},
        "batching_ceiling": {p: ablation[p].get("batching_ceiling") for p in args.positions},
        "note": "wall times are the min over interleaved repeats; CPU times (process_time) measure the work done and "
                "are the fairer comparison when other jobs share the cores",
        "load_average_start": load_start, "load_average_end": load_avg(), "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else ["heads.py", *argv])]),
    }
    write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
