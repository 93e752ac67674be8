"""Specs, the stage registry, run directories and resume (fake stages, no model)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest

from emoscope.audit import Control, Finding, Ledger, Observation
from emoscope.cli.main import main
from emoscope.core.stages import get_stage, unregister_stage
from emoscope.errors import RunDirError, SpecError
from emoscope.runs import (
    RunDir,
    StageResult,
    builtin_specs,
    load_spec,
    parse_spec,
    register_stage,
    run_spec,
    spec_from_yaml,
)

FAKE_STAGES = ("fake-first", "fake-second", "fake-third")
CALLS: dict[str, int] = {}


def _stage(name: str, n_rows: int, explode_once: bool = False):
    def fn(ctx):
        CALLS[name] = CALLS.get(name, 0) + 1
        rng = np.random.default_rng(ctx.seed + n_rows)
        ctx.write_table(f"{name}-table", pd.DataFrame({"layer": range(n_rows), "score": rng.normal(size=n_rows)}))
        ctx.add_finding(Finding(kind="probe", claim=f"{name} decodes joy",
                                observation=Observation(metric="accuracy", value=0.98, n=100),
                                controls=[Control(name="length_baseline", value=0.97, passed=False)]))
        ctx.add_finding(Finding(kind="extraction", observation=Observation(metric="rows", value=float(n_rows))))
        if explode_once and CALLS[name] == 1:
            raise KeyboardInterrupt  # a kill in the middle of the stage, after it wrote a table
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3, 2))
        fig.add_subplot().plot(range(n_rows))
        ctx.save_figure(f"{name}-fig", fig)
        ctx.note(f"{name} ran")
        return StageResult(summary=f"{name}: {n_rows} rows", metrics={"rows": n_rows})

    return fn


@pytest.fixture
def fake_stages():
    CALLS.clear()

    def install(explode: str | None = None) -> None:
        for i, name in enumerate(FAKE_STAGES):
            register_stage(name, replace=True)(_stage(name, 5 + i, explode_once=(name == explode)))

    install()
    yield install
    for name in FAKE_STAGES:
        unregister_stage(name)


def fake_spec(stages=FAKE_STAGES, **extra):
    return parse_spec({"name": "fake", "model": "fake-model", "seed": 3, "stages": list(stages), **extra})


def results(rd: RunDir) -> tuple[dict[str, bytes], list[dict]]:
    tables = {p.name: p.read_bytes() for p in sorted(rd.tables.iterdir())}
    findings = []
    for f in rd.ledger.read():
        d = f.model_dump()
        d["provenance"].pop("created_at")
        d["provenance"].pop("run_id")
        findings.append(d)
    return tables, findings


# ----------------------------------------------------------------------------- specs
def test_builtin_specs_load():
    assert set(builtin_specs()) == {"demo", "emotions", "introspection", "cross-model", "extraction-modes", "leakage"}
    for name in builtin_specs():
        spec = load_spec(name)
        assert spec.name == name and spec.stages
    demo = load_spec("demo")
    assert demo.options("extract").batch_size == 32
    assert load_spec("cross-model").models == ["gemma3-270m"]


def test_spec_roundtrip_keeps_the_hash(tmp_path):
    spec = load_spec("emotions")
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    again = load_spec(path)
    assert again.hash == spec.hash and again.to_dict() == spec.to_dict()


def _write(tmp_path, text: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("name: t\nmodel: m\nstages: [extract]\nsead: 1\n",
     ":4: unknown key 'sead' at the top level; did you mean 'seed'?"),
    ("name: t\nmodel: m\nstages: [extract]\nextract:\n  layers: all\n  batchsize: 8\n",
     ":6: unknown key 'batchsize' in extract; did you mean 'batch_size'?"),
    ("name: t\nmodel: m\nstages: [extract]\nseed: abc\n", ":4: seed: Input should be a valid integer"),
    ("name: t\nmodel: m\nstages: [extract]\nextract: {batch_size: 0}\n", ":4: extract.batch_size: Input should be greater than or equal to 1 (got 0)"),
    ("name: t\nmodel: m\nstages: [extract, prbe]\n", ":3: unknown stage 'prbe' in stages; did you mean 'probe'?"),
    ("name: t\nstages: [extract]\n", ": missing required key 'model' in the spec"),
    ("name: t\nmodel: m\nstages: [extract\n", ": not valid YAML"),
    ("- just\n- a list\n", ": a spec is a mapping"),
])
def test_spec_errors_are_one_line(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and message in msg, msg
    assert "\n" not in msg


def test_missing_spec_file_and_unknown_builtin():
    with pytest.raises(SpecError, match="spec file nope.yaml not found"):
        load_spec("nope.yaml")
    with pytest.raises(SpecError, match="no built-in spec 'dmeo'; did you mean 'demo'"):
        load_spec("dmeo")


@pytest.mark.parametrize("text", [
    "name: t\nmodel: m\nstages: [extract]\nsead: 1\n",
    "name: t\nmodel: m\nstages: [extract]\nseed: [1]\n",
])
def test_cli_spec_errors_exit_2_with_one_line(tmp_path, capsys, text):
    rc = main(["--quiet", "run", str(_write(tmp_path, text)), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("emoscope: error: ")
    assert not (tmp_path / "out").exists()


def test_cli_missing_spec_file_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and err.count("\n") == 1


def test_register_stage_rejects_a_second_owner(fake_stages):
    with pytest.raises(ValueError, match="already registered"):
        register_stage("fake-first")(lambda ctx: None)
    with pytest.raises(ValueError, match="must be letters"):
        register_stage("bad name")


def test_stage_options_model_validates_its_section(tmp_path):
    from pydantic import BaseModel, ConfigDict

    class Opts(BaseModel):
        model_config = ConfigDict(extra="forbid")
        strength: float = 4.0
        seeds: list[int] = [0, 1]

    register_stage("fake-opts", options_model=Opts, replace=True)(lambda ctx: None)
    try:
        spec = parse_spec({"name": "t", "model": "m", "stages": ["fake-opts"], "fake-opts": {"strength": 8}})
        assert spec.options("fake-opts").strength == 8.0
        rd = run_spec(spec, tmp_path / "run", report=False)
        assert rd.read_manifest().seeds == {"spec": 0, "fake-opts.seeds": [0, 1]}
        assert "strength: 8.0" in rd.spec_path.read_text()  # resolved options, defaults filled in
        with pytest.raises(SpecError, match="unknown key 'strenght' in fake-opts; did you mean 'strength'"):
            parse_spec({"name": "t", "model": "m", "stages": ["fake-opts"], "fake-opts": {"strenght": 8}})
    finally:
        unregister_stage("fake-opts")


# ----------------------------------------------------------------------------- runs
def test_every_catalogued_stage_exists_and_the_yaml_lists_nothing_else():
    from emoscope.core.stages import stage_catalog

    catalog = stage_catalog()
    assert list(catalog) == ["extract", "vectors", "probe", "geometry", "steer", "introspect", "heads", "patch",
                             "crossmodel", "modes", "leakage", "placebo", "elicit"]
    for name, entry in catalog.items():
        info = get_stage(name)
        assert info is not None and info.fn.__module__ == entry["module"], name
        assert info.options_model is not None and info.check is not None, name
    assert get_stage("no-such-stage") is None  # not listed: a spec naming it is refused
    with pytest.raises(SpecError, match="unknown stage 'no-such-stage'"):
        parse_spec({"name": "t", "model": "m", "stages": ["no-such-stage"]})


def test_run_writes_a_complete_run_dir(tmp_path, fake_stages):
    spec = fake_spec(stages=("fake-first", "fake-second"))
    rd = run_spec(spec, tmp_path / "run")
    for p in (rd.spec_path, rd.manifest_path, rd.findings_path, rd.report_path):
        assert p.is_file()
    assert (rd.tables / "fake-first-table.csv").is_file() and (rd.tables / "fake-first-table.json").is_file()
    assert (rd.figures / "fake-second-fig.png").is_file() and (rd.figures / "fake-second-fig.svg").is_file()
    m = rd.read_manifest()
    assert m.status == "done" and m.stage_order == ["fake-first", "fake-second"]
    assert [r.status for _, r in m.ordered_stages()] == ["done", "done"]
    assert m.stages["fake-first"].notes == ["fake-first ran"]
    assert m.stages["fake-first"].findings == ["fake-first-000", "fake-first-001"]
    assert m.stages["fake-first"].seconds is not None and m.stages["fake-first"].metrics == {"rows": 5}
    assert m.seeds == {"spec": 3}
    env = m.environment
    assert env["packages"]["emoscope"] and "numpy" in env["packages"] and "torch" in env["packages"]
    assert set(env["git"]) == {"revision", "dirty"} and m.hardware["cpu_count"] >= 1
    assert load_spec(rd.spec_path).hash == spec.hash == m.spec_hash
    ledger = rd.ledger.read()
    assert [f.id for f in ledger] == ["fake-first-000", "fake-first-001", "fake-second-000", "fake-second-001"]
    assert ledger[0].provenance.stage == "fake-first" and ledger[0].provenance.run_id == m.run_id
    assert "fake-first ran" in rd.report_path.read_text()


def test_input_checks_run_before_anything_is_written(tmp_path, fake_stages):
    """A stage's check(spec, dataset) refuses input before the run directory or a model exists."""
    from emoscope.errors import InputError

    seen = []

    def check(spec, dataset):
        seen.append((spec.name, dataset))
        if dataset == "bad":
            raise InputError("dataset 'bad' has one class")

    def no_model(name):
        raise AssertionError("a model was loaded")

    register_stage("fake-checked", check=check, replace=True)(lambda ctx: None)
    try:
        spec = parse_spec({"name": "c", "model": "m", "dataset": "bad", "stages": ["fake-first", "fake-checked"]})
        with pytest.raises(InputError, match="one class"):
            run_spec(spec, tmp_path / "run", model_loader=no_model, dataset_loader=lambda name: name)
        assert not (tmp_path / "run").exists() and seen == [("c", "bad")] and CALLS == {}
        spec = parse_spec({"name": "c", "model": "m", "dataset": "good", "stages": ["fake-first", "fake-checked"]})
        rd = run_spec(spec, tmp_path / "run", model_loader=no_model, dataset_loader=lambda name: name)
        assert rd.read_manifest().status == "done" and CALLS == {"fake-first": 1}
    finally:
        unregister_stage("fake-checked")


def test_fresh_run_into_non_empty_dir_names_resume(tmp_path, fake_stages, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="--resume"):
        run_spec(fake_spec(), out)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(fake_spec().to_yaml())
    assert main(["--quiet", "run", str(spec_path), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(RunDirError, match="not an emoscope run directory"):
        run_spec(fake_spec(), out, resume=True)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_resume_after_a_kill_mid_stage_equals_an_uninterrupted_run(tmp_path, fake_stages):
    clean = run_spec(fake_spec(), tmp_path / "clean")

    CALLS.clear()
    fake_stages(explode="fake-second")
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        run_spec(fake_spec(), broken)
    m = RunDir(broken).read_manifest()
    assert [r.status for _, r in m.ordered_stages()] == ["done", "failed", "pending"]
    assert m.status == "failed" and RunDir(broken).report_path.is_file()
    assert [f.id for f in RunDir(broken).ledger.read()] == ["fake-first-000", "fake-first-001"]

    rd = run_spec(fake_spec(), broken, resume=True)
    assert CALLS == {"fake-first": 1, "fake-second": 2, "fake-third": 1}  # only unfinished work redone
    m = rd.read_manifest()
    assert m.status == "done" and m.stages["fake-second"].attempts == 2
    assert [h["event"] for h in m.history] == ["started", "resumed", "finished"]
    assert results(rd) == results(clean)
    ids = [f.id for f in rd.ledger.read()]
    assert len(ids) == len(set(ids)) == 6


def test_resume_finishes_an_interrupted_commit_without_duplicates(tmp_path, fake_stages, monkeypatch):
    clean = run_spec(fake_spec(), tmp_path / "clean")
    real_extend = Ledger.extend
    state = {"armed": True}

    def crash_after_one(self, findings):
        findings = list(findings)
        if state["armed"] and len(findings) > 1:
            state["armed"] = False
            real_extend(self, findings[:1])
            raise KeyboardInterrupt  # killed between two ledger appends
        return real_extend(self, findings)

    monkeypatch.setattr(Ledger, "extend", crash_after_one)
    CALLS.clear()
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_spec(fake_spec(), out)
    assert RunDir(out).read_manifest().stages["fake-first"].status == "committing"
    assert len(RunDir(out).ledger.read()) == 1

    rd = run_spec(fake_spec(), out, resume=True)
    assert CALLS["fake-first"] == 1  # outputs were complete: only the commit is finished
    assert results(rd) == results(clean)


def test_resume_rejects_a_different_spec(tmp_path, fake_stages):
    out = tmp_path / "run"
    run_spec(fake_spec(), out)
    with pytest.raises(RunDirError, match="different spec"):
        run_spec(fake_spec(stages=("fake-first",)), out, resume=True)
    rd = run_spec(fake_spec(), out, resume=True)  # nothing left to do
    assert CALLS == {"fake-first": 1, "fake-second": 1, "fake-third": 1}
    assert len(rd.ledger.read()) == 6


def test_cli_resume_from_the_run_dir(tmp_path, fake_stages, capsys):
    fake_stages(explode="fake-third")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(fake_spec().to_yaml())
    out = tmp_path / "run"
    assert main(["--quiet", "run", str(spec_path), "--out", str(out)]) == 130  # interrupted
    assert main(["--quiet", "run", str(out), "--resume"]) == 0
    assert "report: " in capsys.readouterr().out
    assert RunDir(out).read_manifest().status == "done"


@pytest.mark.parametrize("error, advice", [
    ("InputError", "the input must change: fix it and run again (into a new --out, or into {out} with --resume)"),
    ("OfflineError", "fix it and continue with --resume"),
    ("DataError", "fix it and continue with --resume"),
])
def test_stage_user_error_is_one_line_naming_the_stage(tmp_path, capsys, error, advice):
    """A stage's error says how to go on: --resume only where the same spec can then succeed (a
    problem outside the spec), not where the input itself must change."""
    import emoscope.errors

    def bad(ctx):
        raise getattr(emoscope.errors, error)("no such layer 99")

    register_stage("fake-bad", replace=True)(bad)
    try:
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text("name: t\nmodel: m\nstages: [fake-bad]\n")
        out = tmp_path / "o"
        assert main(["--quiet", "run", str(spec_path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"emoscope: error: stage 'fake-bad' failed: no such layer 99; {advice.format(out=out)}\n"
        assert RunDir(out).read_manifest().stages["fake-bad"].error == f"{error}: no such layer 99"
    finally:
        unregister_stage("fake-bad")


def test_an_input_error_after_a_finished_stage_says_to_use_a_new_out(tmp_path, fake_stages):
    from emoscope.errors import InputError

    def bad(ctx):
        raise InputError("bad")

    register_stage("fake-bad", replace=True)(bad)
    try:
        with pytest.raises(InputError, match=r"bad; the input must change, so run the changed command into a new "
                                             r"--out \(finished stages of .* cannot be resumed under another spec\)"):
            run_spec(fake_spec(stages=("fake-first", "fake-bad")), tmp_path / "run")
    finally:
        unregister_stage("fake-bad")


def test_corrupt_or_foreign_run_dirs_are_one_line_errors(tmp_path, fake_stages, capsys):
    rd = run_spec(fake_spec(), tmp_path / "run")
    assert main(["audit", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "plain").mkdir()
    assert main(["audit", str(tmp_path / "plain")]) == 2
    rd.manifest_path.write_text('{"kind": "emoscope-run", ')
    assert main(["report", str(rd.root)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert "does not exist" in err[0] and "no manifest.json" in err[1] and "manifest.json is corrupt" in err[2]
    with pytest.raises(RunDirError, match="corrupt"):
        run_spec(fake_spec(), rd.root, resume=True)


def test_audit_exit_codes(tmp_path, fake_stages, capsys):
    failing = run_spec(fake_spec(stages=("fake-first",)), tmp_path / "a")
    assert main(["audit", str(failing.root)]) == 1
    out = capsys.readouterr().out
    assert "length-only baseline 0.97 explains the probe accuracy 0.98" in out
    assert "do not ship: fake-first-000" in out

    def observations_only(ctx):
        ctx.add_finding(Finding(kind="probe", observation=Observation(metric="accuracy", value=0.6)))

    register_stage("fake-obs", replace=True)(observations_only)
    try:
        rd = run_spec(parse_spec({"name": "o", "model": "m", "stages": ["fake-obs"]}), tmp_path / "b")
        assert main(["audit", str(rd.root)]) == 0
        assert main(["audit", "--json", str(rd.root)]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["id"] == "fake-obs-000"
    finally:
        unregister_stage("fake-obs")


def test_write_table_keeps_a_named_index_and_rejects_paths(tmp_path):
    from emoscope.errors import InputError

    seen = {}

    def stage(ctx):
        df = pd.DataFrame({"norm": [1.0, 2.0]}, index=pd.Index([0, 1], name="layer"))
        ctx.write_table("norms", df)
        seen["df"] = ctx.read_table("norms")
        with pytest.raises(InputError):
            ctx.write_table("../escape", df)

    register_stage("fake-table", replace=True)(stage)
    try:
        rd = run_spec(parse_spec({"name": "t", "model": "m", "stages": ["fake-table"]}), tmp_path / "r", report=False)
        assert list(seen["df"].columns) == ["layer", "norm"]
        assert json.loads((rd.tables / "norms.json").read_text())["columns"] == ["layer", "norm"]
        assert not (tmp_path / "escape.csv").exists()
    finally:
        unregister_stage("fake-table")


# ----------------------------------------------------------------------------- extract stage
class FakeModel:
    name, n_layers, d_model, n_heads, weights_sha256 = "fake-model", 4, 8, 2, "ab" * 32


class FakeDataset:
    texts = ["short", "a bit longer text", "much longer text than the others here", "mid length"] * 5
    labels = ["joy", "sadness"] * 10
    classes = ["joy", "sadness"]
    sha256 = "cd" * 32


class FakeActs:
    def __init__(self, texts, layers):
        self.layers = layers
        self.token_counts = np.array([len(t.split()) for t in texts])
        rng = np.random.default_rng(0)
        # norm grows with depth and with length: the confound the first look must show
        self._x = {layer: rng.normal(size=(len(texts), 8)) * (1 + layer) * self.token_counts[:, None] ** 0.5
                   for layer in layers}
        self.norms = {layer: np.linalg.norm(x, axis=1) for layer, x in self._x.items()}

    def get(self, layer):
        return self._x[layer]


def test_extract_stage_first_look(tmp_path, monkeypatch):
    calls = {}

    def fake_extract(model, texts, layers="all", position="last", *, batch_size=32, dtype="float32",
                     padding_side="right", cache=True, out=None):
        calls.update(layers=layers, position=position, batch_size=batch_size, cache=cache, out=out)
        return FakeActs(texts, list(range(model.n_layers)) if layers == "all" else list(layers))

    get_stage("extract")  # import the stage module before its package is replaced by the fake
    monkeypatch.setitem(sys.modules, "emoscope.activations",
                        types.SimpleNamespace(extract=fake_extract, parse_position=str))
    spec = spec_from_yaml("name: first\nmodel: fake\ndataset: fake\nstages: [extract]\n"
                          "extract: {layers: all, batch_size: 4}\n")
    rd = run_spec(spec, tmp_path / "run", model_loader=lambda name: FakeModel(),
                  dataset_loader=lambda name: FakeDataset())
    assert calls == {"layers": "all", "position": "last", "batch_size": 4, "cache": True, "out": None}
    table = pd.read_csv(rd.tables / "activation_norms.csv")
    assert list(table.columns) == ["layer", "relative_depth", "mean_norm", "sd_norm", "n", "corr_norm_tokens"]
    assert table.layer.tolist() == [0, 1, 2, 3] and table.relative_depth.tolist() == [0, 0.25, 0.5, 0.75]
    assert table.mean_norm.is_monotonic_increasing and (table.n == 20).all()
    assert (table.corr_norm_tokens > 0.5).all()
    assert (rd.figures / "activation_norms.png").stat().st_size > 1000
    m = rd.read_manifest()
    assert m.models["fake"]["weights_sha256"] == "ab" * 32 and m.models["fake"]["n_layers"] == 4
    assert m.datasets["fake"]["sha256"] == "cd" * 32
    assert any("tracks prompt length" in n for n in m.stages["extract"].notes)
    findings = rd.ledger.read()
    assert [f.kind for f in findings] == ["extraction", "extraction"] and not any(f.blocks for f in findings)
    assert findings[0].observation.value == pytest.approx(table.mean_norm.iloc[-1] / table.mean_norm.iloc[0])


def test_extract_stage_on_a_tiny_random_model(tmp_path, monkeypatch):
    """Integration with the real extraction and dataset code."""
    from emoscope import datasets

    from .conftest import tiny_model

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    spec = spec_from_yaml("name: tiny\nmodel: tiny-llama\ndataset: emotions-basic\nstages: [extract]\n"
                          "extract: {layers: all, position: last, batch_size: 16}\n")
    full = datasets.load_dataset("emotions-basic")
    small = types.SimpleNamespace(texts=list(full.texts[:24]), labels=list(full.labels[:24]),
                                  classes=full.classes, sha256=full.sha256)  # 24 texts keep it quick
    rd = run_spec(spec, tmp_path / "run", model_loader=lambda name: model, dataset_loader=lambda name: small)
    table = pd.read_csv(rd.tables / "activation_norms.csv")
    assert table.layer.tolist() == list(range(model.n_layers)) and (table.n == 24).all()
    assert (table.mean_norm > 0).all()
    m = rd.read_manifest()
    assert m.stages["extract"].status == "done" and m.models["tiny-llama"]["n_layers"] == model.n_layers
    assert "torch_threads" in m.hardware  # torch was loaded, so threads are recorded
