"""Work units and executors: stable ids, stored results, exact merging, resume after SIGKILL, Ray.

The sweeps run their work as units (``emoscope.core.executor``); these tests check that:

- unit results merged back equal one un-split call exactly (injection cells, steering rows);
- a stored unit never runs again, in process or after ``kill -9``; the unit in flight at the
  kill runs once more; the tables equal those of an uninterrupted run byte for byte;
- a real local Ray (``ray.init(num_cpus=2)``) gives the same tables as the local executor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emoscope.core.executor import (
    Execution,
    LocalExecutor,
    Task,
    Unit,
    UnitStore,
    run_units,
    unit_id,
)
from emoscope.errors import InputError
from tests.helpers import QUESTIONS, intro_model


def _count(state, shared, payload):
    shared["calls"].append(payload)
    return {"x": np.arange(payload, dtype=np.float32)}


def test_unit_ids_are_stable_and_content_addressed():
    a = unit_id("cells", np.arange(4, dtype=np.float32), {"b": 1, "a": [1, 2]})
    assert a == unit_id("cells", np.arange(4, dtype=np.float32), {"a": (1, 2), "b": 1})
    assert a != unit_id("cells", np.arange(4, dtype=np.float64), {"a": (1, 2), "b": 1})  # dtype counts
    assert a != unit_id("cells", np.arange(1, 5, dtype=np.float32), {"a": (1, 2), "b": 1})
    with pytest.raises(TypeError):
        unit_id(object())


def test_stored_units_are_skipped_and_results_keep_unit_order(tmp_path):
    units = [Unit(unit_id("t", i), i) for i in (3, 1, 2)]
    calls: list[int] = []
    ex = Execution(LocalExecutor(), tmp_path / "units")
    out = run_units(Task("t", _count, {"calls": calls}), units, ex)
    assert calls == [3, 1, 2] and [len(r["x"]) for r in out] == [3, 1, 2]
    # a second run (a resume) reads every unit back and computes nothing
    again = run_units(Task("t", _count, {"calls": calls}), units, ex)
    assert calls == [3, 1, 2]
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(out, again, strict=True))
    store = ex.store("t")
    assert store.executions() == {u.id: 1 for u in units}
    assert json.loads((tmp_path / "units" / "t" / "index.json").read_text())["units"] == [u.id for u in units]
    # a lost result file (or a unit that never finished) runs again, alone
    (tmp_path / "units" / "t" / f"{units[1].id}.npz").unlink()
    run_units(Task("t", _count, {"calls": calls}), units, ex)
    assert calls == [3, 1, 2, 1] and store.executions()[units[1].id] == 2
    with pytest.raises(InputError, match="duplicate unit ids"):
        run_units(Task("t", _count, {"calls": []}), [units[0], units[0]])


class _RetryingExecutor(LocalExecutor):
    """Delivers every unit twice with different values, as a retried Ray task whose first attempt
    also reported back would: the later result must replace the earlier, never add to it."""

    name = "retrying"

    def map(self, task, units, store):
        for u in units:
            store.log("start", u.id)
            yield u.id, {"x": np.full(2, -1.0, np.float32)}
            store.log("start", u.id)
            yield u.id, task.fn(task.state, task.shared, u.payload)


def test_a_retried_unit_replaces_its_result(tmp_path):
    units = [Unit(unit_id("r", i), i) for i in (2, 3)]
    ex = Execution(_RetryingExecutor(), tmp_path)
    out = run_units(Task("r", _count, {"calls": []}), units, ex)
    assert [r["x"].tolist() for r in out] == [[0.0, 1.0], [0.0, 1.0, 2.0]]
    store = ex.store("r")
    assert [store.get(u.id)["x"].tolist() for u in units] == [[0.0, 1.0], [0.0, 1.0, 2.0]]
    assert sorted(p.name for p in store.root.glob("*.npz")) == sorted(f"{u.id}.npz" for u in units)


def test_unit_store_is_atomic_and_reads_no_pickles(tmp_path):
    store = UnitStore(tmp_path)
    store.put("u1", {"a": np.ones(3, np.float32)})
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "evil.npz").write_bytes(b"not a zip")
    with pytest.raises(Exception):  # noqa: B017 - numpy's own error for a bad file; never unpickled
        store.get("evil")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as z:
        z.write(tmp_path / "obj.npy", "obj.npy")
    with pytest.raises(ValueError, match="pickle"):
        store.get("obj")["obj"]


# -- the sweeps as units ------------------------------------------------------------------------
def _trials_and_cells(model):
    from emoscope.introspection import build_trials
    from emoscope.introspection.cells import Injection
    from emoscope.introspection.measure import answer_tokens

    trials = build_trials(model, QUESTIONS)
    bank = torch.randn(3, model.d_model, generator=torch.Generator().manual_seed(0)).numpy()
    cells = [Injection(t) for t in range(len(trials))] + [
        Injection(t, layer, v, s) for t in range(len(trials)) for layer in (0, 1, 2) for v in range(3)
        for s in (1.0, 5.0)]
    return trials, cells, bank, answer_tokens(model.tokenizer)


def test_injection_units_merge_to_one_score_cells_call_exactly(tmp_path):
    from emoscope.introspection.cells import score_cells
    from emoscope.introspection.units import cell_units, score_units

    model = intro_model("llama", True)
    trials, cells, bank, tokens = _trials_and_cells(model)
    whole = score_cells(model, trials, cells, bank, tokens, batch_size=4)
    units, groups = cell_units(model, trials, cells, bank, tokens, batch_size=4)
    assert len(units) > 5 and sorted(i for g in groups for i in g) == list(range(len(cells)))
    ex = Execution(LocalExecutor(), tmp_path)
    split = score_units(model, trials, cells, bank, tokens, batch_size=4, execution=ex)
    for name in ("logit_diff", "p_yes", "p_no", "lens"):
        assert np.array_equal(getattr(whole, name), getattr(split, name)), name
    # resumed: nothing runs, the same numbers come back from the store
    again = score_units(model, trials, cells, bank, tokens, batch_size=4, execution=ex)
    assert np.array_equal(again.lens, whole.lens)
    assert set(ex.store("introspect-cells").executions().values()) == {1}
    # other content, other ids: a changed bank never reads the old units
    other, _ = cell_units(model, trials, cells, bank * 2, tokens, batch_size=4)
    assert not {u.id for u in units} & {u.id for u in other}


def test_steering_row_units_equal_one_decode_call():
    from emoscope.models.decode import RowEdits, decode_rows
    from emoscope.models.interventions import parse_window
    from emoscope.models.units import decode_units

    model = intro_model("llama", True)
    tok = model.tokenizer
    prompts = [tok("Tell me about the ocean.")["input_ids"], tok("Yes I do")["input_ids"]]
    n = 7
    g = torch.Generator().manual_seed(1)
    edits = RowEdits(delta={1: torch.randn(n, model.d_model, generator=g) * 3})
    rows = [r % 2 for r in range(n)]
    for window in ("generated", "all"):
        first = np.full(n, np.nan)

        def step(idx, logits, first=first):
            first[idx.numpy()] = _top_logit(logits).double().numpy()

        ref = decode_rows(model, prompts, rows, edits, parse_window(window), max_new_tokens=6, batch_rows=3,
                          first_step=step)
        got = decode_units(model, prompts, rows, edits, parse_window(window), max_new_tokens=6, batch_rows=3,
                           first_value=_top_logit)
        assert got.tokens == ref.tokens and got.batches == 3
        assert all(np.array_equal(a, b) for a, b in zip(got.gaps, ref.gaps, strict=True))
        assert np.array_equal(got.first, first) and not np.isnan(first).any()


def _top_logit(logits):
    return logits.max(-1).values


# -- kill -9 and resume ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny chat model on disk, so a separate process (or a Ray worker) can load it."""
    path = tmp_path_factory.mktemp("tiny-model") / "intro-llama"
    model = intro_model("llama", True)
    model.hf.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return path


def _spec(tmp_path: Path, model_dir: Path, name: str, batch_size: int = 4) -> Path:
    spec = {
        "name": name, "model": str(model_dir), "seed": 0, "stages": ["introspect"],
        "introspect": {"concepts": ["ocean", "bread", "dog", "music"], "baseline_words": ["table", "chair"],
                       "layers": [1, 2], "strengths": [1.0, 2.0, 4.0],
                       "n_random": 2, "heads": False, "n_boot": 200, "batch_size": batch_size},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def _tables(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "tables").glob("*.csv"))}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "emoscope.cli.main", "--quiet", *args]


def test_sigkill_mid_sweep_then_resume_runs_each_unfinished_unit_once(tmp_path, model_dir):
    spec = _spec(tmp_path, model_dir, "kill", batch_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = tmp_path / "run"
    units_dir = out / ".emoscope" / "units" / "introspect" / "introspect-cells"
    journal = units_dir / "journal.jsonl"
    proc = subprocess.Popen(_cli("run", str(spec), "--out", str(out)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count('"done"') >= 5:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = UnitStore(units_dir)
    before = store.journal()
    # finished = its result is stored (a kill between storing and journalling "done" still counts)
    done_before = {p.stem for p in units_dir.glob("*.npz")}
    assert {e["unit"] for e in before if e["event"] == "done"} <= done_before
    started_before = {e["unit"] for e in before if e["event"] == "start"}
    in_flight = started_before - done_before
    index = json.loads((units_dir / "index.json").read_text())["units"]
    assert 5 <= len(done_before) < len(index) and len(in_flight) <= 1  # the local executor runs one at a time

    res = subprocess.run(_cli("run", str(spec), "--out", str(out), "--resume"), env=env, capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr.decode()[-800:]
    counts = store.executions()
    assert set(counts) == set(index)                                # nothing lost
    assert all(counts[u] == 1 for u in done_before)                 # no finished unit ran again
    assert all(counts[u] == 2 for u in in_flight)                   # the one in flight ran once more
    assert all(counts[u] == 1 for u in set(index) - started_before)
    assert sum(counts.values()) == len(index) + len(in_flight)

    fresh = tmp_path / "fresh"
    res = subprocess.run(_cli("run", str(spec), "--out", str(fresh)), env=env, capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr.decode()[-800:]
    got, want = _tables(out), _tables(fresh)
    assert got.keys() == want.keys() and "introspect_cells.csv" in got
    assert got == want                                              # byte for byte, no row twice
    manifest = json.loads((out / "manifest.json").read_text())
    assert [h["event"] for h in manifest["history"]][:2] == ["started", "resumed"]


# -- Ray -----------------------------------------------------------------------------------------
def test_ray_executor_gives_the_local_tables(tmp_path, model_dir):
    ray = pytest.importorskip("ray", reason="Ray is the optional extra emoscope[ray]; CI installs it")
    from emoscope.core.executor import RayExecutor
    from emoscope.runs import run_spec

    spec = _spec(tmp_path, model_dir, "ray")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers run one thread each; the same thread count keeps floats equal
    try:
        local = run_spec(spec, tmp_path / "local", report=False)
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ex = RayExecutor(workers=2)
        remote = run_spec(spec, tmp_path / "ray", report=False, executor=ex)
        per_worker = ex.units_per_worker()
        ex.close()
    finally:
        ray.shutdown()
    assert _tables(remote.root) == _tables(local.root)
    (counts,) = per_worker.values()
    store = UnitStore(remote.root / ".emoscope" / "units" / "introspect" / "introspect-cells")
    n_units = len(json.loads((store.root / "index.json").read_text())["units"])
    assert sum(counts) == n_units and min(counts) > 0              # both workers took units
    assert {e.get("executor") for e in store.journal() if e["event"] == "start"} == {"ray"}
    assert json.loads((remote.root / "manifest.json").read_text())["history"][0]["executor"] == "ray"


def test_cli_executor_flags_fail_in_one_line(tmp_path, capsys, model_dir):
    from emoscope.cli.main import main

    spec = _spec(tmp_path, model_dir, "flags")
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--ray-address", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--executor ray" in err[0]
    assert not (tmp_path / "o").exists()
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--executor", "dask"]) == 2
    assert not (tmp_path / "o").exists()
