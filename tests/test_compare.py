"""``emoscope compare RUN_A RUN_B``: findings matched by kind, stage and subject across seeds,
models and checklist versions; verdicts that changed, values, controls that flipped; a run
against itself shows no change; bad input is one line and exit code 2."""

from __future__ import annotations

import json
import re

import pytest

from emoscope.audit import Control, Finding, Observation
from emoscope.audit.checklist import checklist_version
from emoscope.cli.main import main
from emoscope.core.stages import unregister_stage
from emoscope.report.compare import compare_runs, format_comparison, subject
from emoscope.runs import StageResult, parse_spec, register_stage, run_spec


def _stage(ctx):
    seed, model = ctx.seed, ctx.spec.model
    # an alignment claim whose shuffled-pairing control passes with seed 1 and fails with seed 2
    ctx.add_finding(Finding(
        kind="alignment", claim=f"the map carries {model}'s emotion vectors",
        observation=Observation(metric=f"identification accuracy of {model} at layer {10 + seed} (of 30)",
                                value=0.8 + seed / 100, interval=(0.7, 0.9), n=12, unit="emotions"),
        controls=[Control(name="identification", value=0.8, passed=True),
                  Control(name="shuffled_pairing", value=0.1 if seed == 1 else 0.75, passed=seed == 1),
                  Control(name="heldout_fit", value=0.3, passed=True)]))
    ctx.add_finding(Finding(kind="extraction", observation=Observation(metric=f"mean norm of {model}",
                                                                       value=20.0 + seed)))
    if seed == 2:
        ctx.add_finding(Finding(kind="extraction", observation=Observation(metric="a new observation", value=1.0)))
    return StageResult(summary="planted")


@pytest.fixture
def runs(tmp_path):
    register_stage("fake-cmp", replace=True)(_stage)
    out = {}
    for seed, model in ((1, "model-a"), (2, "model-b")):
        spec = parse_spec({"name": "cmp", "model": model, "seed": seed, "stages": ["fake-cmp"]})
        out[seed] = run_spec(spec, tmp_path / f"run{seed}")
    yield out
    unregister_stage("fake-cmp")


def test_subject_ignores_model_names_and_numbers():
    m = {"/models/Qwen2.5-0.5B": "M0"}
    assert subject("accuracy of /models/Qwen2.5-0.5B at layer 19, PC1 (59%)", m) == "accuracy of M0 at layer #, PC1 (#%)"


def test_a_run_against_itself_has_no_changes(runs):
    c = compare_runs(runs[1].root, runs[1].root)
    assert c.headline() == "No changes: all 2 findings match, with the same verdicts and controls."
    assert all(p.status == "same verdict" and not p.flipped for p in c.pairs)


def test_two_seeds_and_two_models_show_what_changed(runs):
    c = compare_runs(runs[1].root, runs[2].root)
    by = {p.kind + ":" + p.status: p for p in c.pairs}
    claim = by["alignment:verdict changed"]  # matched across models (model-a vs model-b) and layers (11 vs 12)
    assert claim.verdicts == "ships → fails" and claim.flipped == ["shuffled_pairing: pass → FAIL"]
    assert claim.values == ("0.81 [0.7, 0.9]", "0.82 [0.7, 0.9]")
    norm = next(p for p in c.pairs if p.kind == "extraction" and p.a is not None)
    assert norm.status == "same verdict" and norm.values == ("21", "22")
    assert by["extraction:only in B"].b.observation.metric == "a new observation"
    assert c.counts() == {"same verdict": 1, "verdict changed": 1, "controls flipped": 1, "only in A": 0,
                          "only in B": 1}
    table = format_comparison(c)
    assert "ships → fails" in table and "shuffled_pairing: pass → FAIL" in table


def test_a_changed_checklist_is_named_and_the_verdict_it_moved(tmp_path):
    """Run A is stored as judged by the previous checklist (its similarity claim shipped without
    the control the current one added); run B is judged by the current one."""
    def stage(ctx):
        ctx.add_finding(Finding(
            kind="similarity", claim="joy and sadness point apart",
            observation=Observation(metric="centred cosine", value=-0.6, interval=(-0.7, -0.5), n=50),
            controls=[Control(name=n, value=0.01, passed=True)
                      for n in ("null_distribution", "length_control", "heldout_selection", "seed_spread")]))
        return StageResult(summary="planted")

    register_stage("fake-ck", replace=True)(stage)
    try:
        rds = [run_spec(parse_spec({"name": "ck", "model": "m", "stages": ["fake-ck"]}), tmp_path / f"r{i}")
               for i in (0, 1)]
    finally:
        unregister_stage("fake-ck")
    now = checklist_version()
    old = rds[0].findings_path
    rec = json.loads(old.read_text())
    assert rec["verdict"] != "ships"  # the current checklist wants a control this claim lacks
    rec.update(verdict="ships", reasons=[], checklist_version=now - 1)
    old.write_text(json.dumps(rec) + "\n")
    c = compare_runs(rds[0].root, rds[1].root)
    assert c.checklist[0].startswith(f"The checklist changed: A was judged with version {now - 1}, B with {now}")
    (p,) = c.pairs
    assert p.status == "verdict changed" and p.verdicts.startswith("ships → ")
    assert p.checklist_note.endswith("the checklist moved it")


def test_cli_prints_the_table_and_writes_one_page(runs, tmp_path, capsys):
    out = tmp_path / "cmp.html"
    assert main(["compare", str(runs[1].root), str(runs[2].root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ships → fails" in printed and printed.rstrip().endswith(f"wrote {out}")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert page.count('<tr class="row-') == 3 and "shuffled_pairing: pass → FAIL" in page


@pytest.mark.parametrize("args, needle", [
    (["{a}", "{missing}"], "does not exist"),
    (["{a}", "{a}", "--out", "{dir}"], "is a directory"),
    (["{a}", "{a}", "--out", "{dir}/x.txt"], "must end in .html"),
    (["{a}", "{a}", "--out", "{dir}/no/x.html"], "does not exist"),
    (["{a}", "{corrupt}"], "findings.jsonl:1"),
])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, args, needle):
    corrupt = tmp_path / "corrupt"
    if "{corrupt}" in args:
        import shutil

        shutil.copytree(runs[1].root, corrupt)
        (corrupt / "findings.jsonl").write_text("{not json\n")
    fill = {"a": str(runs[1].root), "missing": str(tmp_path / "none"), "dir": str(tmp_path), "corrupt": str(corrupt)}
    argv = ["compare"] + [a.format(**fill) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and re.match(r"emoscope: error: ", err)


def test_a_finding_worded_differently_is_matched_by_kind_and_stage(tmp_path):
    def stage(ctx):
        word = "over random" if ctx.seed == 1 else "in the intended direction"
        ctx.add_finding(Finding(kind="extraction", observation=Observation(metric=f"joy change {word}", value=0.1)))
        return StageResult(summary="planted")

    register_stage("fake-words", replace=True)(stage)
    try:
        a, b = (run_spec(parse_spec({"name": "w", "model": "m", "seed": s, "stages": ["fake-words"]}), tmp_path / f"{s}")
                for s in (1, 2))
    finally:
        unregister_stage("fake-words")
    (p,) = compare_runs(a.root, b.root).pairs
    assert p.status == "same verdict" and not p.flipped
    assert p.wording == 'matched by kind and stage: A words it "joy change over random"'
