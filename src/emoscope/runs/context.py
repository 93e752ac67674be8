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
                 dataset_loader: Callable[[str], Any] | None = None, *, dtype: str | None = None,
                 device_map: str | None = None) -> None:
        self._loader, self._dataset_loader, self._dtype, self._device_map = loader, dataset_loader, dtype, device_map
        self.models: dict[str, Any] = {}
        self.datasets: dict[str, Any] = {}
        self.announced: set[tuple[str, str]] = set()

    def model(self, name: str) -> Any:
        if name not in self.models:
            if self._loader is None:
                from emoscope.models import load_model

                self.models[name] = load_model(name, dtype=self._dtype, device_map=self._device_map)
            else:
                self.models[name] = self._loader(name)
        return self.models[name]

    def check_model(self, name: str) -> None:
        """Refuse a model name the loader cannot load, without loading it: the loader's ``check``
        (``emoscope.models.load_model.check``). A stand-in loader without one (a test's) is
        trusted with its own names."""
        loader = self._loader
        if loader is None:
            import emoscope.models

            loader = emoscope.models.load_model
        check = getattr(loader, "check", None)
        if check is not None:
            check(name)

    def setup(self, name: str) -> tuple[Callable[[], Any], str]:
        """How a worker process loads model ``name`` as this cache does (a picklable callable), and
        a key naming that (workers with the same key are shared by the stages of a run)."""
        import functools

        if self._loader is None:
            from emoscope.models import load_model

            fn: Callable[[], Any] = functools.partial(load_model, name, dtype=self._dtype, device_map=self._device_map)
        else:
            fn = functools.partial(self._loader, name)
        return fn, f"model:{name}:{self._dtype}:{self._device_map}"

    def dataset(self, name: str) -> Any:
        if name not in self.datasets:
            loader = self._dataset_loader
            if loader is None:
                from emoscope.datasets import load_dataset as loader
            self.datasets[name] = loader(name)
        return self.datasets[name]


def _model_run_dir(rd: RunDir, key: str) -> RunDir:
    """The run as a per-model stage sees it: files under ``RUN/models/KEY/``, tables and figures
    in the run's own folders (named ``KEY.NAME``, so the report shows every model's)."""
    sub = type(rd)(rd.root / "models" / key)
    sub.tables, sub.figures = rd.tables, rd.figures
    return sub


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
                 cache: ModelCache, on_load: Callable[[str, str, Any], None] | None = None,
                 executor: Any = None, model_name: str | None = None) -> None:
        from emoscope.runs.spec import model_key

        self.spec = spec
        self.executor = executor
        self.stage = stage
        # multi-model specs: a per-model stage runs once per model, as ``STAGE@KEY``; its tables and
        # figures are named ``KEY.NAME`` and its other files live under ``RUN/models/KEY/``
        self.model_name = model_name or spec.model
        self.key = stage if model_name is None else f"{stage}@{model_key(model_name)}"
        self._prefix = "" if model_name is None else f"{model_key(model_name)}."
        self.main_run_dir = run_dir
        if model_name is not None:
            run_dir = _model_run_dir(run_dir, model_key(model_name))
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
        """This stage's model (the spec's, or the current one of a multi-model spec), loaded on
        first use and shared by all stages of this process."""
        return self.load_model(self.model_name)

    @property
    def models(self) -> list[str]:
        """Every model of the spec (``model`` then ``models``)."""
        return self.spec.all_models

    def model_dir(self, name: str) -> Path:
        """``RUN/models/KEY/``: where the per-model stages of model ``name`` keep their files (e.g.
        ``vectors/``) in a multi-model spec; the run root in a one-model spec."""
        from emoscope.runs.spec import model_key

        if len(self.spec.all_models) < 2:
            return self.main_run_dir.root
        return self.main_run_dir.root / "models" / model_key(name)

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
    def execution(self) -> Any:
        """Where this stage's sweep runs its work units (``emoscope.core.executor``): the run's
        executor, a unit store under ``.emoscope/units/STAGE/`` (so ``--resume`` skips finished
        units), and how a worker loads the stage's model."""
        from emoscope.core.executor import Execution

        setup, key = self._cache.setup(self.model_name)
        return Execution(self.executor, self.run_dir.internal / "units" / self.stage, setup, key)

    @property
    def dataset(self) -> Any:
        """The spec's dataset (``emoscope.datasets.load_dataset``), cached."""
        if not self.spec.dataset:
            raise SpecError(f"stage {self.stage!r} needs a dataset; add `dataset: NAME` to the spec")
        data = self._cache.dataset(self.spec.dataset)
        self._announce("dataset", self.spec.dataset, data)
        return data

    def activations(self, texts: list[str] | None = None, *, model: str | None = None, **overrides: Any) -> Any:
        """Activations of ``texts`` (default: the dataset's) with the ``extract`` section's
        layers / position / batch size; ``overrides`` go to ``emoscope.activations.extract``.

        Extraction is content-addressed and cached (``$EMOSCOPE_CACHE``), so a later stage
        asking for the same activations, or a resumed run, reads them back instead of recomputing.
        ``model`` names another model of the spec (cross-model stages); default: this stage's.
        """
        from emoscope.activations import extract

        opts = self.spec.options("extract")
        kw = opts.model_dump() if hasattr(opts, "model_dump") else dict(opts or {})
        kw = {k: kw[k] for k in ("layers", "position", "batch_size") if k in kw}
        kw.update(overrides)
        if texts is None:
            texts = list(self.dataset.texts)
        return extract(self.model if model is None else self.load_model(model), texts, **kw)

    def read_table(self, name: str, *, model: str | None = None) -> pd.DataFrame:
        """A table an earlier stage wrote (read back from ``tables/NAME.csv``); ``model``: the
        table a per-model stage wrote for that model of a multi-model spec."""
        import pandas as pd

        from emoscope.runs.spec import model_key

        if model is not None and len(self.spec.all_models) > 1:
            name = f"{model_key(model)}.{name}"
        elif model is None:
            name = self._prefix + name
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

        name = self._prefix + _check_name(name, "table")
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

        name = self._prefix + _check_name(name, "figure")
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
            "provenance": Provenance(run_id=self.run_id, spec_hash=self.spec.hash, stage=self.key)
        }
        if "id" not in finding.model_fields_set:
            updates["id"] = f"{self.key}-{len(self.findings):03d}"
        finding = finding.with_updates(**updates)
        if any(f.id == finding.id for f in self.findings):
            raise InputError(f"stage {self.key!r} recorded finding id {finding.id!r} twice")
        self.findings.append(finding)
        return finding
