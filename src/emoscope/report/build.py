"""Assemble ``report.html`` from a run directory: one file, opens offline.

Figures are inlined as base64 images, the CSS is inlined, and the page links to nothing
outside itself (anchors only).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from emoscope import __version__
from emoscope._io import atomic_write_text
from emoscope.audit import Finding, describe_counts, verdict_counts
from emoscope.audit.checklist import checklist_version, rules_out
from emoscope.core.manifest import Manifest, StageRecord, now
from emoscope.core.rundir import RunDir
from emoscope.report.render import badge, csv_table, data_table, esc, figure, findings_table, slug

__all__ = ["write_report", "render_report"]


def _css() -> str:
    return resources.files("emoscope.report").joinpath("report.css").read_text("utf-8")


def _header(m: Manifest, description: str, findings: list[Finding]) -> str:
    claims = verdict_counts(findings, claims_only=True)
    holds = sum(f.verdict == "holds" for f in findings if not f.is_claim)
    done = sum(r.status == "done" for r in m.stages.values())
    skipped = sum(r.status == "skipped" for r in m.stages.values())
    cards = [
        ("run status", badge(m.status, "s-" + ("done" if m.status == "done" else "failed" if m.status == "failed" else "pending"))),
        ("stages", esc(f"{done} done" + (f", {skipped} skipped" if skipped else "")
                       + f", {len(m.stages) - done - skipped} other")),
        ("findings", esc(f"{len(findings)} ({sum(f.is_claim for f in findings)} claim"
                         + ("" if sum(f.is_claim for f in findings) == 1 else "s") + ")")),
        *((f"claims: {v}", badge(str(n), "v-" + slug(v))) for v, n in claims.items()),
        ("observations that hold", badge(str(holds), "v-holds")),
    ]
    card_html = "".join(f'<div class="card"><span class="muted">{esc(k)}</span><b>{v}</b></div>' for k, v in cards)
    git = m.environment.get("git", {}) or {}
    rev = (git.get("revision") or "no git revision")[:12] + (" (dirty)" if git.get("dirty") else "")
    meta = f"run {m.run_id} · spec hash {m.spec_hash[:12]} · started {m.created_at} · emoscope {__version__} · {rev}"
    desc = f"<p>{esc(description)}</p>" if description else ""
    return f'<header><h1>{esc(m.spec_name)}</h1><p class="meta">{esc(meta)}</p>{desc}<div class="summary-cards">{card_html}</div></header>'


def _nav(m: Manifest) -> str:
    items = [("findings", "Findings")] + [(f"stage-{slug(n)}", f"stage {n}") for n, _ in m.ordered_stages()]
    items += [("other-outputs", "Other outputs"), ("manifest", "Manifest"), ("spec", "Spec")]
    return "<nav><ul>" + "".join(f'<li><a href="#{esc(a)}">{esc(t)}</a></li>' for a, t in items) + "</ul></nav>"


#: how to read the cross-model tables (stage ``crossmodel``)
_TABLE_NOTES = {
    "alignment": "Maps fitted on neutral texts only, applied to model A's emotion vectors. raw: no map (undefined when "
                 "the widths differ); ridge: penalty by cross-validation; procrustes: orthogonal in a common PCA "
                 "dimension; *_shuffled: the same fitted on shuffled text pairs (the control). matched_cos2 is inflated "
                 "by what all emotion vectors share (compare mismatched_cos2); id_acc: share of A's mapped emotions "
                 "nearest to the same emotion of B (chance_id = 1/K), also on centred vectors; r2_heldout: on held-out "
                 "neutral texts.",
    "cka": "Debiased (unbiased HSIC) linear CKA on the neutral texts: layer x layer within each model and model x "
           "model; near 0 for unrelated representations even when texts and width are close.",
    "emotion_space": "PCA of the emotion vectors centred on their mean (variance_share per component), Pearson r of "
                     "PC1/PC2 with valence and arousal ratings and two-sided permutation p; raw and denoised vectors.",
    "depth_peaks": "Each model's probe curve on relative depth: argmax, the earliest layer within the argmax's "
                   "interval, the span of depths inside that interval, and the curve's shape.",
}


def _stage(name: str, rec: StageRecord, rd: RunDir, findings: list[Finding]) -> str:
    parts = [f'<section class="stage {esc(rec.status)}" id="stage-{esc(slug(name))}">',
             f"<h3>{esc(name)} {badge(rec.status, 's-' + rec.status)}</h3>"]
    facts = []
    if rec.seconds is not None:
        facts.append(f"{rec.seconds:.2f} s")
    if rec.attempts > 1:
        facts.append(f"{rec.attempts} attempts")
    mine = [f for f in findings if f.provenance.stage == name]
    if mine:
        facts.append(f"{len(mine)} findings")
    if facts:
        parts.append(f'<p class="meta">{esc(" · ".join(facts))}</p>')
    if rec.summary:
        parts.append(f"<p>{esc(rec.summary)}</p>")
    parts += [f'<p class="note">{esc(n)}</p>' for n in rec.notes]
    if rec.error:
        parts.append(f'<p class="error">failed: {esc(rec.error)}</p>')
    if rec.metrics:
        parts.append(data_table(["metric", "value"], sorted(rec.metrics.items())))
    if rec.figures:
        parts.append('<div class="grid">' + "".join(figure(f, rd.figures) for f in rec.figures) + "</div>")
    for t in rec.tables:
        note = f'<p class="note">{esc(_TABLE_NOTES[t])}</p>' if t in _TABLE_NOTES else ""
        parts.append(f'<h4 id="table-{esc(slug(t))}">table {esc(t)}</h4>' + note + csv_table(rd.tables / f"{t}.csv"))
    parts.append("</section>")
    return "".join(parts)


def _promoted(rd: RunDir) -> str:
    """What each vector promotes through the unembedding (tables ``promoted_tokens`` and
    ``promoted_non_latin``), one line per vector: tokens with their script in brackets."""
    import csv

    def mark(r: dict[str, str]) -> str:
        return f"{r['token']!r}" + ("" if r.get("script") in ("LATIN", "-") else f" [{r.get('script')}]")

    parts = []
    for name, sides in (("promoted_tokens", ("top", "bottom")), ("promoted_non_latin", (None,))):
        path = rd.tables / f"{name}.csv"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        lines: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            lines.setdefault((r["vector"], r.get("side", "non-Latin")), []).append(mark(r))
        body = [(v, side, ", ".join(toks)) for (v, side), toks in lines.items() if side in sides or None in sides]
        parts.append(f"<h4>{esc(name)}</h4>" + data_table(["vector", "side", "tokens (script when not Latin)"], body))
    if not parts:
        return ""
    return ('<section id="promoted"><h2>What the vectors promote</h2><p class="muted">Each vector through the final '
            "norm and the unembedding (a logit lens of the direction alone): the tokens it raises most (top) and "
            "lowers most (bottom).</p>" + "".join(parts) + "</section>")


def _other_outputs(m: Manifest, rd: RunDir) -> str:
    owned_t = {t for r in m.stages.values() for t in r.tables}
    owned_f = {f for r in m.stages.values() for f in r.figures}
    tables = sorted(p.stem for p in rd.tables.glob("*.csv") if p.stem not in owned_t) if rd.tables.is_dir() else []
    figs = sorted({p.stem for p in rd.figures.glob("*") if p.suffix in (".png", ".svg")} - owned_f) \
        if rd.figures.is_dir() else []
    if not tables and not figs:
        return ""
    parts = ['<p class="muted">Tables and figures in the run directory that no finished stage claims '
             "(e.g. from a failed attempt).</p>"]
    if figs:
        parts.append('<div class="grid">' + "".join(figure(f, rd.figures) for f in figs) + "</div>")
    for t in tables:
        parts.append(f'<h4 id="table-{esc(slug(t))}">table {esc(t)}</h4>' + csv_table(rd.tables / f"{t}.csv"))
    return "".join(parts)


def _manifest(m: Manifest) -> str:
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
    facts += [(f"model {n}", ", ".join(f"{k}={v}" for k, v in d.items())) for n, d in m.models.items()]
    facts += [(f"dataset {n}", ", ".join(f"{k}={v}" for k, v in d.items())) for n, d in m.datasets.items()]
    timing = data_table(["stage", "status", "attempts", "seconds", "findings", "started", "finished"],
                        [(n, r.status, r.attempts, r.seconds, len(r.findings), r.started_at, r.finished_at)
                         for n, r in m.ordered_stages()])
    raw = json.dumps(m.model_dump(mode="json"), indent=2, sort_keys=True)
    return (data_table(["", "value"], facts) + "<h4>Stages</h4>" + timing
            + f"<details><summary>manifest.json</summary><pre>{esc(raw)}</pre></details>")


def _controls_legend(findings: list[Finding]) -> str:
    """One sentence per control that ran: what it rules out when it passes."""
    seen: dict[str, str] = {}
    for f in findings:
        for c in f.controls:
            text = rules_out(c.name)
            if text and c.name not in seen:
                seen[c.name] = text
    if not seen:
        return ""
    items = "".join(f"<li><code>{esc(n)}</code>: {esc(t)}.</li>" for n, t in seen.items())
    return f'<h4>What each control rules out</h4><ul class="legend" id="controls-legend">{items}</ul>'


def render_report(run_dir: str | os.PathLike[str]) -> str:
    """The report of ``run_dir`` as one HTML string (see ``write_report``)."""
    rd = RunDir.open(run_dir)
    m = rd.read_manifest()
    run = rd.findings()
    findings = run.findings
    spec_text = rd.spec_path.read_text(encoding="utf-8") if rd.spec_path.is_file() else "(spec.yaml missing)"
    description = ""
    try:
        from emoscope._io import load_yaml

        description = str((load_yaml(spec_text, "spec.yaml") or {}).get("description") or "")
    except Exception:  # noqa: BLE001 - the report still renders the raw text below
        pass
    stages = "".join(_stage(n, r, rd, findings) for n, r in m.ordered_stages())
    other = _other_outputs(m, rd)
    body = [
        _header(m, description, findings),
        _nav(m),
        '<section id="findings"><h2>Findings</h2>'
        '<p class="muted">A finding is an observation (a number with its interval); a claim says what it means. '
        "A claim <b>ships</b> only when every control its checklist requires ran and passed, its n meets the "
        "kind's minimum, and it survives the correction across the run's claims; an observation that passed "
        f"its checks <b>holds</b> (nothing is claimed about what it means). {esc(describe_counts(findings, run.n_tested))}. "
        f"Judged with checklist version {checklist_version()}.</p>"
        + findings_table(findings) + _controls_legend(findings) + "</section>",
        f'<section id="stages"><h2>Stages</h2>{stages}</section>',
        _promoted(rd),
        f'<section id="other-outputs"><h2>Other outputs</h2>{other or "<p class=muted>none</p>"}</section>',
        f'<section id="manifest"><h2>Manifest</h2>{_manifest(m)}</section>',
        f'<section id="spec"><h2>Spec</h2><pre>{esc(spec_text)}</pre></section>',
        f"<footer>Written by emoscope {esc(__version__)} at {esc(now())} from {esc(rd.root.name)}/. "
        "This file is self-contained: it loads nothing from the network.</footer>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>emoscope report — {esc(m.spec_name)}</title><style>{_css()}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN/report.html`` (atomically) and return its path.

    Sections: findings table (colour per verdict), one section per stage in spec order
    (skipped stages with their note, figures inlined, tables capped to 50 rows), other
    outputs, the manifest and the resolved spec.

    >>> write_report("runs/demo")                              # doctest: +SKIP
    PosixPath('runs/demo/report.html')
    """
    rd = RunDir(run_dir)
    html_text = render_report(rd.root)
    return atomic_write_text(rd.report_path, html_text)
