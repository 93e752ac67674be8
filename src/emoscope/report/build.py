"""Assemble ``report.html`` from a run directory: one file, opens offline.

The page reads top to bottom as a reader needs it: the run summary (sentences written from
the findings) beside the key figure; the findings at a glance, their evidence folded beneath
each row; the papers' numbers beside the run's (yardsticks); one section per stage, figure
first; then what no stage claims, the manifest and the spec. The HTML comes from Jinja2
templates under ``templates/`` (autoescaped: every piece of text is escaped); figures are
inlined as data URIs and the CSS is inlined, so the page links to nothing outside itself
except the run's own CSV files (relative links).
"""

from __future__ import annotations

import functools
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from emoscope import __version__
from emoscope._io import atomic_write_text
from emoscope.audit import describe_counts, verdict_counts
from emoscope.audit.checklist import checklist_version, rules_out
from emoscope.core.manifest import now
from emoscope.report.blocks import Figure, figure_block, frame_block, table_block
from emoscope.report.glance import FindingRow, finding_rows
from emoscope.report.headline import run_summary
from emoscope.report.runview import RunView, split_name
from emoscope.report.sections import (
    DRAWS_CAPTION,
    DRAWS_PREFIX,
    Group,
    build_sections,
    draws_owner,
    load_section_data,
    slug,
    tables_shown_by_sections,
)
from emoscope.report.yardsticks import RULE, evaluate

__all__ = ["write_report", "render_report", "template_env", "report_css"]


@functools.lru_cache(maxsize=1)
def template_env() -> Any:
    """The Jinja2 environment of the report's templates (autoescape on, undefined names are errors)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("emoscope.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["slug"] = slug
    return env


@functools.lru_cache(maxsize=1)
def report_css() -> str:
    """The report's stylesheet (inlined into every page, the comparison page too)."""
    return resources.files("emoscope.report").joinpath("report.css").read_text("utf-8")


def _renamer(view: RunView) -> Any:
    """Text with the run's model names (often paths) replaced by their short keys."""
    pairs = sorted(((n, view.label(n)) for n in view.models if view.label(n) != n), key=lambda p: -len(p[0]))

    def rename(text: Any) -> str:
        text = "" if text is None else str(text)
        for name, key in pairs:
            text = text.replace(name, key)
        return text

    return rename


_VERDICT_ORDER = {"ships": 0, "fails": 1, "needs controls": 2, "holds": 3}


def _row_order(r: FindingRow) -> tuple[int, int, int]:
    """Claims first (ships, fails, needs controls), then observations; descriptive ones last
    (a stable sort keeps ledger order inside each group)."""
    f = r.finding
    return (0 if f.is_claim else 1, int(f.kind == "extraction"), _VERDICT_ORDER.get(f.verdict or "", 4))


def _attach_draws(view: RunView, rows: list[FindingRow]) -> set[str]:
    """Put each ``draws_`` figure beside the finding it belongs to; the figures placed."""
    by_id = {r.finding.id: r for r in rows}
    placed: set[str] = set()
    for stage, rec in view.stages():
        ids = [f.id for f in view.stage_findings(stage)]
        for name in rec.figures:
            if DRAWS_PREFIX not in name:
                continue
            owner = draws_owner(name, stage, ids)
            block = figure_block(view, name, DRAWS_CAPTION)
            if owner is not None and block is not None:
                by_id[owner].figures.append(block)
                placed.add(name)
    return placed


def _key_figure(view: RunView, groups: list[Group]) -> Figure | None:
    """The figure of the stage behind the run's leading finding (the first claim that ships, else
    the first that fails, else the first observation); else the first key figure of the run."""
    fs = view.findings
    lead = next((f for f in fs if f.is_claim and f.verdict == "ships"), None) \
        or next((f for f in fs if f.is_claim and f.verdict == "fails"), None) \
        or next((f for f in fs if f.kind not in ("extraction",)), None)
    sections = [s for g in groups for s in g.sections]
    across = [s for s in sections if s.model is None]
    if view.multi_model and any(s.key_figures for s in across):  # the comparison is the point of the run
        return next(s.key_figures[0] for s in across if s.key_figures)
    if lead is not None:
        for s in sections:
            if s.stage == lead.provenance.stage and s.key_figures:
                return s.key_figures[0]
    return next((s.key_figures[0] for s in across + sections if s.key_figures), None)


def _other(view: RunView) -> dict[str, Any]:
    owned_t, owned_f = view.owned()
    shown = set(tables_shown_by_sections())  # e.g. placebo rates: their own section shows them
    figs = [b for f in view.figure_names if f not in owned_f and split_name(f, view.keys)[1] not in shown
            and (b := figure_block(view, f)) is not None]
    tables = [b for t in view.table_names if t not in owned_t and split_name(t, view.keys)[1] not in shown
              and (b := table_block(view, t)) is not None]
    return {"figures": figs, "tables": tables}


def _manifest(view: RunView) -> dict[str, Any]:
    import pandas as pd

    m = view.manifest
    env, hw = m.environment, m.hardware
    pk = env.get("packages", {})
    git = env.get("git", {}) or {}
    facts = [
        ("emoscope", pk.get("emoscope")), ("torch", pk.get("torch")), ("transformers", pk.get("transformers")),
        ("numpy", pk.get("numpy")), ("python", env.get("python")), ("platform", env.get("platform")),
        ("git revision", git.get("revision") or "unknown"), ("git dirty", git.get("dirty")),
        ("CPUs", hw.get("cpu_count")), ("torch threads", hw.get("torch_threads", "torch not loaded")),
        ("GPUs", ", ".join(hw.get("gpus") or []) or "none"), ("seeds", json.dumps(m.seeds, sort_keys=True)),
    ]
    facts += [(f"model {view.label(n)}", ", ".join(f"{k}={v}" for k, v in d.items())) for n, d in m.models.items()]
    facts += [(f"dataset {n}", ", ".join(f"{k}={v}" for k, v in d.items())) for n, d in m.datasets.items()]
    timing = pd.DataFrame([{"stage": n, "status": r.status, "attempts": r.attempts, "seconds": r.seconds,
                            "findings": len(r.findings), "started": r.started_at, "finished": r.finished_at}
                           for n, r in m.ordered_stages()])
    raw = json.dumps(m.model_dump(mode="json"), indent=2, sort_keys=True)
    return {"facts": [(k, "" if v is None else str(v)) for k, v in facts],
            "timing": frame_block(view, timing, "manifest", title="stages", href="manifest.json"), "raw": raw}


def _legend(view: RunView) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for f in view.findings:
        for c in f.controls:
            text = rules_out(c.name)
            if text and c.name not in seen:
                seen[c.name] = text
    return list(seen.items())


def _nav(groups: list[Group], has_yardsticks: bool) -> list[tuple[str, str]]:
    items = [("summary", "Summary"), ("findings", "Findings")]
    if has_yardsticks:
        items.append(("yardsticks", "Against the papers"))
    for g in groups:
        if g.title:  # a multi-model run: one link per model, then the stages across models
            items.append(("group-" + slug(g.model or "run"), g.title))
        else:
            items += [(s.anchor, s.stage) for s in g.sections]
    return items + [("manifest", "Manifest"), ("spec", "Spec")]


def render_report(run_dir: str | os.PathLike[str]) -> str:
    """The report of ``run_dir`` as one HTML string (see ``write_report``)."""
    load_section_data()
    view = RunView.load(run_dir)
    rename = _renamer(view)
    m = view.manifest
    rows = sorted(finding_rows(view.findings), key=_row_order)
    stage_anchor = {n: "stage-" + slug(n) for n, _ in view.stages()}
    for r in rows:
        r.observation = rename(r.observation)
        r.stage_anchor = stage_anchor.get(r.stage, "")
        r.finding = r.finding.model_copy(update={"claim": rename(r.finding.claim) if r.finding.claim else None})
    placed = _attach_draws(view, rows)
    groups = build_sections(view, placed)
    for g in groups:
        for s in g.sections:
            s.lead = rename(s.lead)
    yard, yard_err = evaluate(view)
    git = m.environment.get("git", {}) or {}
    rev = (git["revision"][:12] if git.get("revision") else "no git revision") + (" (dirty)" if git.get("dirty") else "")
    stages_done = sum(r.status == "done" for r in m.stages.values())
    meta = (f"run {m.run_id} · {m.status} · {stages_done} of {len(m.stages)} stages done · started {m.created_at} · "
            f"emoscope {__version__} · {rev}")
    if view.multi_model:
        meta += " · models " + ", ".join(view.keys)
    claims = verdict_counts(view.findings, claims_only=True)
    ctx = {
        "run": {"title": m.spec_name, "meta": meta, "description": str(view.spec.get("description") or ""),
                "folder": view.rd.root.name},
        "nav": _nav(groups, bool(yard or yard_err)),
        "summary": run_summary(view.findings, rename),
        "counts": {"claims": [(v, n) for v, n in claims.items() if n],
                   "holds": sum(f.verdict == "holds" for f in view.findings if not f.is_claim),
                   "line": describe_counts(view.findings, view.n_tested)},
        "key_figure": _key_figure(view, groups),
        "rows": rows, "legend": _legend(view), "checklist": checklist_version(),
        "yardsticks": yard, "yardstick_error": yard_err, "rule": RULE,
        "groups": groups, "rename": rename, "other": _other(view), "manifest": _manifest(view),
        "spec_text": view.spec_text, "version": __version__, "written": now(), "css": report_css(),
    }
    return template_env().get_template("report.html").render(**ctx)


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN/report.html`` (atomically) and return its path.

    >>> write_report("runs/demo")                              # doctest: +SKIP
    PosixPath('runs/demo/report.html')
    """
    from emoscope.core.rundir import RunDir

    rd = RunDir(run_dir)
    html_text = render_report(rd.root)
    return atomic_write_text(rd.report_path, html_text)

