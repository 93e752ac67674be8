"""Experiment specs, the stage registry, and resumable run directories.

>>> from emoscope.runs import load_spec, run_spec
>>> spec = load_spec("demo")
>>> spec.stages[0]
'extract'
>>> run_dir = run_spec(spec, "runs/demo")                    # doctest: +SKIP

Stages register with ``@register_stage`` (see ``emoscope.runs.registry`` for a full example).
"""

from emoscope.runs.context import ModelCache, RunContext
from emoscope.runs.manifest import Manifest, StageRecord
from emoscope.runs.registry import (
    StageInfo,
    StageResult,
    get_stage,
    known_stages,
    register_stage,
    unregister_stage,
)
from emoscope.runs.rundir import RunDir
from emoscope.runs.runner import run_spec
from emoscope.runs.spec import Spec, builtin_specs, load_spec, parse_spec, spec_from_yaml

__all__ = [
    "Spec",
    "load_spec",
    "parse_spec",
    "spec_from_yaml",
    "builtin_specs",
    "register_stage",
    "unregister_stage",
    "get_stage",
    "known_stages",
    "StageInfo",
    "StageResult",
    "RunContext",
    "ModelCache",
    "RunDir",
    "Manifest",
    "StageRecord",
    "run_spec",
]
