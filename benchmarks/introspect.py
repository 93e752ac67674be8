"""Benchmark: the batched concept-injection logit sweep vs a loop of single full forwards.

Work: smollm2-135m, 10 concepts x 4 layers (0.3, 0.5, 0.67, 0.8) x 5 strengths (1..16), each
on the detection question and the 16 control questions (3,400 cells), 2 threads.

- batched: ``emoscope.introspection.score_cells`` (shared prefix KV cache, early blocks
  replayed from one uninjected pass, batch 64), all cells;
- loop: what a user writes with bare transformers: per cell, a forward hook adds the vector
  over the window and ``model.hf(input_ids)`` runs the whole prompt. At about ten seconds per
  cell on a slow CPU the loop is timed on an evenly spaced sample of cells (``--loop-cells``)
  and its rate extrapolated; the sample also checks that both give the same logit difference.

    python benchmarks/introspect.py --out bench-results/introspect.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, pin_threads, write_json  # noqa: E402


def sweep_arguments(ap: argparse.ArgumentParser) -> None:
    """The work's flags (model, concepts, layers, strengths, batch size), shared with executor.py."""
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concepts", type=int, default=10)
    ap.add_argument("--layers", default="0.3,0.5,0.67,0.8")
    ap.add_argument("--strengths", default="1,2,4,8,16")
    ap.add_argument("--batch-size", type=int, default=64)


def load_sweep(args: argparse.Namespace):  # noqa: ANN201
    """The model and ``sweep_cells`` for parsed ``sweep_arguments``: (model, layers, strengths, *cells)."""
    from emoscope.models import load_model

    model = load_model(args.model)
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


def main() -> int:
    ap = argparse.ArgumentParser()
    sweep_arguments(ap)
    ap.add_argument("--loop-cells", type=int, default=34, help="cells timed in the single-forward loop")
    ap.add_argument("--max-cells", type=int, default=0, help="time the batched sweep on an even sample (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench-results/introspect.json")
    args = ap.parse_args()
    pin_threads(args.threads)

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
            vec = torch.tensor(bank[c.vector]) * c.scale

            def hook(_m, _inp, out, tr=tr, vec=vec):
                h = block_output(out).clone()
                h[:, tr.window_start:] += vec
                return (h, *out[1:]) if isinstance(out, tuple) else h

            handle = model.blocks[c.layer].register_forward_hook(hook)
            try:
                logits = model.hf(input_ids=torch.tensor([tr.ids])).logits[0, -1]
            finally:
                handle.remove()
            loop_diffs.append(float(yes_no_diff(logits, tokens)))
    t_loop = time.perf_counter() - t0

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
        "machine": machine(),
        "command": "python benchmarks/introspect.py " + " ".join(sys.argv[1:]),
    }
    write_json(args.out, payload)
    return 0 if max_diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
