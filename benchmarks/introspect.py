"""Benchmark: the batched concept-injection logit sweep vs a loop of single full forwards.

Work: smollm2-135m, 10 concepts x 4 layers (0.3, 0.5, 0.67, 0.8) x 5 strengths (1..16), each
on the detection question and the 16 control questions (3,400 cells), 2 threads.

- batched: ``emoscope.introspection.cells.score_cells`` (shared prefix KV cache, early blocks
  replayed from one uninjected pass, batch 64), all cells;
- loop: what a user writes with bare transformers: per cell, a forward hook adds the vector
  over the window and ``model.hf(input_ids)`` runs the whole prompt. At about ten seconds per
  cell on a slow CPU the loop is timed on an evenly spaced sample of cells (``--loop-cells``)
  and its rate extrapolated; the sample also checks that both give the same logit difference;
- ceiling (``_ceiling.py``): the same batches with no hook and no unembedding (the suffix after
  the shared prefix through the blocks after each cell's layer, ``replay_blocks`` standing in for
  the rest), and the FLOP count of that work plus one vocabulary row per cell at the measured
  matmul rate.

    python benchmarks/introspect.py --out bench-results/introspect.json [--dtype bfloat16]
    python benchmarks/introspect.py --smoke --out /tmp/introspect.json      # tiny model, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import Flops, ceiling_summary, rates_for, summary  # noqa: E402
from _common import machine, pin_threads, write_json  # noqa: E402
from _tiny import smoke_model  # noqa: E402


def sweep_arguments(ap: argparse.ArgumentParser) -> None:
    """The work's flags (model, concepts, layers, strengths, batch size), shared with executor.py."""
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default=None, help="model compute dtype (default float32 on CPU), e.g. bfloat16")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model and a few cells: checks it runs")
    ap.add_argument("--concepts", type=int, default=10)
    ap.add_argument("--layers", default="0.3,0.5,0.67,0.8")
    ap.add_argument("--strengths", default="1,2,4,8,16")
    ap.add_argument("--batch-size", type=int, default=64)


def load_sweep(args: argparse.Namespace):  # noqa: ANN201
    """The model and ``sweep_cells`` for parsed ``sweep_arguments``: (model, layers, strengths, *cells)."""
    from emoscope.models import load_model

    if args.smoke:
        args.concepts, args.layers, args.strengths, args.batch_size = 2, "0.3,0.67", "1,4", 16
    model = load_model(smoke_model(args), dtype=args.dtype)
    strengths = [float(s) for s in args.strengths.split(",")]
    layers = model.resolve_layers(args.layers)
    return (model, layers, strengths, *sweep_cells(model, args.concepts, layers, strengths))


def sweep_cells(model, n_concepts: int, layers: list[int], strengths: list[float]):  # noqa: ANN201
    """The benchmark's work: trials, cells (every concept x layer x strength x prompt), the unit
    vector bank, answer tokens, the concept words and the seconds spent building the vectors."""
    import numpy as np

    from emoscope.datasets import load_control_questions, load_word_list
    from emoscope.introspection import build_trials, concept_vectors
    from emoscope.introspection.cells import Injection
    from emoscope.introspection.measure import answer_tokens
    from emoscope.introspection.sweep import resid_norm_profile

    words = [w.word for w in load_word_list("concepts")[:n_concepts]]
    trials = build_trials(model, load_control_questions())
    tokens = answer_tokens(model.tokenizer)
    t0 = time.perf_counter()
    vecs = concept_vectors(model, words, "default", layers=layers)
    t_vectors = time.perf_counter() - t0
    norms = {int(r.layer): float(r.mean_resid_norm) for r in resid_norm_profile(model, trials[0], layers).itertuples()}
    bank, cells = [], []
    for v in vecs:
        for layer in layers:
            u = np.asarray(v[layer], dtype=np.float32)
            bank.append(u / np.linalg.norm(u))
            cells += [Injection(t, layer, len(bank) - 1, s * norms[layer]) for s in strengths for t in range(len(trials))]
    return trials, cells, np.stack(bank), tokens, words, t_vectors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sweep_arguments(ap)
    ap.add_argument("--loop-cells", type=int, default=34, help="cells timed in the single-forward loop")
    ap.add_argument("--max-cells", type=int, default=0, help="time the batched sweep on an even sample (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench-results/introspect.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.loop_cells = 4
    pin_threads(1 if args.smoke else args.threads)

    import numpy as np
    import torch

    from emoscope.introspection import yes_no_diff
    from emoscope.introspection.cells import score_cells
    from emoscope.models.standard import block_output

    model, layers, strengths, trials, cells, bank, tokens, words, t_vectors = load_sweep(args)
    timed = cells
    if args.max_cells and args.max_cells < len(cells):
        timed = [cells[i] for i in np.linspace(0, len(cells) - 1, args.max_cells).round().astype(int)]

    t0 = time.perf_counter()
    scores = score_cells(model, trials, timed, bank, tokens, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t0

    sample = np.linspace(0, len(timed) - 1, min(args.loop_cells, len(timed))).round().astype(int)
    loop_diffs = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in sample:
            c = timed[i]
            tr = trials[c.trial]
            vec = torch.tensor(bank[c.vector], dtype=model.dtype, device=model.device) * c.scale

            def hook(_m, _inp, out, tr=tr, vec=vec):
                h = block_output(out).clone()
                h[:, tr.window_start:] += vec
                return (h, *out[1:]) if isinstance(out, tuple) else h

            handle = model.blocks[c.layer].register_forward_hook(hook)
            try:
                logits = model.hf(input_ids=torch.tensor([tr.ids], device=model.device)).logits[0, -1]
            finally:
                handle.remove()
            loop_diffs.append(float(yes_no_diff(logits, tokens)))
    t_loop = time.perf_counter() - t0

    bare_s, flops = _ceiling_work(model, trials, timed, args.batch_size, scores.prefix_length)
    suffix = float(np.mean([len(t.ids) for t in trials])) - scores.prefix_length
    rates = rates_for(model, int(args.batch_size * suffix), min_seconds=0.05 if args.smoke else 0.5)
    ceiling = ceiling_summary(flops, rates, str(model.dtype).replace("torch.", ""), bare_s,
                              "the same batches, suffix through the blocks after each cell's layer, no hook, "
                              "no unembedding")

    batched_rate = len(timed) / t_batched
    loop_rate = len(sample) / t_loop
    max_diff = float(np.max(np.abs(np.asarray(loop_diffs) - scores.logit_diff[sample])))
    payload = {
        "benchmark": "introspect",
        "work": {"model": model.name, "concepts": len(words), "layers": layers, "strengths": strengths,
                 "prompts": len(trials), "cells_total": len(cells), "cells_timed_batched": len(timed),
                 "prompt_tokens": len(trials[0].ids), "shared_prefix_tokens": scores.prefix_length,
                 "batch_size": args.batch_size},
        "batched": {"seconds": round(t_batched, 2), "cells_per_s": round(batched_rate, 3)},
        "loop_single_full_forward": {"cells_timed": len(sample), "seconds": round(t_loop, 2),
                                     "cells_per_s": round(loop_rate, 4),
                                     "extrapolated_seconds_all_cells": round(len(cells) / loop_rate, 1)},
        "speedup": round(batched_rate / loop_rate, 2),
        "target_speedup": 10.0,
        "max_abs_logit_diff_batched_vs_loop": max_diff,
        "concept_vectors_seconds": round(t_vectors, 2),
        "ceiling": ceiling,
        "summary": summary(f"injection grid, {len(timed)} cells", t_batched,
                           {"loop_single_full_forward": len(timed) / loop_rate}, ceiling),
        "smoke": args.smoke, "dtype": str(model.dtype),
        "machine": machine(),
        "command": "python benchmarks/introspect.py " + " ".join(sys.argv[1:]),
    }
    write_json(args.out, payload)
    tol = 1e-4 if model.dtype == torch.float32 else 0.25  # bf16 (8-bit mantissa) rounds the two paths differently
    return 0 if max_diff < tol else 1


def _ceiling_work(model, trials, cells, batch_size: int, plen: int):  # noqa: ANN202
    """Time the grid's arithmetic with no hook and no unembedding, and count its FLOPs (see the module doc)."""
    import numpy as np
    import torch

    from emoscope.introspection.cells import cell_batches
    from emoscope.models.batching import pad_batch
    from emoscope.models.interventions import Injector, replay_blocks
    from emoscope.models.kvcache import cache_kwargs, fork_cache, prefix_cache

    flops = Flops(model)
    suffix = [t.ids[plen:] for t in trials]
    flops.tokens(sum(map(len, suffix)), ctx=plen + float(np.mean([len(s) for s in suffix])) / 2)  # uninjected pass
    with torch.inference_mode():
        cache = prefix_cache(model, trials[0].ids[:plen])
        with Injector(model) as inj:  # one forward to learn each block's output form
            model.base(input_ids=torch.tensor([trials[0].ids[:2]], device=model.device), use_cache=False)
            forms = dict(inj.forms)
        t0 = time.perf_counter()
        for batch in cell_batches(cells, trials, batch_size, True):
            rows = [cells[i] for i in batch]
            ids, mask, _, _ = pad_batch([suffix[c.trial] for c in rows], model.tokenizer.pad_token_id or 0, "right",
                                        model.device)
            layer = -1 if rows[0].layer is None else rows[0].layer
            full = torch.cat([torch.ones(ids.shape[0], plen, dtype=mask.dtype, device=mask.device), mask], 1)
            kw = cache_kwargs(model.base, fork_cache(cache, ids.shape[0]))
            if layer >= 0:
                value = torch.zeros(*ids.shape, model.d_model, dtype=model.dtype, device=model.device)
                with replay_blocks(model, layer, value, forms):
                    model.base(input_ids=ids, attention_mask=full, use_cache=cache is not None, **kw)
            else:
                model.base(input_ids=ids, attention_mask=full, use_cache=cache is not None, **kw)
            flops.tokens(int(mask.sum()), model.n_layers - layer - 1, ctx=plen + ids.shape[1] / 2)
        bare_s = time.perf_counter() - t0
    flops.unembed(len(cells))
    return bare_s, flops.total


if __name__ == "__main__":
    sys.exit(main())
