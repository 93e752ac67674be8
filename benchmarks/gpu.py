"""The GPU run, as one process (``benchmarks/gpu.sh`` calls it): correctness on the device in
float32 and bfloat16, then the timed benchmarks there.

Checks (``gpu_checks.json``; the process exits 1 if a float32 check fails):

1. extraction parity: ``emoscope.activations.extract`` (batched, padded, every layer, last token)
   against raw forward hooks on every block, one prompt at a time (no padding), per dtype;
2. steering greedy identity: a ``SteeringSweep`` (vector, negated vector and random rows at two
   layers) against each row decoded alone on the device (``decode_rows`` with that row's edit);
   a difference counts only at a near-tie (the row-alone logit gap below the threshold: 1e-3 in
   float32; in bfloat16, whose logits carry 8 bits, 0.1);
3. injection greedy identity: free-text injection answers (greedy) batched against one at a time,
   and the batched injection grid against single full forwards with a raw hook (logit difference);
4. a ``device_map`` split: the first half of the blocks (and the embeddings) on the device, the
   rest on the CPU, steered at one block on each side; its greedy outputs and extraction against
   the model on one device.

Then the timed benchmarks on the device (``extract.py``, ``steer.py``, ``introspect.py``), in
float32 and bfloat16, each with its ceiling, and the table of ``run_all.py``.

    benchmarks/gpu.sh                      # cuda, the embedded model, under 8 minutes on one H100
    benchmarks/gpu.sh --device cpu --smoke # the same script on the CPU with the tiny model (seconds)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import agreement, bench_prompts, machine, sayer, write_json  # noqa: E402
from _tiny import smoke_model  # noqa: E402

_say = sayer("gpu")
NEAR_TIE = {"float32": 1e-3, "bfloat16": 0.1}
TOL = {"float32": 1e-4, "bfloat16": 5e-2}  # extraction, relative to each layer's largest value


def _extraction(model, prompts, tol):  # noqa: ANN001, ANN202
    import numpy as np
    import torch

    from emoscope.activations import extract
    from emoscope.models.standard import block_output

    got = extract(model, prompts, "all", "last", batch_size=16, cache=False, progress=False)
    ref = np.zeros((model.n_layers, len(prompts), model.d_model), np.float32)
    grab: dict[int, torch.Tensor] = {}
    hooks = [b.register_forward_hook(lambda _m, _i, o, i=i: grab.__setitem__(i, block_output(o)[0, -1]))
             for i, b in enumerate(model.blocks)]
    try:
        with torch.inference_mode():
            for j, p in enumerate(prompts):
                model.base(input_ids=torch.tensor([model.tokenizer(p)["input_ids"]], device=model.device),
                           use_cache=False)
                for i in range(model.n_layers):
                    ref[i, j] = grab[i].float().cpu().numpy()
    finally:
        for h in hooks:
            h.remove()
    rel = max(float(np.abs(got.get(i) - ref[i]).max() / np.abs(ref[i]).max()) for i in range(model.n_layers))
    return {"max_rel_diff_vs_raw_hooks": rel, "tolerance": tol, "passed": rel <= tol, "prompts": len(prompts)}


def _steering(model, prompts, layers, n_tokens, near):  # noqa: ANN001, ANN202
    import numpy as np
    import torch

    from emoscope.models.batching import eos_ids
    from emoscope.models.decode import RowEdits, decode_rows
    from emoscope.models.interventions import Window
    from emoscope.steering import SteeringSweep

    rng = np.random.default_rng(0)
    vec = {layer: rng.standard_normal(model.d_model) for layer in layers}
    sweep = SteeringSweep(model, vec, layers, [2.0, 4.0], prompts, max_new_tokens=n_tokens, n_random=2,
                          random_kind="isotropic", scorers=(), target="nrc_joy", unit="raw", progress=False)
    res = sweep.run()
    table, deltas, _ = sweep.plan()
    tok = model.tokenizer
    ids = [list(tok(model.chat(p), add_special_tokens=False)["input_ids"]) if model.has_chat_template
           else list(tok(p)["input_ids"]) for p in prompts]
    stop = eos_ids(model)
    alone, gaps = [], []
    for r in range(len(table)):
        d = {k: torch.as_tensor(v[None], dtype=model.dtype, device=model.device) for k, v in deltas[r].items()}
        dec = decode_rows(model, ids, [int(table.prompt_id[r])], RowEdits(delta=d), Window("generated"),
                          max_new_tokens=n_tokens, batch_rows=1)
        alone.append(dec.tokens[0])
        gaps.append(dec.gaps[0])
    return {"layers": layers, **agreement(res.tokens, alone, stop, lambda r, s, _t: float(gaps[r][s]), near)}


def _injection(model, n_tokens, near):  # noqa: ANN001, ANN202
    import numpy as np
    import torch

    from emoscope.datasets import load_control_questions
    from emoscope.introspection import build_trials, yes_no_diff
    from emoscope.introspection.cells import Injection, score_cells
    from emoscope.introspection.freetext import sample_answers
    from emoscope.introspection.measure import answer_tokens
    from emoscope.models.batching import eos_ids
    from emoscope.models.standard import block_output

    trials = build_trials(model, load_control_questions()[:3])
    tokens = answer_tokens(model.tokenizer)
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((2, model.d_model)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    layers = sorted({model.n_layers // 3, 2 * model.n_layers // 3})
    cells = [Injection(t, layer, v, 8.0) for t in range(len(trials)) for layer in layers for v in range(2)]
    got = score_cells(model, trials, cells, bank, tokens, batch_size=8).logit_diff
    loop = []
    with torch.inference_mode():
        for c in cells:
            tr, vec = trials[c.trial], torch.tensor(bank[c.vector] * c.scale, dtype=model.dtype)

            def hook(_m, _i, out, tr=tr, vec=vec):
                h = block_output(out).clone()
                h[:, tr.window_start:] += vec.to(h.device)
                return (h, *out[1:]) if isinstance(out, tuple) else h

            handle = model.blocks[c.layer].register_forward_hook(hook)
            try:
                loop.append(float(yes_no_diff(model.hf(input_ids=torch.tensor([tr.ids], device=model.device))
                                              .logits[0, -1], tokens)))
            finally:
                handle.remove()
    grid = float(np.max(np.abs(np.asarray(loop) - got)))
    # free text, greedy: every injection's answer batched against each alone
    inj = [(bank[v] * 8.0, layer, 1.0) for layer in layers for v in range(2)] + [(None, None, 0.0)]
    batched = sample_answers(model, trials[0], inj, max_new_tokens=n_tokens, temperature=0.0, batch_size=16)
    single = [sample_answers(model, trials[0], [x], max_new_tokens=n_tokens, temperature=0.0)[0] for x in inj]
    stop = eos_ids(model)
    same = [a[0][1] == b[0][1] for a, b in zip(batched, single, strict=True)]
    return {"grid_cells": len(cells), "grid_max_abs_logit_diff_vs_loop": grid,
            "free_text": {"rows": len(inj), "identical": int(sum(same)), "stop_ids": sorted(stop)},
            "passed_grid": grid < (1e-3 if near < 0.01 else 0.25)}


def _device_map_split(spec, device, prompts, n_tokens):  # noqa: ANN001, ANN202
    """Blocks 0..h-1 (and the embeddings and unembedding) on ``device``, blocks h.. and the final norm on the CPU."""
    from emoscope.models import load_model

    one = load_model(spec, dtype="float32", device=device)
    where = "cuda:0" if device.startswith("cuda") else "cpu"
    half = one.n_layers // 2
    lay = one.layout
    dm = {}
    for name, _ in one.base.named_children():
        full = f"{lay.base}.{name}"
        if full == lay.blocks:
            dm.update({f"{full}.{i}": where if i < half else "cpu" for i in range(one.n_layers)})
        else:
            dm[full] = "cpu" if full == lay.final_norm else where
    for name, _ in one.hf.named_children():
        if name != lay.base.split(".")[0]:
            dm[name] = where
    split = load_model(spec, dtype="float32", device_map=dm)
    devices = sorted({str(p.device) for p in split.hf.parameters()})
    layers = [max(half // 2, 0), half + (one.n_layers - half) // 2]
    steer_one = _steering_tokens(one, prompts, layers, n_tokens)
    steer_split = _steering_tokens(split, prompts, layers, n_tokens)
    from emoscope.activations import extract

    a = extract(one, prompts, "all", "last", cache=False, progress=False)
    b = extract(split, prompts, "all", "last", cache=False, progress=False)
    rel = max(float(abs(a.get(i) - b.get(i)).max() / abs(a.get(i)).max()) for i in range(one.n_layers))
    return {"device_map": dm, "devices": devices, "steered_layers": layers,
            "block_devices": {layer: str(next(split.blocks[layer].parameters()).device) for layer in layers},
            "greedy_identical_rows": int(sum(x == y for x, y in zip(steer_one, steer_split, strict=True))),
            "rows": len(steer_one), "extraction_max_rel_diff": rel}


def _steering_tokens(model, prompts, layers, n_tokens):  # noqa: ANN001, ANN202
    import numpy as np

    from emoscope.steering import SteeringSweep

    rng = np.random.default_rng(2)
    vec = {layer: rng.standard_normal(model.d_model) for layer in layers}
    return SteeringSweep(model, vec, layers, [2.0], prompts, max_new_tokens=n_tokens, n_random=0, scorers=(),
                         target="nrc_joy", unit="raw", progress=False).run().tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--smoke", action="store_true", help="the tiny random model and small sizes")
    ap.add_argument("--skip-benchmarks", action="store_true", help="the checks only")
    ap.add_argument("--out", default="bench-gpu")
    args = ap.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu: no CUDA device is visible; run with --device cpu to check the script on the CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = smoke_model(args)
    from emoscope.models import load_model

    n_prompts, n_tokens = (3, 4) if args.smoke else (4, 24)  # 4 prompts: 100 rows, each also decoded alone
    t_all = time.perf_counter()
    checks: dict = {"device": args.device, "smoke": args.smoke, "model": spec}
    for dtype in ("float32", "bfloat16"):
        t0 = time.perf_counter()
        model = load_model(spec, dtype=dtype, device=args.device)
        prompts = bench_prompts(model.tokenizer, 16 if args.smoke else 64, 20, 40)
        chat = [p[:60] for p in prompts[:n_prompts]]
        layers = sorted({model.n_layers // 3, model.n_layers // 2})
        checks[dtype] = {"extraction": _extraction(model, prompts, TOL[dtype]),
                         "steering": _steering(model, chat, layers, n_tokens, NEAR_TIE[dtype]),
                         "injection": _injection(model, n_tokens, NEAR_TIE[dtype]),
                         "seconds": round(time.perf_counter() - t0, 1)}
        _say(f"{dtype}: {checks[dtype]['extraction']['max_rel_diff_vs_raw_hooks']:.2e} extraction, steering "
             f"{checks[dtype]['steering']['mismatch']} mismatches of {checks[dtype]['steering']['rows']} rows")
        del model
    checks["device_map_split"] = _device_map_split(spec, args.device, chat, n_tokens)
    f32 = checks["float32"]
    checks["passed"] = bool(f32["extraction"]["passed"] and f32["steering"]["mismatch"] == 0
                            and f32["injection"]["passed_grid"]
                            and checks["device_map_split"]["greedy_identical_rows"] == checks["device_map_split"]["rows"])
    checks["seconds"] = round(time.perf_counter() - t_all, 1)
    checks["machine"] = {**machine(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    write_json(out / "gpu_checks.json", checks)
    if args.skip_benchmarks:
        return 0 if checks["passed"] else 1
    import run_all

    smoke = ["--smoke"] if args.smoke else []
    rc = 0
    for dtype in ("float32", "bfloat16"):
        for name, extra in (("extract", []), ("steer", ["--skip-all-positions"] if dtype == "float32" else []),
                            ("introspect", [])):
            rc |= run_all.run_one(name, ["--dtype", dtype, "--out", str(out / f"{name}-{dtype}.json"), *smoke, *extra])
    run_all.main(["--table", str(out)])
    return 1 if rc or not checks["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
