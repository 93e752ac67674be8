"""One run directory as the report reads it: manifest, corrected findings, spec, models, tables
and figures, each read once.

Models: a multi-model run labels its per-model stages ``STAGE@KEY`` and their tables and figures
``KEY.NAME``. The report keeps them apart by those keys; ``label(name)`` turns a model name found
in a table cell (often a path) into its key for display.
"""

from __future__ import annotations

import base64
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoscope.audit import Finding
from emoscope.core.manifest import Manifest, StageRecord
from emoscope.core.rundir import RunDir

__all__ = ["RunView", "split_stage", "split_name"]


def split_stage(stage: str) -> tuple[str, str | None]:
    """``probe@smollm2-135m`` -> (``probe``, ``smollm2-135m``); a plain stage -> (stage, None).

    >>> split_stage("probe@gemma3-270m"), split_stage("crossmodel")
    (('probe', 'gemma3-270m'), ('crossmodel', None))
    """
    base, _, key = stage.partition("@")
    return base, (key or None)


def split_name(name: str, keys: list[str] | tuple[str, ...]) -> tuple[str | None, str]:
    """A table or figure name -> (model key or None, bare name).

    >>> split_name("gemma3-270m.probe_layers", ["smollm2-135m", "gemma3-270m"])
    ('gemma3-270m', 'probe_layers')
    >>> split_name("relative_depth", ["smollm2-135m"])
    (None, 'relative_depth')
    """
    for k in sorted(keys, key=len, reverse=True):
        if name.startswith(k + "."):
            return k, name[len(k) + 1:]
    return None, name


@dataclass(eq=False)
class RunView:
    """Everything the report shows of one run directory (see ``RunView.load``)."""

    rd: RunDir
    manifest: Manifest
    findings: list[Finding]
    n_tested: int
    spec_text: str
    spec: dict[str, Any]
    models: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    #: the checklist versions the ledger's findings were judged with when they were written
    checklist_versions: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> RunView:
        """Open ``run_dir`` (a one-line ``RunDirError`` if it is not a run directory)."""
        from emoscope._io import load_yaml

        rd = RunDir.open(run_dir)
        m = rd.read_manifest()
        run = rd.findings()
        text = rd.spec_path.read_text(encoding="utf-8") if rd.spec_path.is_file() else ""
        try:
            spec = load_yaml(text, "spec.yaml") if text else {}
        except Exception:  # noqa: BLE001 - a broken spec.yaml still gets a report (its raw text is shown)
            spec = {}
        spec = spec if isinstance(spec, dict) else {}
        names = [str(spec.get("model") or "")] + [str(x) for x in spec.get("models") or []]
        models = [n for n in dict.fromkeys(names) if n]
        keys: list[str] = []
        for stage in m.stage_order:  # per-model stages appear in model order (runs.runner.stage_keys)
            key = split_stage(stage)[1]
            if key and key not in keys:
                keys.append(key)
        versions = sorted({f.checklist_version for f in rd.ledger.read() if f.checklist_version is not None})
        return cls(rd, m, run.findings, run.n_tested, text or "(spec.yaml missing)", spec, models, keys, versions)

    # -- models -------------------------------------------------------------------------------
    @property
    def multi_model(self) -> bool:
        return len(self.keys) > 1

    @functools.cached_property
    def _label_map(self) -> dict[str, str]:
        if len(self.models) == len(self.keys):
            return dict(zip(self.models, self.keys, strict=True))
        return {}

    def label(self, value: Any) -> Any:
        """A model name (alias, path or hub id) -> its short key; anything else unchanged.

        >>> v = RunView.__new__(RunView); v.models, v.keys = ["/m/a-1/", "b"], ["a-1", "b"]
        >>> v.label("/m/a-1/"), v.label(3)
        ('a-1', 3)
        """
        return self._label_map.get(value, value) if isinstance(value, str) else value

    def slot(self, key: str | None) -> int | None:
        """The position of model ``key`` in the run's model list (0 = the spec's ``model``)."""
        return self.keys.index(key) if key in self.keys else None

    # -- stages, tables and figures -----------------------------------------------------------
    def stages(self) -> list[tuple[str, StageRecord]]:
        return self.manifest.ordered_stages()

    def stage_findings(self, stage: str) -> list[Finding]:
        return [f for f in self.findings if f.provenance.stage == stage]

    @functools.cached_property
    def table_names(self) -> list[str]:
        return sorted(p.stem for p in self.rd.tables.glob("*.csv")) if self.rd.tables.is_dir() else []

    @functools.cached_property
    def figure_names(self) -> list[str]:
        if not self.rd.figures.is_dir():
            return []
        return sorted({p.stem for p in self.rd.figures.iterdir() if p.suffix in (".png", ".svg")})

    def tables_named(self, bare: str) -> list[tuple[str | None, str]]:
        """(model key or None, full table name) of every table whose bare name is ``bare``."""
        out = []
        for name in self.table_names:
            key, rest = split_name(name, self.keys)
            if rest == bare:
                out.append((key, name))
        return out

    def table_path(self, name: str) -> Path:
        return self.rd.tables / f"{name}.csv"

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one RunView lives for one render
    def table(self, name: str) -> Any:
        """``tables/NAME.csv`` as a DataFrame, or ``None`` when it is missing, empty or unreadable."""
        import pandas as pd

        path = self.table_path(name)
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError):  # EmptyDataError is a ValueError
            return None

    @functools.lru_cache(maxsize=256)  # noqa: B019
    def figure_uri(self, name: str) -> str | None:
        """``figures/NAME.png`` (or ``.svg``) as a data URI, or ``None`` when it is missing."""
        png, svg = self.rd.figures / f"{name}.png", self.rd.figures / f"{name}.svg"
        if png.is_file():
            return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        if svg.is_file():
            return "data:image/svg+xml;base64," + base64.b64encode(svg.read_bytes()).decode("ascii")
        return None

    def owned(self) -> tuple[set[str], set[str]]:
        """Tables and figures some stage of the manifest claims."""
        recs = self.manifest.stages.values()
        return {t for r in recs for t in r.tables}, {f for r in recs for f in r.figures}
