"""Stage sections: a registry keyed by stage name, read from ``sections.yaml``.

Each stage of a run becomes one ``Section``: its finding sentence, its key figure first, the
other figures, then its tables folded. A stage with a section of its own (cross-model, heads,
patching, modes, leakage, placebo) names a template and may register a function that prepares
what the template shows::

    @section_data("leakage")
    def _leakage(view, stage, record) -> dict: ...

A new stage adds an entry to ``sections.yaml`` (and optionally a template and a function);
the other sections do not change. Multi-model runs get one group per model, then the stages
that compare models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

from emoscope.report.blocks import Figure, Table, figure_block, table_block
from emoscope.report.registry import section_data, section_functions
from emoscope.report.runview import split_name, split_stage

if TYPE_CHECKING:
    from emoscope.core.manifest import StageRecord
    from emoscope.report.runview import RunView

__all__ = ["SectionSpec", "Section", "Group", "section_spec", "section_data", "build_sections", "slug",
           "DRAWS_PREFIX", "DRAWS_CAPTION", "draws_owner", "tables_shown_by_sections", "load_section_data", "section_functions"]

DRAWS_PREFIX = "draws_"  # per-finding figures of random-draw controls: draws_<finding id or its tail>
DRAWS_CAPTION = "Random-draw control: each draw's held-out value (dots) against the candidate (line)"
DEFAULT_TEMPLATE = "section_stage.html"


def slug(text: str) -> str:
    """A safe id for anchors.

    >>> slug("probe@smollm2-135m")
    'probe-smollm2-135m'
    """
    return "".join(ch if ch.isalnum() else "-" for ch in str(text).lower()).strip("-") or "x"


@dataclass(frozen=True)
class SectionSpec:
    """How the report shows one stage (an entry of ``sections.yaml``)."""

    template: str = DEFAULT_TEMPLATE
    key_figures: tuple[str, ...] = ()
    captions: dict[str, str] = field(default_factory=dict)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    own_tables: tuple[str, ...] = ()
    tables_only: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1)
def _specs() -> dict[str, SectionSpec]:
    raw = yaml.safe_load(resources.files("emoscope.report").joinpath("sections.yaml").read_text("utf-8"))
    out = {}
    for stage, d in (raw.get("stages") or {}).items():
        d = d or {}
        out[stage] = SectionSpec(
            template=d.get("template", DEFAULT_TEMPLATE), key_figures=tuple(d.get("key_figures", ())),
            captions=dict(d.get("captions", {})), columns={k: tuple(v) for k, v in (d.get("columns") or {}).items()},
            notes=dict(d.get("notes", {})), own_tables=tuple(d.get("own_tables", ())),
            tables_only=tuple(d.get("tables_only", ())))
    return out


def tables_shown_by_sections() -> list[str]:
    """Bare table (and figure) names a section shows wherever they come from (``tables_only``
    tables and their key figures)."""
    return [t for sp in _specs().values() if sp.tables_only for t in (*sp.tables_only, *sp.key_figures)]


def section_spec(stage: str) -> SectionSpec:
    """The section of ``stage`` (its name before '@'); the generic one for a stage not listed."""
    return _specs().get(split_stage(stage)[0], SectionSpec())


@dataclass
class Section:
    """One stage as the report shows it."""

    stage: str
    title: str
    anchor: str
    model: str | None
    record: Any
    template: str
    lead: str = ""
    findings: list[tuple[str, str, str]] = field(default_factory=list)  # (anchor, verdict, id)
    key_figures: list[Figure] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    problem: str = ""

    @property
    def verdict_counts(self) -> str:
        """"3 fails, 2 holds" over the stage's findings."""
        from collections import Counter

        c = Counter(v for _, v, _ in self.findings)
        return ", ".join(f"{n} {v}" for v, n in c.most_common())


@dataclass
class Group:
    """Sections of one model (``model`` set) or of the whole run."""

    title: str
    model: str | None
    sections: list[Section]


def draws_owner(figure: str, stage: str, finding_ids: list[str]) -> str | None:
    """The finding a ``draws_`` figure belongs to: its name after the prefix is the finding's id,
    or the id's tail after the stage (``draws_000`` for ``probe@m-000``); ``None`` if no finding fits.

    >>> draws_owner("m.draws_000", "probe@m", ["probe@m-000", "probe@m-001"])
    'probe@m-000'
    >>> draws_owner("draws_steer-001", "steer", ["steer-000", "steer-001"]), draws_owner("x", "steer", [])
    ('steer-001', None)
    """
    bare = figure.rpartition(".")[2] if "." in figure else figure
    if not bare.startswith(DRAWS_PREFIX):
        return None
    tail = slug(bare[len(DRAWS_PREFIX):])
    for fid in finding_ids:
        s = slug(fid)
        if s == tail or s == slug(f"{stage}-{tail}"):
            return fid
    return None


def _figures(view: RunView, rec: StageRecord, spec: SectionSpec, owned_draws: set[str],
             skip: set[str]) -> tuple[list[Figure], list[Figure]]:
    names = [f for f in rec.figures if f not in owned_draws and split_name(f, view.keys)[1] not in skip]
    bare = {n: split_name(n, view.keys)[1] for n in names}
    key_names = [n for k in spec.key_figures for n in names if bare[n] == k][:1]
    if not key_names:  # the stage's first figure, unless it only shows a control's random draws
        key_names = [n for n in names if not bare[n].startswith(DRAWS_PREFIX)][:1]

    def caption(n: str) -> str:
        if bare[n].startswith(DRAWS_PREFIX) and bare[n] not in spec.captions:
            return f"{DRAWS_CAPTION} — {bare[n][len(DRAWS_PREFIX):].replace('_', ' ')}"
        return spec.captions.get(bare[n], "")

    key = [b for n in key_names if (b := figure_block(view, n, caption(n))) is not None]
    rest = [b for n in names if n not in key_names and (b := figure_block(view, n, caption(n))) is not None]
    # figures the section lists come first, in its order; the others after
    order = {k: i for i, k in enumerate(spec.key_figures)}
    rest.sort(key=lambda f: order.get(split_name(f.name, view.keys)[1], len(order)))
    return key, rest


def _section(view: RunView, stage: str, rec: StageRecord, owned_draws: set[str]) -> Section:
    base, key = split_stage(stage)
    spec = section_spec(stage)
    title = base if not key else f"{base} — model {key}"
    s = Section(stage, title, "stage-" + slug(stage), key, rec, spec.template, lead=rec.summary)
    s.findings = [("finding-" + slug(f.id), f.verdict or "", f.id) for f in view.stage_findings(stage)]
    elsewhere = {t for b, sp in _specs().items() if b != base and sp.tables_only
                 for t in (*sp.tables_only, *sp.key_figures)}
    s.key_figures, s.figures = _figures(view, rec, spec, owned_draws, elsewhere)
    data_fns = section_functions()
    if base in data_fns:
        try:
            s.data = data_fns[base](view, stage, rec)
        except Exception as e:  # noqa: BLE001 - one odd table must not cost the whole report
            s.template = DEFAULT_TEMPLATE
            s.problem = f"this section's own view could not be drawn ({type(e).__name__}: {e})"
    if not s.key_figures and s.data.get("key_figure") is not None:  # a figure the section drew from a table
        s.key_figures = [s.data["key_figure"]]
    own = spec.own_tables if not s.problem else ()  # without its own view, the section shows every table
    for t in rec.tables:
        bare = split_name(t, view.keys)[1]
        if bare in own or bare in elsewhere:  # shown by this section's template / by another section
            continue
        block = table_block(view, t, columns=spec.columns.get(bare), note=spec.notes.get(bare, ""))
        if block is not None:
            s.tables.append(block)
    return s


def _table_sections(view: RunView, present: set[str]) -> list[Section]:
    """Sections whose tables are in the run though no stage of that name ran (``tables_only``:
    e.g. placebo rates another stage wrote); those tables and figures show there, not in the
    stage that wrote them."""
    from emoscope.core.manifest import StageRecord

    out = []
    for base, spec in _specs().items():
        if base in present or not spec.tables_only:
            continue
        tables = [t for t in view.table_names if split_name(t, view.keys)[1] in spec.tables_only]
        if not tables:
            continue
        figs = [f for f in view.figure_names if split_name(f, view.keys)[1] in spec.key_figures]
        rec = StageRecord(status="done", tables=tables, figures=figs,
                          summary=f"read from {', '.join(f'tables/{t}.csv' for t in tables)}")
        out.append(_section(view, base, rec, set()))
    return out


def build_sections(view: RunView, owned_draws: set[str]) -> list[Group]:
    """The run's stages as groups of sections: one group per model in a multi-model run (then
    the stages across models), one group otherwise. ``owned_draws``: figures shown with their
    finding instead."""
    stages = view.stages()
    present = {split_stage(n)[0] for n, _ in stages}
    extra = _table_sections(view, present)
    if not view.multi_model:
        return [Group("", None, [_section(view, n, r, owned_draws) for n, r in stages] + extra)]
    groups = []
    for key in view.keys:
        mine = [_section(view, n, r, owned_draws) for n, r in stages if split_stage(n)[1] == key]
        if mine:
            groups.append(Group(f"Model {key}", key, mine))
    across = [_section(view, n, r, owned_draws) for n, r in stages if split_stage(n)[1] is None] + extra
    if across:
        groups.append(Group("Across models", None, across))
    return groups


def load_section_data() -> None:
    """Import the functions that register section data (``emoscope.report.stagedata``, which
    registers into ``emoscope.report.registry`` and never imports this module)."""
    import emoscope.report.stagedata  # noqa: F401
