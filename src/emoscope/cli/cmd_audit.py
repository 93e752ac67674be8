"""``emoscope audit RUN``: print the findings; exit 1 when a claim does not ship."""

from __future__ import annotations

import argparse
import json

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "audit",
        help="print a run's findings; exit 1 if any claim fails or needs controls",
        description="Print the findings ledger of RUN. Exit status: 0 when every claim ships "
        "(observations never block), 1 when any claim has verdict 'fails' or 'needs controls', "
        "2 when RUN is not a readable run directory.",
    )
    p.add_argument("run_dir", metavar="RUN", help="run directory")
    p.add_argument("--json", action="store_true", help="print the findings as JSON lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emoscope.audit import describe_counts, format_findings
    from emoscope.core.rundir import RunDir

    rd = RunDir.open(args.run_dir)
    m = rd.read_manifest()
    run = rd.findings()
    findings = run.findings
    blocking = [f for f in findings if f.blocks]
    if args.json:
        for f in findings:
            print(json.dumps(f.model_dump(mode="json"), sort_keys=True))
        return 1 if blocking else 0
    print(format_findings(findings))
    print()
    print(f"{m.spec_name} ({m.run_id}, status {m.status}): {len(findings)} findings — "
          + describe_counts(findings, run.n_tested))
    unfinished = [n for n, r in m.ordered_stages() if r.status != "done"]
    if unfinished:
        print("stages not done: " + ", ".join(f"{n} ({m.stages[n].status})" for n in unfinished))
    if blocking:
        print(f"audit: {len(blocking)} claim(s) do not ship: " + ", ".join(f.id for f in blocking))
        return 1
    return 0
