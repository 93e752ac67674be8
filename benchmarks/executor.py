"""Benchmark: the Ray executor against the local executor on the same CPUs.

Work: the 3,400-cell introspection sweep of ``benchmarks/introspect.py`` (smollm2-135m, 10
concepts x 4 layers x 5 strengths x 17 prompts), run as work units (``emoscope.introspection.units``)

- local: ``LocalExecutor`` in this process, torch on ``--threads`` threads (the default run);
- ray: a local Ray on the same CPUs (``ray.init(num_cpus=--threads)``), ``--threads`` workers of
  one CPU and one torch thread each; every worker loads the model itself. Ray's start-up (``ray.init``)
  is reported separately; the Ray time includes the workers' model loading.

Both store their units in a temporary folder, as a run does. Reported: seconds, the ratio
ray/local (target: within 15%, i.e. <= 1.15, with model loading), units/s per worker, and the
largest difference between the two executors' logit differences (one thread per worker against
two threads locally can change float rounding, nothing else).

    python benchmarks/executor.py --out bench-results/executor.json
    python benchmarks/executor.py --smoke --out /tmp/executor.json   # tiny model, local executor only, seconds
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceiling import summary  # noqa: E402
from _common import machine, pin_threads, write_json  # noqa: E402
from introspect import load_sweep, sweep_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sweep_arguments(ap)
    ap.add_argument("--threads", type=int, default=2, help="CPUs: local torch threads, and Ray workers")
    ap.add_argument("--skip-ray", action="store_true", help="the local executor only (--smoke implies it)")
    ap.add_argument("--out", default="bench-results/executor.json")
    args = ap.parse_args(argv)
    pin_threads(1 if args.smoke else args.threads)

    import numpy as np

    from emoscope.core.executor import Execution, LocalExecutor, RayExecutor
    from emoscope.introspection.units import cell_units, score_units
    from emoscope.models import load_model

    model, layers, strengths, trials, cells, bank, tokens, words, _ = load_sweep(args)
    units, _ = cell_units(model, trials, cells, bank, tokens, batch_size=args.batch_size)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        local = score_units(model, trials, cells, bank, tokens, batch_size=args.batch_size,
                            execution=Execution(LocalExecutor(), Path(tmp) / "local"))
        t_local = time.perf_counter() - t0
        if args.smoke or args.skip_ray:
            payload = {"benchmark": "executor", "smoke": args.smoke,
                       "work": {"model": model.name, "cells": len(cells), "units": len(units)},
                       "local": {"seconds": round(t_local, 3), "units_per_s": round(len(units) / t_local, 3)},
                       "ray": {"skipped": "--smoke / --skip-ray"},
                       "summary": summary(f"introspection grid as {len(units)} work units, local executor", t_local,
                                          {}, None),
                       "machine": machine()}
            write_json(args.out, payload)
            return 0

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - t0
        try:
            ex = RayExecutor(workers=args.threads, cpus_per_worker=1)
            setup = functools.partial(load_model, args.model, dtype=args.dtype)
            t0 = time.perf_counter()
            remote = score_units(model, trials, cells, bank, tokens, batch_size=args.batch_size,
                                 execution=Execution(ex, Path(tmp) / "ray", setup, f"model:{args.model}"))
            t_ray = time.perf_counter() - t0
            per_worker = next(iter(ex.units_per_worker().values()))
            setup_s = next(iter(ex.setup_seconds.values()))
            ex.close()
        finally:
            ray.shutdown()

    compute = t_ray - max(setup_s)
    payload = {
        "benchmark": "executor",
        "work": {"model": model.name, "concepts": len(words), "layers": layers, "strengths": strengths,
                 "prompts": len(trials), "cells": len(cells), "units": len(units), "batch_size": args.batch_size},
        "local": {"seconds": round(t_local, 2), "torch_threads": args.threads,
                  "units_per_s": round(len(units) / t_local, 3)},
        "ray": {"seconds_with_model_loading": round(t_ray, 2), "workers": len(per_worker),
                "worker_model_load_seconds": [round(x, 2) for x in setup_s],
                "seconds_after_model_loading": round(compute, 2),
                "units_per_worker": per_worker,
                "units_per_s_per_worker": [round(n / compute, 3) for n in per_worker],
                "startup_seconds_ray_init": round(t_init, 2)},
        "ratio_ray_over_local": round(t_ray / t_local, 3),
        "target_ratio": 1.15,
        "max_abs_logit_diff_ray_vs_local": float(np.max(np.abs(remote.logit_diff - local.logit_diff))),
        "summary": summary(f"introspection grid as {len(units)} work units: Ray against local", t_local,
                           {"ray_with_model_loading": t_ray}, None),
        "machine": machine(),
        "command": "python benchmarks/executor.py " + " ".join(sys.argv[1:]),
    }
    write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
