"""Benchmark: ``emoscope run cross-model`` (SmolLM2-135M and Gemma-3-270M) timed by stage.

Target: within 10 minutes on a 2-core machine with a warm model cache (the GGUF weights already
dequantised under $EMOSCOPE_CACHE). The activation cache is either kept (``--warm-activations``:
what a second run sees) or pointed at an empty folder (default: every extraction is done once,
the case the target is about). Stage times come from the run's manifest; the process CPU time
and the load average before and after are recorded, since other work on a shared machine slows
every stage (CPU seconds / threads is what the run would take on idle cores).

    python benchmarks/cross_model.py --out bench-results/cross_model.json
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
from _common import machine, pin_threads, write_json  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="cross-model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-activations", action="store_true",
                    help="keep the activation cache (default: a fresh one, so every extraction is timed)")
    ap.add_argument("--run-dir", default=None, help="where the run goes (default: a temporary folder, removed)")
    ap.add_argument("--out", default="bench-results/cross_model.json")
    args = ap.parse_args()
    pin_threads(args.threads)

    from emoscope.models import load_model
    from emoscope.runs import load_spec, run_spec
    from emoscope.runs.runner import stage_keys

    spec = load_spec(args.spec)
    tmp = Path(tempfile.mkdtemp(prefix="xm-bench-"))
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
        "benchmark": "cross_model", "spec": spec.name, "models": spec.all_models, "dataset": spec.dataset,
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "target_seconds": 600,
        "within_target": wall <= 600,
        "model_load_seconds_separately": round(t_load, 1),
        "stage_seconds": stages, "activation_cache": "warm" if args.warm_activations else "cold",
        "loadavg_before": load0, "loadavg_after": os.getloadavg(), "machine": machine(),
        "summary": {k: m.stages[k].summary for k in stage_keys(spec)},
    }
    write_json(args.out, payload)
    if not args.run_dir:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
