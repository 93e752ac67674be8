"""The stage registry: pipeline stages registered by name, found through ``stages.yaml``.

A stage is a function ``fn(ctx: RunContext) -> StageResult | None``. It reads its options
from ``ctx.options`` (an instance of its ``options_model``, validated from the spec section of
the same name), writes tables and figures through ``ctx``, and records findings with
``ctx.add_finding``. How to add one, e.g. in ``emoscope/probing/stage.py``::

    from pydantic import BaseModel, ConfigDict

    from emoscope.runs import RunContext, StageResult, register_stage


    class ProbeOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")   # unknown spec keys become SpecErrors
        layers: str | list[int] = "all"
        n_seeds: int = 5


    @register_stage("probe", options_model=ProbeOptions,
                    description="per-layer linear probes with controls")
    def probe_stage(ctx: RunContext) -> StageResult:
        from emoscope.probing import probe_layers    # heavy imports inside the function
        acts = ctx.activations()                     # cached extraction (same as stage extract)
        report = probe_layers(acts, ctx.dataset.labels, seeds=ctx.options.n_seeds)
        ctx.write_table("probe_layers", report.table)
        ctx.add_finding(...)                         # emoscope.audit.Finding
        return StageResult(summary=f"peak at layer {report.peak_layer}")

The module path must be listed in ``stages.yaml`` (one line) so that a spec naming the stage
imports it; until the module exists, runs skip the stage with a note. Import heavy libraries
(torch, transformers) inside the stage function, not at module top: spec validation imports
stage modules to validate their options.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = [
    "StageResult",
    "StageInfo",
    "StageFn",
    "register_stage",
    "unregister_stage",
    "get_stage",
    "known_stages",
    "stage_catalog",
    "skip_note",
]


@dataclass
class StageResult:
    """What a stage returns: a one-line ``summary`` and a few scalar ``metrics`` for the manifest.

    >>> StageResult(summary="peak at layer 12", metrics={"peak_layer": 12}).summary
    'peak at layer 12'
    """

    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


StageFn = Callable[["RunContext"], "StageResult | None"]


@dataclass(frozen=True)
class StageInfo:
    """A registered stage: its function, its options model and a one-line description."""

    name: str
    fn: StageFn
    options_model: type[BaseModel] | None = None
    description: str = ""


_REGISTRY: dict[str, StageInfo] = {}


@functools.lru_cache(maxsize=1)
def stage_catalog() -> dict[str, dict[str, str]]:
    """``stages.yaml``: stage name -> ``{"module": ..., "description": ...}``.

    >>> stage_catalog()["extract"]["module"]
    'emoscope.runs.stages_basic'
    """
    text = resources.files("emoscope.runs").joinpath("stages.yaml").read_text("utf-8")
    return dict(yaml.safe_load(text))


def register_stage(
    name: str,
    *,
    options_model: type[BaseModel] | None = None,
    description: str = "",
    replace: bool = False,
) -> Callable[[StageFn], StageFn]:
    """Decorator: register ``fn(ctx) -> StageResult | None`` as stage ``name``.

    ``options_model`` (a pydantic model, ideally with ``extra="forbid"``) validates the spec
    section named like the stage; ``ctx.options`` is an instance of it. Registering a name
    twice is an error unless ``replace=True`` (tests use that for fake stages).

    >>> @register_stage("doc-example", description="does nothing", replace=True)
    ... def _noop(ctx):
    ...     ctx.note("nothing to do")
    >>> get_stage("doc-example").description
    'does nothing'
    >>> unregister_stage("doc-example")
    """
    if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise ValueError(f"stage name {name!r} must be letters, digits, '-' or '_'")

    def decorate(fn: StageFn) -> StageFn:
        old = _REGISTRY.get(name)
        same = old is not None and (old.fn.__module__, old.fn.__qualname__) == (fn.__module__, fn.__qualname__)
        if old is not None and not (replace or same):
            raise ValueError(f"stage {name!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = StageInfo(name, fn, options_model, doc)
        return fn

    return decorate


def unregister_stage(name: str) -> None:
    """Remove stage ``name`` from the registry (no error if absent)."""
    _REGISTRY.pop(name, None)


def _import_failed_for(module: str, err: ModuleNotFoundError) -> bool:
    missing = err.name or ""
    return bool(missing) and (module == missing or module.startswith(missing + "."))


def get_stage(name: str) -> StageInfo | None:
    """The registered stage ``name``, importing its module from ``stages.yaml`` if needed.

    Returns ``None`` when the stage is catalogued but its module does not exist yet (the run
    skips it with a note) or when nothing is known by that name.

    >>> get_stage("extract").name
    'extract'
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    entry = stage_catalog().get(name)
    if entry is None:
        return None
    try:
        importlib.import_module(entry["module"])
    except ModuleNotFoundError as e:
        if _import_failed_for(entry["module"], e):
            return None  # not built yet
        raise
    return _REGISTRY.get(name)


def known_stages() -> list[str]:
    """Stage names a spec may use: catalogued ones, then any registered only in this process.

    >>> known_stages()[:2]
    ['extract', 'vectors']
    """
    names = list(stage_catalog())
    return names + [n for n in _REGISTRY if n not in names]


def skip_note(name: str) -> str:
    """The note recorded for a stage that has no implementation yet."""
    entry = stage_catalog().get(name)
    where = f" (no implementation in {entry['module']})" if entry else ""
    return f"stage '{name}' is not built yet; skipped{where}"
