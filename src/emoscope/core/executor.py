"""Work units and the executors that run them: in process, or on Ray.

A sweep splits its work into **units**: blocks big enough to keep its batching and prefix
sharing (one layer's block of injection cells over a shared KV-cache prefix, one batch of
steering rows over one prefill). A unit's id is a hash of its content and of everything the
sweep shares between units (``unit_id``): the same work always gets the same id, different
work never does.

The driver (the process that runs the stage) writes every finished unit's result, a dict of
numpy arrays, atomically to a ``UnitStore`` under the run directory, keyed by the unit's id,
and appends ``start`` / ``done`` lines to the store's journal. A resumed run reads the units it
finds and runs only the rest: nothing finished runs again, a unit that was in flight when the
process died (``kill -9``, preemption) runs once more, and since results are keyed by id a
unit that runs twice (a Ray retry) replaces its result rather than adding a second one. The
results come back in the units' order, so the merged tables are the same as those of an
uninterrupted run, whichever executor ran the units and in whichever order they finished.

Executors:

- ``LocalExecutor``: every unit in this process, on the model already loaded here.
- ``RayExecutor``: Ray actors, each of which loads the model once (``Task.setup``) and then
  processes many units; CPU/GPU resource requests per worker; the shared input is put into
  Ray's object store once. Ray is an optional dependency (``pip install emoscope[ray]``).
  Ray moves units and results between processes with its own serialisation; nothing read from
  disk is ever unpickled (unit results are ``.npz`` files read with ``allow_pickle=False``).

>>> units = [Unit(unit_id("demo", i), i) for i in range(3)]
>>> task = Task(name="square", fn=_square, shared=None, state=None)
>>> [r["y"].item() for r in run_units(task, units)]
[0, 1, 4]
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emoscope._io import atomic_write_bytes, atomic_write_text
from emoscope.errors import InputError

__all__ = ["Unit", "Task", "UnitStore", "Execution", "LocalExecutor", "RayExecutor", "run_units", "unit_id",
           "make_executor", "EXECUTORS"]

EXECUTORS = ("local", "ray")
Result = dict[str, np.ndarray]


def _uint_dtypes() -> dict[int, Any]:
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _canonical(x: Any) -> Any:
    """A JSON-able stand-in for ``x`` that changes whenever ``x`` does (arrays by their bytes)."""
    if isinstance(x, np.ndarray):
        return {"ndarray": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
                "dtype": str(x.dtype), "shape": list(x.shape)}
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        t = x.detach().cpu()
        try:
            return _canonical(t.numpy())
        except TypeError:  # a dtype NumPy lacks (bfloat16, float8): hashed by its bytes (viewed as integers of the same width)
            raw = t.contiguous().view(_uint_dtypes()[t.element_size()]).numpy()
            return {"tensor": hashlib.sha256(raw.tobytes()).hexdigest(), "dtype": str(t.dtype),
                    "shape": list(t.shape)}
    if isinstance(x, dict):
        return {str(k): _canonical(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    if hasattr(x, "__dataclass_fields__"):
        return {type(x).__name__: {k: _canonical(getattr(x, k)) for k in x.__dataclass_fields__}}
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"unit_id cannot hash a {type(x).__name__}")


def unit_id(*parts: Any) -> str:
    """A stable id for a unit: a hash of ``parts`` (numbers, strings, lists, dicts, dataclasses,
    arrays). Equal content gives equal ids across processes and machines.

    >>> unit_id("cells", [1, 2]) == unit_id("cells", (1, 2)), unit_id("a") != unit_id("b")
    (True, True)
    """
    blob = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Unit:
    """One block of work: ``id`` (``unit_id`` of its content) and the ``payload`` the task's
    function receives; ``size`` counts its cells or rows for progress bars."""

    id: str
    payload: Any
    size: int = 1


@dataclass
class Task:
    """What every unit of a sweep runs: ``fn(state, shared, payload) -> {name: array}``.

    ``state`` is what ``fn`` computes with (the model) in this process; ``setup()`` builds it in
    a worker (loads the model; it must be picklable, e.g. ``functools.partial(load_model, name)``),
    and ``setup_key`` names it so that workers are reused by every task with the same key.
    ``shared`` is the read-only input every unit needs (trials, vector bank, ...).
    """

    name: str
    fn: Callable[[Any, Any, Any], Result]
    shared: Any
    state: Any = None
    setup: Callable[[], Any] | None = None
    setup_key: str = ""


class UnitStore:
    """Finished units of one sweep: ``ROOT/ID.npz`` (written atomically) and ``ROOT/journal.jsonl``.

    ``root=None`` keeps results in memory (a sweep run from the API, outside a run directory).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = None if root is None else Path(root)
        self._memory: dict[str, Result] = {}

    def get(self, uid: str) -> Result | None:
        if self.root is None:
            return self._memory.get(uid)
        path = self.root / f"{uid}.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def put(self, uid: str, result: Result) -> None:
        if self.root is None:
            self._memory[uid] = result
            return
        self.root.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in result.items()})
        atomic_write_bytes(self.root / f"{uid}.npz", buf.getvalue())

    def log(self, event: str, uid: str, **extra: Any) -> None:
        """Append one journal line (``start``: a unit began or was dispatched; ``done``: its result
        is stored). Appends are single small writes, so a kill leaves at most a torn last line."""
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "unit": uid, "pid": os.getpid(), "t": round(time.time(), 3), **extra})
        with open(self.root / "journal.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def journal(self) -> list[dict[str, Any]]:
        path = None if self.root is None else self.root / "journal.jsonl"
        if path is None or not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill
                continue
        return out

    def executions(self) -> Counter[str]:
        """How many times each unit started, over every process that ran this sweep."""
        return Counter(e["unit"] for e in self.journal() if e.get("event") == "start")

    def write_index(self, units: Sequence[Unit], task: str) -> None:
        """``index.json``: the sweep's unit ids in order (what a resumed run must find)."""
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.root / "index.json",
                              json.dumps({"task": task, "units": [u.id for u in units]}, indent=1))


@dataclass
class Execution:
    """Where and how a sweep's units run: the ``executor`` (default in process), the folder under
    which each task keeps its ``UnitStore`` (``None``: in memory, nothing resumes), and how a
    worker builds its state (``setup``, ``setup_key``; see ``Task``). A run gives every stage one
    (``RunContext.execution``); a sweep called from the API runs in process without it."""

    executor: Any = None
    root: str | os.PathLike[str] | None = None
    setup: Callable[[], Any] | None = None
    setup_key: str = ""

    def store(self, task: str) -> UnitStore:
        return UnitStore(None if self.root is None else Path(self.root) / task)


class LocalExecutor:
    """Run every unit in this process with ``task.state`` (the model loaded here)."""

    name = "local"

    def map(self, task: Task, units: Sequence[Unit], store: UnitStore) -> Iterator[tuple[str, Result]]:
        if task.state is None and task.setup is not None:
            task.state = task.setup()
        for u in units:
            store.log("start", u.id)
            yield u.id, task.fn(task.state, task.shared, u.payload)

    def close(self) -> None:
        pass


def run_units(task: Task, units: Sequence[Unit], execution: Execution | None = None, *,
              progress: bool = False) -> list[Result]:
    """Run the units that ``execution``'s store for this task lacks on its executor (default: in
    process), store each result as it arrives, and return every unit's result in the order of
    ``units``."""
    ids = [u.id for u in units]
    if len(set(ids)) != len(ids):
        raise InputError(f"task {task.name!r} has duplicate unit ids; units must differ in content")
    execution = execution if execution is not None else Execution()
    store = execution.store(task.name)
    executor = execution.executor if execution.executor is not None else LocalExecutor()
    if task.setup is None:
        task.setup, task.setup_key = execution.setup, execution.setup_key
    store.write_index(units, task.name)
    results: dict[str, Result] = {}
    todo = []
    for u in units:
        got = store.get(u.id)
        if got is None:
            todo.append(u)
        else:
            results[u.id] = got
    bar = None
    if progress and todo:
        from emoscope._progress import progress as _bar

        bar = _bar(total=sum(u.size for u in todo), desc=f"{task.name} ({executor.name})", unit="cell")
    size = {u.id: u.size for u in todo}
    try:
        for uid, result in executor.map(task, todo, store):
            store.put(uid, result)  # keyed by id: a retried unit replaces its result
            store.log("done", uid)
            results[uid] = result
            if bar is not None:
                bar.update(size.get(uid, 0))
    finally:
        if bar is not None:
            bar.close()
    missing = [uid for uid in ids if uid not in results]
    if missing:
        raise RuntimeError(f"task {task.name!r}: {len(missing)} unit(s) returned no result")
    return [results[uid] for uid in ids]


def _square(state: Any, shared: Any, payload: int) -> Result:
    """The doctest's task function."""
    return {"y": np.asarray(payload * payload)}


class _Worker:
    """A Ray actor: builds its state once per ``setup_key``, then runs many units."""

    def __init__(self, setup: Callable[[], Any], threads: int | None) -> None:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        t0 = time.perf_counter()
        self.state = setup()
        self.setup_seconds = time.perf_counter() - t0
        self.shared: dict[str, Any] = {}
        self.n_units = 0

    def ready(self) -> float:
        return self.setup_seconds

    def run(self, fn: Callable[[Any, Any, Any], Result], key: str, shared: list[Any], payload: Any) -> Result:
        if key not in self.shared:
            import ray

            self.shared = {key: ray.get(shared[0])}  # one task's shared input at a time
        self.n_units += 1
        return fn(self.state, self.shared[key], payload)

    def stats(self) -> int:
        return self.n_units


class RayExecutor:
    """Run units on Ray actors. ``address``: an existing cluster (``"auto"``) or ``None`` to start
    a local Ray on this machine; ``workers``: actors per task (default: as many as the cluster's
    CPUs, or GPUs when ``gpus_per_worker`` > 0, allow); each asks for ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs and runs torch with ``cpus_per_worker`` threads. Ray starts on first
    use (``start``); ``num_cpus`` caps a local Ray's CPUs. Workers are kept
    for the executor's life, keyed by ``Task.setup_key``, so every stage of a run on the same
    model reuses them. Actors restart and retry their unit after a crash (``max_retries``)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, max_retries: int = 2, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise InputError("--executor ray needs Ray: pip install 'emoscope[ray]' (or pip install ray)") from None
        self._ray, self.address, self.num_cpus = ray, address, num_cpus
        self.init_seconds: float | None = None
        self.workers, self.cpus, self.gpus, self.retries = workers, cpus_per_worker, gpus_per_worker, max_retries
        self._pools: dict[str, list[Any]] = {}
        self.setup_seconds: dict[str, list[float]] = {}

    def start(self) -> None:
        """Start (or join) Ray, once; the first task does this, so bad input fails before it."""
        if self.init_seconds is not None:
            return
        ray = self._ray
        t0 = time.perf_counter()
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address is None:
                kw["num_cpus"] = self.num_cpus
            try:
                ray.init(address=self.address, **kw)
            except Exception as e:  # a cluster that is not there, a bad address
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise InputError(f"could not start or reach Ray at {self.address or 'a local instance'}: {msg}") from None
        self.init_seconds = time.perf_counter() - t0

    def _pool(self, task: Task) -> list[Any]:
        self.start()
        if task.setup is None:
            raise InputError(f"task {task.name!r} has no setup (how a worker loads its model); it cannot run on Ray")
        key = task.setup_key or task.name
        if key not in self._pools:
            ray = self._ray
            n = self.workers
            if n is None:
                res = ray.cluster_resources()
                n = int(res.get("GPU", 0) // self.gpus) if self.gpus else int(res.get("CPU", 1) // self.cpus)
            n = max(1, int(n))
            actor = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=self.retries,
                               max_task_retries=self.retries)(_Worker)
            threads = max(1, int(self.cpus)) if not self.gpus else None
            pool = [actor.remote(task.setup, threads) for _ in range(n)]
            self.setup_seconds[key] = ray.get([w.ready.remote() for w in pool])
            self._pools[key] = pool
        return self._pools[key]

    def map(self, task: Task, units: Sequence[Unit], store: UnitStore) -> Iterator[tuple[str, Result]]:
        if not units:
            return
        ray = self._ray
        pool = self._pool(task)
        shared = [ray.put(task.shared)]  # in a list, so that workers fetch it once rather than per call
        queue = list(units)
        running: dict[Any, tuple[str, Any]] = {}

        def submit(worker: Any) -> None:
            u = queue.pop(0)
            store.log("start", u.id, executor="ray")
            running[worker.run.remote(task.fn, task.name, shared, u.payload)] = (u.id, worker)

        for w in pool:  # two units in flight per worker: one computing, one queued behind it
            for _ in range(2):
                if queue:
                    submit(w)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            uid, worker = running.pop(done[0])
            result = ray.get(done[0])
            if queue:
                submit(worker)
            yield uid, result

    def units_per_worker(self) -> dict[str, list[int]]:
        return {k: self._ray.get([w.stats.remote() for w in pool]) for k, pool in self._pools.items()}

    def close(self) -> None:
        for pool in self._pools.values():
            for w in pool:
                self._ray.kill(w)
        self._pools.clear()


def make_executor(name: str | None, *, address: str | None = None, workers: int | None = None,
                  cpus_per_worker: float = 1, gpus_per_worker: float = 0) -> Any:
    """An executor by name (``local`` or ``ray``); one clear error for anything else."""
    if name in (None, "local"):
        if address is not None or workers is not None:
            raise InputError("--ray-address and --workers need --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    raise InputError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
