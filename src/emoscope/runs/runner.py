"""Run a spec into a run directory, stage by stage, resumably.

A stage moves ``pending -> running -> committing -> done`` (or ``skipped`` / ``failed``):

1. ``running``: the stage function writes tables and figures (atomically) and buffers findings.
2. ``committing``: its findings are saved to ``.emoscope/pending-STAGE.jsonl`` (atomically),
   then the manifest says ``committing``, then the findings not yet in the ledger are appended.
3. ``done``: the manifest records it, and the pending file is removed.

On ``resume`` a ``done`` stage is kept, a ``committing`` stage only finishes step 2 (its
outputs are complete), and any other stage runs again from the start. Since findings reach
the ledger only in step 2, and step 2 appends only ids the ledger lacks, none is duplicated.

Before anything is written or any model loads, every stage still to run checks its input
(``check(spec, dataset)``, registered with the stage, see ``emoscope.core.stages``), and the
checks every spec gets run (``emoscope.runs.precheck``: model names, the cache directory, finite
numbers, layers and positions against the model's known shape): input no stage can use is one
``InputError`` line and leaves no run directory behind. A stage that fails later says whether
``--resume`` can help: it can after a problem outside the spec (a missing package, no network, a
full disk), not when the input itself must change.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emoscope._io import atomic_write_text, ensure_writable_dir
from emoscope._progress import progress
from emoscope.audit import Finding
from emoscope.core.manifest import Manifest, StageRecord, environment, hardware, now
from emoscope.core.rundir import RunDir
from emoscope.core.stages import StageInfo, StageResult, get_stage, stage_catalog
from emoscope.errors import (
    DataError,
    EmoscopeError,
    OfflineError,
    OutputError,
    RunDirError,
    SpecError,
)
from emoscope.runs.context import ModelCache, RunContext
from emoscope.runs.spec import Spec, load_spec

__all__ = ["run_spec", "check_inputs", "stage_keys"]

Log = Callable[[str], None]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _describe(obj: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    out = {"type": type(obj).__name__}
    for k in keys:
        v = getattr(obj, k, None)
        if v is not None and not callable(v):
            out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    if "classes" in keys and getattr(obj, "texts", None) is not None:
        out["n_texts"] = len(obj.texts)
    return out


class _Runner:
    def __init__(self, spec: Spec, rd: RunDir, manifest: Manifest, cache: ModelCache, log: Log,
                 executor: Any = None) -> None:
        self.spec, self.rd, self.m, self.cache, self.log = spec, rd, manifest, cache, log
        self.executor = executor

    def save(self) -> None:
        self.m.updated_at = now()
        self.rd.write_manifest(self.m)

    def on_load(self, what: str, name: str, obj: Any) -> None:
        if what == "model":
            self.m.models[name] = _describe(obj, ("name", "n_layers", "d_model", "n_heads", "weights_sha256"))
        else:
            self.m.datasets[name] = _describe(obj, ("name", "sha256", "classes"))
        self.m.hardware = hardware()  # torch is imported now: record threads and GPUs
        self.save()

    def pending_path(self, stage: str) -> Path:
        return self.rd.internal / f"pending-{stage}.jsonl"

    def commit(self, stage: str) -> None:
        """Step 2 and 3: append the stage's pending findings the ledger lacks, then mark done."""
        rec = self.m.stages[stage]
        pending = self.pending_path(stage)
        findings: list[Finding] = []
        if pending.exists():
            for line in pending.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    findings.append(Finding.model_validate(json.loads(line), context={"stored": True}))
        elif rec.findings:
            raise RunDirError(f"{pending} is missing; stage {stage!r} cannot be completed, rerun it in a fresh --out")
        have = self.rd.ledger.ids() if findings else set()
        self.rd.ledger.extend(f for f in findings if f.id not in have)
        rec.status, rec.finished_at = "done", now()
        self.save()
        pending.unlink(missing_ok=True)

    def advice(self, e: EmoscopeError) -> str:
        """How to go on after a stage's error: ``--resume`` where the same spec can then succeed."""
        if isinstance(e, (OfflineError, OutputError, DataError)):  # the same spec can succeed once it is fixed
            return "fix it and continue with --resume"
        if any(r.status == "done" for r in self.m.stages.values()):
            return (f"the input must change, so run the changed command into a new --out (finished stages of "
                    f"{self.rd.root} cannot be resumed under another spec)")
        return f"the input must change: fix it and run again (into a new --out, or into {self.rd.root} with --resume)"

    def run_stage(self, stage: str) -> None:
        rec = self.m.stages.setdefault(stage, StageRecord())
        if rec.status == "done":
            self.log(f"stage {stage}: done already, kept")
            return
        if rec.status == "committing":
            self.log(f"stage {stage}: finishing an interrupted commit")
            self.commit(stage)
            return
        base, model_name = _split_key(self.spec, stage)
        info = _stage_info(base)
        rec = self.m.stages[stage] = StageRecord(status="running", attempts=rec.attempts + 1, started_at=now())
        self.save()
        ctx = RunContext(spec=self.spec, stage=base, model_name=model_name, run_dir=self.rd, run_id=self.m.run_id,
                         cache=self.cache, on_load=self.on_load, executor=self.executor)
        t0 = time.perf_counter()
        try:
            result = info.fn(ctx) or StageResult()
        except BaseException as e:
            rec.status, rec.error, rec.notes = "failed", _one_line(e), ctx.notes
            rec.seconds = round(time.perf_counter() - t0, 3)
            rec.tables, rec.figures = ctx.tables, ctx.figures
            self.m.status = "failed"
            self.save()
            if isinstance(e, EmoscopeError):  # a user-fixable problem: say where, and how to go on
                raise type(e)(f"stage '{stage}' failed: {e}; {self.advice(e)}") from e
            raise
        rec.seconds = round(time.perf_counter() - t0, 3)
        rec.summary, rec.metrics = result.summary, dict(result.metrics)
        rec.notes, rec.tables, rec.figures = ctx.notes, ctx.tables, ctx.figures
        rec.findings = [f.id for f in ctx.findings]
        lines = "".join(f.model_dump_json() + "\n" for f in ctx.findings)
        atomic_write_text(self.pending_path(stage), lines)
        rec.status = "committing"
        self.save()
        self.commit(stage)
        self.log(f"stage {stage}: done in {rec.seconds:.1f} s"
                 + (f" ({len(rec.findings)} findings)" if rec.findings else ""))


def _cross_model(stage: str) -> bool:
    """A stage listed in stages.yaml with ``scope: models`` runs once and compares the models."""
    return stage_catalog().get(stage, {}).get("scope") == "models"


def stage_keys(spec: Spec) -> list[str]:
    """The stages a run records, in order: in a multi-model spec each per-model stage once per
    model (``probe@smollm2-135m``, ``probe@gemma3-270m``), cross-model stages once.

    >>> from emoscope.runs.spec import parse_spec
    >>> stage_keys(parse_spec({"name": "t", "model": "a", "models": ["b"], "stages": ["extract", "crossmodel"]}))
    ['extract@a', 'extract@b', 'crossmodel']
    """
    models = spec.all_models
    if len(models) < 2:
        return list(spec.stages)
    keys = spec.model_keys
    return [k for s in spec.stages
            for k in ([s] if _cross_model(s) else [f"{s}@{keys[m]}" for m in models])]


def _split_key(spec: Spec, key: str) -> tuple[str, str | None]:
    """``probe@KEY`` -> (``probe``, the model named by KEY); a plain stage -> (stage, None)."""
    if "@" not in key:
        return key, None
    stage, mk = key.split("@", 1)
    by_key = {v: m for m, v in spec.model_keys.items()}
    if mk not in by_key:
        raise RunDirError(f"stage {key!r} names a model the spec does not have; resume with the same spec")
    return stage, by_key[mk]


def _stage_info(name: str) -> StageInfo:
    info = get_stage(name)
    if info is None:  # a spec validates its stage names, so only an unregistered test stage gets here
        raise SpecError(f"no stage {name!r} is registered")
    return info


def check_inputs(spec: Spec, cache: ModelCache, stages: list[str] | None = None) -> None:
    """Run the input check of every stage in ``stages`` (default: all of the spec's).

    The spec's dataset is loaded once (into ``cache``, so the stages reuse it); no model is loaded.
    Then the checks every spec gets (``emoscope.runs.precheck``), the model names last. Raises the
    first one-line ``EmoscopeError``.
    """
    from emoscope.runs.precheck import check_models, check_values

    names = list(spec.stages if stages is None else stages)
    checks = [(name, _stage_info(name).check) for name in names]
    checks = [(name, fn) for name, fn in checks if fn is not None]
    dataset = cache.dataset(spec.dataset) if spec.dataset else None
    for _name, fn in checks:
        fn(spec, dataset)
    check_values(spec, names, dataset)
    check_models(spec, cache, names)


def _seeds(spec: Spec) -> dict[str, Any]:
    """The spec's seed plus every stage option whose name mentions a seed."""
    seeds: dict[str, Any] = {"spec": spec.seed}
    for stage in spec.stages:
        opts = spec.options(stage)
        opts = opts.model_dump(mode="json") if hasattr(opts, "model_dump") else dict(opts or {})
        seeds.update({f"{stage}.{k}": v for k, v in opts.items() if "seed" in k})
    return seeds


def _new_manifest(spec: Spec) -> Manifest:
    run_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return Manifest(
        run_id=run_id, spec_name=spec.name, spec_hash=spec.hash,
        stage_order=stage_keys(spec), stages={s: StageRecord() for s in stage_keys(spec)},
        seeds=_seeds(spec),
        environment=environment(), hardware=hardware(),
        history=[{"event": "started", "at": now(), "pid": os.getpid()}],
    )


def _open_for_resume(spec: Spec, rd: RunDir) -> Manifest:
    if not rd.is_run_dir():
        raise RunDirError(f"{rd.root} is not empty and not an emoscope run directory (no manifest.json); "
                          f"choose another --out")
    m = rd.read_manifest()
    if m.spec_hash != spec.hash:
        if any(r.status in ("done", "committing") for r in m.stages.values()):
            raise RunDirError(f"{rd.root} was run with a different spec (hash {m.spec_hash[:12]}, this one "
                              f"{spec.hash[:12]}); resume with the same spec or choose another --out")
        # nothing finished under the old spec (e.g. its first stage failed on a bad option): the
        # corrected spec starts over in place
        fresh = _new_manifest(spec)
        fresh.history = [*m.history, {"event": "restarted with a new spec", "at": now(), "pid": os.getpid(),
                                      "previous_spec_hash": m.spec_hash}]
        return fresh
    m.history.append({"event": "resumed", "at": now(), "pid": os.getpid()})
    m.environment, m.hardware, m.status = environment(), hardware(), "running"
    m.stage_order = stage_keys(spec)
    return m


def run_spec(spec: Spec | str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
             resume: bool = False, report: bool = True, log: Log | None = None,
             model_loader: Callable[[str], Any] | None = None,
             dataset_loader: Callable[[str], Any] | None = None, executor: Any = None) -> RunDir:
    """Run every stage of ``spec`` into ``out`` (default ``runs/SPEC_NAME``); returns the run dir.

    A fresh run needs an empty or new ``out``; ``resume=True`` continues a run there, redoing
    only unfinished stages (a new directory is simply started). The report is written at the
    end, also after a failed stage (then the stage's exception is re-raised).

    ``executor``: where the sweeps' work units run (``emoscope.core.executor.make_executor``:
    in process by default, or a ``RayExecutor``). Finished units are stored in the run directory
    whichever executor ran them, so a resumed run (``resume=True``, after a crash, ``kill -9`` or
    preemption) runs only the units that had not finished.

    >>> rd = run_spec("demo", "runs/demo")                   # doctest: +SKIP
    >>> rd.report_path                                        # doctest: +SKIP
    PosixPath('runs/demo/report.html')
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    rd = RunDir(out if out is not None else Path("runs") / spec.name)
    log = log or (lambda msg: None)
    if rd.root.exists() and not rd.root.is_dir():
        raise RunDirError(f"{rd.root} exists and is not a directory; choose another --out")
    if not rd.is_empty():
        if not resume:
            raise RunDirError(f"{rd.root} is not empty; pass --resume to continue the run there, "
                              f"or choose another --out")
        manifest = _open_for_resume(spec, rd)
    else:
        manifest = _new_manifest(spec)
    manifest.history[-1]["executor"] = getattr(executor, "name", "local")
    cache = ModelCache(model_loader, dataset_loader, dtype=spec.model_dtype, device_map=spec.device_map)
    todo = [s for s in stage_keys(spec) if s not in manifest.stages or manifest.stages[s].status != "done"]
    check_inputs(spec, cache, list(dict.fromkeys(_split_key(spec, s)[0] for s in todo)))  # before anything is written or any model loads
    ensure_writable_dir(rd.root)
    rd.make_dirs()
    atomic_write_text(rd.spec_path, spec.to_yaml())
    runner = _Runner(spec, rd, manifest, cache, log, executor)
    for stage in stage_keys(spec):
        manifest.stages.setdefault(stage, StageRecord())
    runner.save()
    ok = False
    try:
        for stage in progress(stage_keys(spec), desc=f"run {spec.name}", unit="stage"):
            runner.run_stage(stage)
        manifest.status = "done"
        manifest.history.append({"event": "finished", "at": now()})
        runner.save()
        ok = True
    finally:
        if report:
            _write_report(rd, log, strict=ok)
    return rd


def _write_report(rd: RunDir, log: Log, strict: bool) -> None:
    """Write the report; after a failed stage a report error must not hide the stage's error."""
    from emoscope.report import write_report

    try:
        path = write_report(rd.root)
        if strict:  # after a failed stage the error is the one line the user reads
            log(f"report: {path}")
    except Exception as e:
        if strict:
            raise
        print(f"emoscope: report not written ({_one_line(e)})", file=sys.stderr)
