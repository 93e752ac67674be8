"""The stage protocol: what a stage author needs, and nothing that loads a model.

A stage is a function ``fn(ctx: RunContext) -> StageResult | None``. It reads its options
from ``ctx.options`` (an instance of its ``options_model``, validated from the spec section of
the same name), writes tables and figures through ``ctx``, and records findings with
``ctx.add_finding``. It lives in its own domain package, e.g. ``emoscope/probing/stage.py``::

    from typing import TYPE_CHECKING

    from pydantic import BaseModel, ConfigDict

    from emoscope.core.stages import StageResult, register_stage, require_classes

    if TYPE_CHECKING:                               # the runner is above this package
        from emoscope.runs.context import RunContext


    class ProbeOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")   # unknown spec keys become SpecErrors
        n_folds: int = 5


    def check_probe(spec, dataset) -> None:         # optional: runs before any model loads
        require_classes(dataset, "probe", spec.dataset)


    @register_stage("probe", options_model=ProbeOptions, check=check_probe,
                    description="per-layer linear probes with controls")
    def probe_stage(ctx: "RunContext") -> StageResult:
        from emoscope.probing import probe_layers    # heavy imports inside the function
        acts = ctx.activations()                     # cached extraction (same as stage extract)
        ...
        return StageResult(summary=f"peak at layer {report.peak_layer}")

The module path must be listed in ``stages.yaml`` (one line, next to this file) so that a spec
naming the stage imports it. Import heavy libraries (torch, transformers) inside the stage
function, not at module top: spec validation imports stage modules to validate their options.

**Checks.** ``check(spec, dataset)`` is called by the runner for every stage of a spec after the
spec validates and before the run directory is written or any model loads (``dataset`` is the
spec's dataset, loaded once, or ``None``). It raises a one-line ``InputError`` for input the
stage cannot use (one class, a class smaller than the folds, a baseline that is not a class),
so a bad input costs nothing and leaves nothing behind, for ``emoscope run`` and for every
one-stage command alike. Beside it, every spec gets checks by option name
(``emoscope.runs.precheck``): name an option ``layers`` / ``*_layers`` / ``*_layer`` for layers
and ``position`` / ``*_position`` for a read position, and a layer past the model's known depth,
a position past its context or past every token of a text, and any non-finite number are
refused before the run directory is written, with no code in the stage.
"""

from __future__ import annotations

import functools
import importlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from emoscope.errors import InputError

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = [
    "StageResult",
    "StageInfo",
    "StageFn",
    "StageCheck",
    "register_stage",
    "unregister_stage",
    "get_stage",
    "known_stages",
    "stage_catalog",
    "class_counts",
    "require_classes",
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
StageCheck = Callable[[Any, Any], None]
"""``check(spec, dataset)``: raise ``InputError`` for input the stage cannot use (see module doc)."""


@dataclass(frozen=True)
class StageInfo:
    """A registered stage: its function, options model, one-line description and input check."""

    name: str
    fn: StageFn
    options_model: type[BaseModel] | None = None
    description: str = ""
    check: StageCheck | None = None


_REGISTRY: dict[str, StageInfo] = {}


@functools.lru_cache(maxsize=1)
def stage_catalog() -> dict[str, dict[str, str]]:
    """``stages.yaml``: stage name -> ``{"module": ..., "description": ...}``.

    >>> stage_catalog()["extract"]["module"]
    'emoscope.activations.stage'
    """
    text = resources.files("emoscope.core").joinpath("stages.yaml").read_text("utf-8")
    return dict(yaml.safe_load(text))


def register_stage(
    name: str,
    *,
    options_model: type[BaseModel] | None = None,
    description: str = "",
    check: StageCheck | None = None,
    replace: bool = False,
) -> Callable[[StageFn], StageFn]:
    """Decorator: register ``fn(ctx) -> StageResult | None`` as stage ``name``.

    ``options_model`` (a pydantic model, ideally with ``extra="forbid"``) validates the spec
    section named like the stage; ``ctx.options`` is an instance of it. ``check(spec, dataset)``
    rejects unusable input before any model loads. Registering a name twice is an error unless
    ``replace=True`` (tests use that for fake stages).

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
        _REGISTRY[name] = StageInfo(name, fn, options_model, doc, check)
        return fn

    return decorate


def unregister_stage(name: str) -> None:
    """Remove stage ``name`` from the registry (no error if absent)."""
    _REGISTRY.pop(name, None)


def get_stage(name: str) -> StageInfo | None:
    """The registered stage ``name``, importing its module from ``stages.yaml`` if needed.

    Returns ``None`` when nothing is known by that name.

    >>> get_stage("extract").name
    'extract'
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    entry = stage_catalog().get(name)
    if entry is None:
        return None
    importlib.import_module(entry["module"])
    if name not in _REGISTRY:
        raise RuntimeError(f"{entry['module']} does not register stage {name!r} (stages.yaml names it)")
    return _REGISTRY[name]


def known_stages() -> list[str]:
    """Stage names a spec may use: catalogued ones, then any registered only in this process.

    >>> known_stages()[:2]
    ['extract', 'vectors']
    """
    names = list(stage_catalog())
    return names + [n for n in _REGISTRY if n not in names]


# -- helpers for checks ------------------------------------------------------------------------
def class_counts(dataset: Any) -> dict[str, int]:
    """``{class: number of texts}`` of a dataset (anything with ``labels``), in sorted order.

    >>> class_counts(type("D", (), {"labels": ["b", "a", "b"]})())
    {'a': 1, 'b': 2}
    """
    return dict(sorted(Counter(str(y) for y in dataset.labels).items()))


def require_classes(dataset: Any, stage: str, name: str | None = None, at_least: int = 2) -> dict[str, int]:
    """The dataset's class counts; a one-line ``InputError`` when it has fewer than ``at_least`` classes.

    >>> require_classes(type("D", (), {"labels": ["joy"] * 3})(), "probe", "mine.csv")
    Traceback (most recent call last):
    ...
    emoscope.errors.InputError: dataset mine.csv has one class ('joy'); stage 'probe' needs at least 2 classes: add texts of another class (e.g. 'neutral')
    """
    if dataset is None:
        raise InputError(f"stage {stage!r} needs a dataset; add `dataset: NAME` to the spec (or --dataset)")
    counts = class_counts(dataset)
    if len(counts) < at_least:
        what = "no texts" if not counts else (
            f"one class ({next(iter(counts))!r})" if len(counts) == 1 else f"{len(counts)} classes")
        raise InputError(f"dataset {name or getattr(dataset, 'name', '')} has {what}; stage {stage!r} needs at "
                         f"least {at_least} classes: add texts of another class (e.g. 'neutral')")
    return counts
