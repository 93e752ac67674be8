"""Benchmark: bfloat16 against float32 on a whole steering run (or the demo), and whether the
findings move.

Runs ``emoscope steer`` (default: ``--emotion anger`` on smollm2-135m, 4 prompts, 2 random vectors
per kind, 16 new tokens, so that ``make bench`` stays short where bf16 is slow; ``--claim``: 40
prompts and the command's defaults otherwise, the claim-sized sweep) or the ``demo`` spec (``--demo``) twice,
``--dtype float32`` then ``bfloat16``, each timed (wall and process CPU time), and compares:

- the findings: verdict, the chosen cell (the finding's metric names its layer and strength),
  value and p, finding by finding;
- per output row of the steering table: the correlation of the target score and of the
  perplexity between the two dtypes, and the share of rows whose greedy tokens are identical.

bfloat16 is the fast path only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX; the
JSON records the CPU's flags and both matmul rates): on a CPU without it bf16 matmuls are
emulated and several times slower than float32.

    python benchmarks/dtypes.py --out bench-results/dtypes.json           # 4 prompts, a short sweep
    python benchmarks/dtypes.py --claim --out bench-results/dtypes-claim.json
    python benchmarks/dtypes.py --demo --out bench-results/dtypes-demo.json
    python benchmarks/dtypes.py --smoke --out /tmp/dtypes.json             # tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import rates_for, summary  # noqa: E402
from _common import load_avg, machine, pin_threads, sayer, write_json  # noqa: E402
from _tiny import smoke_model  # noqa: E402

_say = sayer("dtypes")
DTYPES = ("float32", "bfloat16")
_CELL = re.compile(r"at layer (-?\d+), strength (-?[\d.]+)")


def _run(argv: list[str], out: Path) -> tuple[float, float]:
    from emoscope.cli.main import main

    t0, c0 = time.perf_counter(), time.process_time()
    rc = main(["-q", *argv, "--out", str(out)])
    if rc:
        raise SystemExit(f"dtypes: the run {' '.join(argv)} failed (exit {rc})")
    return time.perf_counter() - t0, time.process_time() - c0


def _findings(run: Path) -> list[dict]:
    rows = []
    for line in (run / "findings.jsonl").read_text().splitlines():
        f = json.loads(line)
        obs = f.get("observation") or {}
        cell = _CELL.search(obs.get("metric", ""))
        rows.append({"id": f["id"], "kind": f["kind"], "verdict": f["verdict"], "value": obs.get("value"),
                     "p": obs.get("p_value"), "cell": cell.group(0) if cell else None})
    return rows


def compare(a: Path, b: Path) -> dict:
    """Findings and steering rows of run ``a`` (float32) against run ``b`` (bfloat16)."""
    import numpy as np
    import pandas as pd

    fa, fb = _findings(a), {f["id"]: f for f in _findings(b)}
    per = [{"id": f["id"], "kind": f["kind"], "verdict": [f["verdict"], fb.get(f["id"], {}).get("verdict")],
            "cell": [f["cell"], fb.get(f["id"], {}).get("cell")], "value": [f["value"], fb.get(f["id"], {}).get("value")],
            "p": [f["p"], fb.get(f["id"], {}).get("p")]} for f in fa]
    out = {"findings": per, "findings_a": len(fa), "findings_b": len(fb),
           "same_verdicts": sum(p["verdict"][0] == p["verdict"][1] for p in per),
           "same_cells": sum(p["cell"][0] == p["cell"][1] for p in per)}
    paths = [next(iter(sorted(r.glob("tables/*steer_outputs.csv"))), None) for r in (a, b)]
    if all(paths):
        key = ["kind", "vector", "layer", "strength", "prompt_id", "seed"]
        ta, tb = (pd.read_csv(p) for p in paths)
        m = ta.merge(tb, on=key, suffixes=("_a", "_b"))
        rows = {"rows": len(m), "identical_tokens": float((m.token_ids_a.astype(str) == m.token_ids_b.astype(str)).mean())}
        for col in ("target_score", "perplexity", "target_change"):
            if f"{col}_a" in m:
                x, y = m[f"{col}_a"].to_numpy(float), m[f"{col}_b"].to_numpy(float)
                ok = np.isfinite(x) & np.isfinite(y)
                sd = x[ok].std() > 0 and y[ok].std() > 0
                rows[f"corr_{col}"] = float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 2 and sd else None
        out["rows"] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--emotion", default="anger")
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--n-random", type=int, default=2, help="random vectors per kind (--claim: the steer default)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="(--claim: the default, 32)")
    ap.add_argument("--claim", action="store_true", help="the claim-sized sweep: 40 prompts, defaults otherwise")
    ap.add_argument("--demo", action="store_true", help="the demo spec instead of one steering run")
    ap.add_argument("--keep", default=None, help="keep the two run directories under this folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="the tiny random model, a few rows: checks it runs")
    ap.add_argument("--only", choices=DTYPES, default=None,
                    help="run one dtype and time it, with no comparison (bf16 where it is emulated takes hours "
                         "at claim size)")
    ap.add_argument("--dtype", default=None, help=argparse.SUPPRESS)  # run_all passes it; both dtypes run here
    ap.add_argument("--out", default="bench-results/dtypes.json")
    args = ap.parse_args(argv)
    pin_threads(1 if args.smoke else args.threads)
    model = smoke_model(args)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dtypes-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    load0 = load_avg()
    n_prompts = 40 if args.claim else args.n_prompts
    extra = ["--n-prompts", str(n_prompts)] + ([] if args.claim else ["--n-random", str(args.n_random),
                                                                     "--max-new-tokens", str(args.max_new_tokens)])
    if args.smoke:  # a small labelled set and one random kind: the stage's own extraction stays short
        extra = ["--n-prompts", "3", "--n-random", "2", "--max-new-tokens", "4", "--random-kind", "isotropic",
                 "--dataset", _small_dataset(root)]
    times, runs = {}, {}
    dtypes = (args.only,) if args.only else DTYPES
    for dt in dtypes:
        runs[dt] = root / dt
        shutil.rmtree(runs[dt], ignore_errors=True)
        if args.demo:
            argv_dt = ["run", _demo_spec(root, model, dt)]
        else:
            argv_dt = ["steer", "--model", model, "--emotion", args.emotion, *extra, "--dtype", dt]
        _say(f"{dt}: {' '.join(argv_dt)}")
        times[dt] = _run(argv_dt, runs[dt])
        _say(f"{dt}: {times[dt][0]:.1f} s wall, {times[dt][1]:.1f} s CPU")
    result = compare(runs["float32"], runs["bfloat16"]) if len(dtypes) == 2 else None
    from emoscope.models import load_model

    rates = rates_for(load_model(model), 256, min_seconds=0.05 if args.smoke else 0.5)
    payload = {
        "benchmark": "dtypes", "smoke": args.smoke, "model": model, "workload": "demo" if args.demo else "steer",
        "n_prompts": None if args.demo else (3 if args.smoke else n_prompts),
        "seconds": {dt: round(times[dt][0], 2) for dt in dtypes},
        "cpu_seconds": {dt: round(times[dt][1], 2) for dt in dtypes},
        "bf16_speedup": times["float32"][0] / times["bfloat16"][0] if len(dtypes) == 2 else None,
        "matmul_gflops_256_rows": rates, "comparison": result,
        "summary": (summary(f"{'demo' if args.demo else 'steer run'} in bfloat16 (baseline: the same in float32)",
                            times["bfloat16"][0], {"float32": times["float32"][0]}, None) if len(dtypes) == 2
                    else f"{'demo' if args.demo else 'steer run'} in {dtypes[0]}: {times[dtypes[0]][0]:.1f} s"),
        "load_average": [load0, load_avg()], "machine": machine(),
        "runs": {dt: str(runs[dt]) for dt in dtypes} if args.keep else None,
    }
    write_json(args.out, payload)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _small_dataset(root: Path) -> str:
    """Twelve anger and twelve neutral texts of emotions-basic, as a JSONL file."""
    from emoscope.datasets import load_dataset

    ds = load_dataset("emotions-basic")
    rows = [{"text": t, "label": y} for lab in ("anger", "neutral")
            for t, y in [(t, y) for t, y in zip(ds.texts, ds.labels, strict=True) if y == lab][:12]]
    path = root / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _demo_spec(root: Path, model: str, dtype: str) -> str:
    """The built-in demo spec with ``model_dtype`` set (and the model swapped under ``--smoke``)."""
    import yaml

    from emoscope.runs import load_spec

    data = load_spec("demo").to_dict()
    data["model_dtype"] = dtype
    if model != "smollm2-135m":
        data["model"] = model
    path = root / f"demo-{dtype}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
