"""Run every benchmark under benchmarks/, write one JSON each and one combined ``bench.json`` into
--out, and print a short table: each workload's time, its baselines, its ceiling on this machine
(``_ceiling.py``) and the fraction of the ceiling reached.

    python benchmarks/run_all.py --out bench-results                # what `make bench` runs
    python benchmarks/run_all.py --smoke --out /tmp/bench-smoke     # every benchmark on a tiny model
    python benchmarks/run_all.py --dtype bfloat16 --only steer extract --out bench-bf16
    python benchmarks/run_all.py --src /tmp/before/src --out bench-before   # another checkout's emoscope
    python benchmarks/run_all.py --table bench-gpu                   # only the table of the JSONs in a folder

Each benchmark runs in its own process (clean memory, its own thread settings), except under
``--smoke`` where they run in this one (shared imports: the whole smoke run takes seconds).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DTYPE_AWARE = {"extract", "steer", "introspect", "patch", "heads", "elicit", "executor"}


def names() -> list[str]:
    """The CPU benchmarks (``gpu.py`` is the GPU run's driver, started by ``gpu.sh``)."""
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith(("_", "run_all")) and p.stem != "gpu")


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return sorted(f for f in line.split() if f.startswith(("avx512", "amx", "avx2", "fma")))


def run_one(name: str, argv: list[str], in_process: bool = True, src: str | None = None) -> int:
    """Run benchmark ``name`` with ``argv``: in this process (its ``main``), or in its own."""
    if in_process:
        import torch

        threads = torch.get_num_threads()
        try:
            return int(importlib.import_module(name).main(argv) or 0)
        except Exception as e:  # one benchmark failing must not hide the others
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        finally:
            torch.set_num_threads(threads)
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    return subprocess.call([sys.executable, str(HERE / f"{name}.py"), *argv], env=env)


def table(rows: list[tuple[str, dict]]) -> str:
    """The printed table: one line per workload."""
    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    head = f"{'benchmark':<19} {'workload':<54} {'emoscope s':>10} {'first baseline: s (emoscope x faster)':<44} " \
           f"{'ceiling s':>10} {'kind':<6} {'of ceiling':>10}"
    lines = [head, "-" * len(head)]
    for name, s in rows:
        base = next((f"{k} {f(v, '.2f')} ({f(s['speedup'].get(k), '.1f')}x)"
                     for k, v in s.get("baselines_s", {}).items()), "")
        frac = s.get("fraction_of_ceiling")
        lines.append(f"{name:<19} {s['workload'][:54]:<54} {f(s['emoscope_s']):>10} {base[:44]:<44} "
                     f"{f(s.get('ceiling_s')):>10} {s.get('ceiling_kind') or '-':<6} "
                     f"{'-' if frac is None else f'{100 * frac:.0f}%':>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--only", nargs="*", help="benchmark names (default: all)")
    ap.add_argument("--smoke", action="store_true", help="every benchmark on a tiny random model, in this process")
    ap.add_argument("--dtype", default=None, help="model compute dtype for the benchmarks that take one")
    ap.add_argument("--src", default=None, help="import emoscope from this source folder (e.g. an older checkout)")
    ap.add_argument("--table", default=None, metavar="DIR", help="print the table of the benchmark JSONs in DIR")
    args = ap.parse_args(argv)
    if args.table:
        found = []
        for path in sorted(Path(args.table).glob("*.json")):
            data = json.loads(path.read_text())
            if isinstance(data.get("summary"), dict) and "workload" in data["summary"]:
                found += [(path.stem, s) for s in [data["summary"], *data.get("more_summaries", [])]]
        print(table(found))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed, rows, per = [], [], {}
    t_all = time.perf_counter()
    for name in args.only or names():
        print(f"== benchmark {name}", flush=True)
        path = out / f"{name}.json"
        bargs = ["--out", str(path), *(["--smoke"] if args.smoke else [])]
        if args.dtype and name in DTYPE_AWARE:
            bargs += ["--dtype", args.dtype]
        t0 = time.perf_counter()
        rc = run_one(name, bargs, args.smoke, args.src)
        if rc or not path.is_file():
            failed.append(name)
            continue
        data = json.loads(path.read_text())
        summaries = [data["summary"], *data.get("more_summaries", [])]
        per[name] = {"seconds": round(time.perf_counter() - t0, 2), "summaries": summaries,
                     "ceiling": data.get("ceiling")}
        rows += [(name, s) for s in summaries]
    from emoscope._io import atomic_write_json

    payload = {"kind": "emoscope-bench", "smoke": args.smoke, "dtype": args.dtype, "src": args.src,
               "benchmarks": per, "failed": failed, "cpu_flags": _cpu_flags(), "cpu_count": os.cpu_count(),
               "seconds": round(time.perf_counter() - t_all, 1),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(out / "bench.json", payload)
    print(table(rows))
    print(f"wrote {out / 'bench.json'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
