"""``RunContext``: what a stage sees of its run, and the only way it writes into it.

Tables and figures are written atomically as soon as the stage produces them (a rerun
overwrites them). Findings are buffered and reach the ledger only when the stage completes,
so an interrupted stage leaves no findings behind and ``--resume`` never duplicates them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoscope._io import atomic_write_text
from emoscope.audit import Finding
from emoscope.audit.finding import Provenance
from emoscope.errors import InputError, SpecError

if TYPE_CHECKING:
    import pandas as pd

    from emoscope.core.rundir import RunDir
    from emoscope.runs.spec import Spec

__all__ = ["RunContext", "ModelCache"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class ModelCache:
    """Models (and datasets) loaded once per process and shared by the stages of a run.

    ``loader`` defaults to ``emoscope.models.load_model`` (with ``dtype``, the spec's model
    dtype); tests pass a fake. ``announced`` holds the ``(kind, name)`` pairs already recorded
    in the run's manifest, so a dataset loaded by the input checks is still recorded once.
    """

    def __init__(self, loader: Callable[[str], Any] | None = None,
                 dataset_loader: Callable[[str], Any] | None = None, *, dtype: str | None = None) -> None:
        self._loader, self._dataset_loader, self._dtype = loader, dataset_loader, dtype
        self.models: dict[str, Any] = {}
        self.datasets: dict[str, Any] = {}
        self.announced: set[tuple[str, str]] = set()

    def model(self, name: str) -> Any:
        if name not in self.models:
            if self._loader is None:
                from emoscope.models import load_model

                self.models[name] = load_model(name, dtype=self._dtype)
            else:
                self.models[name] = self._loader(name)
        return self.models[name]

    def dataset(self, name: str) -> Any:
        if name not in self.datasets:
            loader = self._dataset_loader
            if loader is None:
                from emoscope.datasets import load_dataset as loader
            self.datasets[name] = loader(name)
        return self.datasets[name]


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise InputError(f"{what} name {name!r} must be letters, digits, '_', '.' or '-' (no folders)")
    return name


class RunContext:
    """The run as one stage sees it.

    >>> def my_stage(ctx: "RunContext"):                     # doctest: +SKIP
    ...     df = pd.DataFrame({"layer": [0, 1], "norm": [1.0, 2.0]})
    ...     ctx.write_table("norms", df)                       # tables/norms.csv + .json
    ...     ctx.note("norms grow with depth")
    """

    def __init__(self, *, spec: Spec, stage: str, run_dir: RunDir, run_id: str,
                 cache: ModelCache, on_load: Callable[[str, str, Any], None] | None = None) -> None:
        self.spec = spec
        self.stage = stage
        self.run_dir = run_dir
        self.run_id = run_id
        self._cache = cache
        self._on_load = on_load
        self.findings: list[Finding] = []
        self.notes: list[str] = []
        self.tables: list[str] = []
        self.figures: list[str] = []

    # -- what the stage reads ---------------------------------------------------------------
    @property
    def options(self) -> Any:
        """This stage's options: an instance of its ``options_model`` (or the raw section)."""
        return self.spec.options(self.stage)

    @property
    def seed(self) -> int:
        """The spec's seed (stages derive their own seeds from it)."""
        return self.spec.seed

    @property
    def tables_dir(self) -> Path:
        return self.run_dir.tables

    @property
    def figures_dir(self) -> Path:
        return self.run_dir.figures

    @property
    def cache_dir(self) -> Path:
        """A scratch cache inside the run (created on first use), kept for ``--resume``."""
        self.run_dir.cache.mkdir(parents=True, exist_ok=True)
        return self.run_dir.cache

    @property
    def model(self) -> Any:
        """The spec's model, loaded on first use and shared by all stages of this process."""
        return self.load_model(self.spec.model)

    def _announce(self, kind: str, name: str, obj: Any) -> None:
        if (kind, name) not in self._cache.announced:
            self._cache.announced.add((kind, name))
            if self._on_load:
                self._on_load(kind, name, obj)

    def load_model(self, name: str) -> Any:
        """Any model by alias or path (e.g. the second model of a cross-model spec), cached."""
        model = self._cache.model(name)
        self._announce("model", name, model)
        return model

    @property
    def dataset(self) -> Any:
        """The spec's dataset (``emoscope.datasets.load_dataset``), cached."""
        if not self.spec.dataset:
            raise SpecError(f"stage {self.stage!r} needs a dataset; add `dataset: NAME` to the spec")
        data = self._cache.dataset(self.spec.dataset)
        self._announce("dataset", self.spec.dataset, data)
        return data

    def activations(self, texts: list[str] | None = None, **overrides: Any) -> Any:
        """Activations of ``texts`` (default: the dataset's) with the ``extract`` section's
        layers / position / batch size; ``overrides`` go to ``emoscope.activations.extract``.

        Extraction is content-addressed and cached (``$EMOSCOPE_CACHE``), so a later stage
        asking for the same activations, or a resumed run, reads them back instead of recomputing.
        """
        from emoscope.activations import extract

        opts = self.spec.options("extract")
        kw = opts.model_dump() if hasattr(opts, "model_dump") else dict(opts or {})
        kw = {k: kw[k] for k in ("layers", "position", "batch_size") if k in kw}
        kw.update(overrides)
        if texts is None:
            texts = list(self.dataset.texts)
        return extract(self.model, texts, **kw)

    def read_table(self, name: str) -> pd.DataFrame:
        """A table an earlier stage wrote (read back from ``tables/NAME.csv``)."""
        import pandas as pd

        path = self.tables_dir / f"{_check_name(name, 'table')}.csv"
        if not path.exists():
            raise InputError(f"no table {name!r} in {self.tables_dir}; is the stage that writes it in `stages`?")
        return pd.read_csv(path)

    # -- what the stage writes ----------------------------------------------------------------
    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        """Write ``tables/NAME.csv`` and ``tables/NAME.json`` atomically; returns the CSV path.

        A named index (e.g. ``layer``) becomes a column.
        """
        import pandas as pd

        _check_name(name, "table")
        if not isinstance(df, pd.DataFrame):
            raise InputError(f"write_table({name!r}) needs a pandas DataFrame, got {type(df).__name__}")
        if any(n is not None for n in df.index.names):
            df = df.reset_index()
        csv_path = self.tables_dir / f"{name}.csv"
        atomic_write_text(csv_path, df.to_csv(index=False))
        atomic_write_text(self.tables_dir / f"{name}.json", df.to_json(orient="split", index=False, indent=1))
        if name not in self.tables:
            self.tables.append(name)
        return csv_path

    def save_figure(self, name: str, fig: Any) -> Path:
        """Write ``figures/NAME.png`` and ``figures/NAME.svg`` atomically and close ``fig``.

        Prefer ``matplotlib.figure.Figure()`` over pyplot in stages (no GUI backend needed).
        """
        from emoscope.core.figures import save_figure

        png = save_figure(fig, self.figures_dir / _check_name(name, "figure"))
        if name not in self.figures:
            self.figures.append(name)
        return png

    def note(self, text: str) -> None:
        """Record a note for this stage (shown in the manifest and the report)."""
        self.notes.append(str(text))

    def add_finding(self, finding: Finding) -> Finding:
        """Buffer ``finding``; it is written to the ledger when the stage completes.

        Fills in provenance (run id, spec hash, stage) and, when the stage set no id, a stable
        one (``STAGE-000``, ``STAGE-001``, ...) so reruns give the same ids.
        """
        if not isinstance(finding, Finding):
            raise InputError(f"add_finding needs an emoscope.audit.Finding, got {type(finding).__name__}")
        updates: dict[str, Any] = {
            "provenance": Provenance(run_id=self.run_id, spec_hash=self.spec.hash, stage=self.stage)
        }
        if "id" not in finding.model_fields_set:
            updates["id"] = f"{self.stage}-{len(self.findings):03d}"
        finding = finding.with_updates(**updates)
        if any(f.id == finding.id for f in self.findings):
            raise InputError(f"stage {self.stage!r} recorded finding id {finding.id!r} twice")
        self.findings.append(finding)
        return finding
