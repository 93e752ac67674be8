"""Benchmark: ``emoscope run cross-model`` (SmolLM2-135M and Gemma-3-270M) timed by stage.

Target: within 10 minutes on a 2-core machine with a warm model cache (the GGUF weights already
dequantised under $EMOSCOPE_CACHE). The activation cache is either kept (``--warm-activations``:
what a second run sees) or pointed at an empty folder (default: every extraction is done once,
the case the target is about). Stage times come from the run's manifest; the process CPU time
and the load average before and after are recorded, since other work on a shared machine slows
every stage (CPU seconds / threads is what the run would take on idle cores).

    python benchmarks/cross_model.py --out bench-results/cross_model.json
    python benchmarks/cross_model.py --smoke --out /tmp/cross_model.json   # two tiny models, seconds

``--smoke`` runs a cut-down spec (extract, vectors, crossmodel on two copies of the tiny random
model, few permutations) so the benchmark's code runs end to end in the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import summary  # noqa: E402
from _common import machine, pin_threads, write_json  # noqa: E402
from _tiny import tiny_model_dir  # noqa: E402


def _smoke_spec(tmp: Path):  # noqa: ANN202
    """Two copies of the tiny model (two names), the cross-model stages, few permutations."""
    from emoscope.runs.spec import parse_spec

    a = tiny_model_dir()
    b = tmp / "tiny-b"
    shutil.copytree(a, b)
    import json

    from emoscope.datasets import load_dataset

    ds, per = load_dataset("emotions-12"), {}
    rows = [{"text": t, "label": y} for t, y in zip(ds.texts, ds.labels, strict=True)
            if per.setdefault(y, []).append(t) or len(per[y]) <= 6]
    data = tmp / "emotions-small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    neutral = tmp / "neutral-small.txt"
    neutral.write_text("\n".join(load_dataset("neutral-corpus").texts[:40]) + "\n")
    return parse_spec({"name": "xm-smoke", "model": str(a), "models": [str(b)], "dataset": str(data), "seed": 0,
                       "stages": ["extract", "vectors", "crossmodel"],
                       "extract": {"layers": "all", "position": "last"},
                       "crossmodel": {"n_perm": 99, "n_pairings": 20, "sweep_depths": [0.34],
                                      "neutral": str(neutral)}}, source="smoke")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="cross-model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-activations", action="store_true",
                    help="keep the activation cache (default: a fresh one, so every extraction is timed)")
    ap.add_argument("--run-dir", default=None, help="where the run goes (default: a temporary folder, removed)")
    ap.add_argument("--smoke", action="store_true", help="two tiny random models, a cut-down spec: checks it runs")
    ap.add_argument("--out", default="bench-results/cross_model.json")
    args = ap.parse_args(argv)
    pin_threads(1 if args.smoke else args.threads)

    from emoscope.models import load_model
    from emoscope.runs import load_spec, run_spec
    from emoscope.runs.runner import stage_keys

    tmp = Path(tempfile.mkdtemp(prefix="xm-bench-"))
    spec = _smoke_spec(tmp) if args.smoke else load_spec(args.spec)
    if not args.warm_activations:
        # models stay warm (their dequantised weights live in the real cache); activations start cold
        real = Path(os.environ.get("EMOSCOPE_CACHE", Path.home() / ".cache" / "emoscope"))
        cache = tmp / "cache"
        cache.mkdir()
        for sub in ("models", "gguf", "hashes.json"):
            if (real / sub).exists():
                (cache / sub).symlink_to(real / sub)
        os.environ["EMOSCOPE_CACHE"] = str(cache)
    t_load = time.perf_counter()
    for m in spec.all_models:  # warm: weights dequantised once before; this times the load alone
        load_model(m)
    t_load = time.perf_counter() - t_load
    out = Path(args.run_dir) if args.run_dir else tmp / "run"
    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    rd = run_spec(spec, out, log=lambda msg: print(msg, file=sys.stderr))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = rd.read_manifest()
    stages = {k: m.stages[k].seconds for k in stage_keys(spec)}
    payload = {
        "benchmark": "cross_model", "smoke": args.smoke, "spec": spec.name,
        "summary": summary(f"emoscope run {spec.name}: {len(spec.all_models)} models, every stage", wall, {}, None), "models": spec.all_models, "dataset": spec.dataset,
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "target_seconds": 600,
        "within_target": wall <= 600,
        "model_load_seconds_separately": round(t_load, 1),
        "stage_seconds": stages, "activation_cache": "warm" if args.warm_activations else "cold",
        "loadavg_before": load0, "loadavg_after": os.getloadavg(), "machine": machine(),
        "stage_summaries": {k: m.stages[k].summary for k in stage_keys(spec)},
    }
    write_json(args.out, payload)
    if not args.run_dir:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
