"""Experiment specs and resumable run directories: every command is a run.

>>> from emoscope.runs import load_spec, run_spec
>>> spec = load_spec("demo")
>>> spec.stages[0]
'extract'
>>> run_dir = run_spec(spec, "runs/demo")                    # doctest: +SKIP

``runs`` is a framework: it knows stages by the registry in ``emoscope.core.stages`` (each
stage lives in its domain package), never by import. ``register_stage`` and ``StageResult``
are re-exported here for convenience; see ``emoscope.core.stages`` for a full example.
"""

from __future__ import annotations

from emoscope.core.rundir import RunDir
from emoscope.core.stages import StageResult, register_stage
from emoscope.runs.context import RunContext
from emoscope.runs.runner import check_inputs, run_spec
from emoscope.runs.spec import Spec, builtin_specs, load_spec, parse_spec, spec_from_yaml

__all__ = [
    "Spec",
    "load_spec",
    "parse_spec",
    "spec_from_yaml",
    "builtin_specs",
    "run_spec",
    "check_inputs",
    "register_stage",
    "StageResult",
    "RunContext",
    "RunDir",
]
