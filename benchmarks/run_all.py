"""Run every benchmark under benchmarks/ and write one JSON file each into --out."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--only", nargs="*", help="benchmark names (default: all)")
    args = ap.parse_args()
    names = args.only or sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith(("_", "run_all")))
    failed = []
    for name in names:
        print(f"== benchmark {name}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py"), "--out", str(Path(args.out) / f"{name}.json")])
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
