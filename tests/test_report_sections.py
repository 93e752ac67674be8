"""Stage sections on real runs of tiny models: cross-model (two families), heads, patching,
modes (with what the model elicited) and leakage. Every number a section shows is read back
against the CSV the stage wrote; multi-model runs keep their models apart; the registry gives a
stage it does not know the generic section."""

from __future__ import annotations

import html as html_lib
import os
import re
import shutil

import pandas as pd
import pytest

from emoscope.report import render_report
from emoscope.report.glance import fmt
from emoscope.report.sections import section_spec
from emoscope.report.yardsticks import Measured, Rule, judge
from emoscope.runs import run_spec, spec_from_yaml
from emoscope.runs.spec import load_spec, parse_spec

from .conftest import tiny_model
from .report_checks import check_page, chromium_or_skip


def _text(html: str) -> str:
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def _section(page: str, anchor: str) -> str:
    return page.split(f'id="{anchor}"', 1)[1].split("</section>", 1)[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOSCOPE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _run(tmp_path_factory, yaml_text: str, name: str):
    model = tiny_model("llama")
    return run_spec(spec_from_yaml(yaml_text), tmp_path_factory.mktemp(name) / "run", model_loader=lambda _: model)


# -- cross-model ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xm(tmp_path_factory, cache):
    dirs = []
    for fam in ("llama", "gemma3_text"):
        d = tmp_path_factory.mktemp(f"tiny-{fam}")
        m = tiny_model(fam)
        m.hf.save_pretrained(d, safe_serialization=True)
        m.tokenizer.save_pretrained(d)
        dirs.append(d)
    ys = [y.model_dump(mode="json", exclude_defaults=True) for y in load_spec("cross-model").yardsticks]
    spec = parse_spec({"name": "xm", "model": str(dirs[0]), "models": [str(dirs[1])], "dataset": "emotions-12",
                       "seed": 0, "stages": ["extract", "vectors", "probe", "crossmodel"],
                       "extract": {"layers": "all", "position": "last"},
                       "probe": {"n_folds": 3, "seeds": [0], "n_permutations": 5, "nullspace_k": 1},
                       "crossmodel": {"n_perm": 99, "sweep_depths": [0.34]}, "yardsticks": ys}, source="test")
    rd = run_spec(spec, tmp_path_factory.mktemp("xm") / "run", log=lambda _m: None)
    return rd, [d.name for d in dirs]


def test_crossmodel_section_figure_first_with_alignment_space_and_peaks(xm):
    rd, keys = xm
    page = rd.report_path.read_text()
    sec = _section(page, "stage-crossmodel")
    assert sec.index('alt="Probe accuracy of every model on relative depth') < sec.index('class="tbl"')
    assert 'alt="Debiased linear CKA' in sec
    text = _text(sec)
    for head in ("raw (no map)", "ridge", "Procrustes", "ridge, shuffled pairs", "Procrustes, shuffled pairs"):
        assert head in text
    al = pd.read_csv(rd.tables / "alignment.csv")
    first = al[(al["map"] == "ridge") & (al["vectors"] == "raw")].iloc[0]
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", sec.split("alignment: raw, aligned and shuffled maps")[1])
               if "matched cos²" in r)
    assert fmt(float(first["matched_cos2"])) in _text(row)
    dp = pd.read_csv(rd.tables / "depth_peaks.csv")
    for r in dp.itertuples():
        assert f"layer {r.argmax_layer} of {r.n_layers}" in text
    es = pd.read_csv(rd.tables / "emotion_space.csv")
    assert f"{fmt(float(es.r_valence.iloc[0]))} ({fmt(float(es.p_valence.iloc[0]))})" in text


def test_multi_model_run_keeps_models_apart(xm):
    rd, keys = xm
    page = rd.report_path.read_text()
    for k in keys:
        group = page.split(f'id="group-{k.lower().replace("_", "-")}"', 1)[1].split('<div class="group"', 1)[0]
        assert f"Model {k}" in group and f"probe — model {k}" in group
        other = next(x for x in keys if x != k)
        assert f"model {other}" not in group
        assert f"probe layer curve — model {k}" in group or f"baselines — model {k}" in group
    # the first screen shows the comparison across models
    assert page.split('id="findings"', 1)[0].count('alt="Probe accuracy of every model on relative depth') == 1


def test_crossmodel_yardstick_table_is_filled(xm):
    rd, keys = xm
    page = rd.report_path.read_text()
    sec = _text(page.split('id="yardsticks"', 1)[1].split("</section>", 1)[0])
    assert "no table" not in sec and "has no column" not in sec
    # each line's word follows the rule applied to the CSV (recomputed here)
    al = pd.read_csv(rd.tables / "alignment.csv")
    v = float(al[(al["map"] == "ridge") & (al["vectors"] == "raw") & (al["depth"] == 0.5)].iloc[0]["matched_cos2"])
    word, _ = judge(Rule(within=(0.96, 0.99), tolerance=0.03), Measured("", v))
    assert re.search(rf"{word} aligned overlap — [^|]*?{re.escape(fmt(v))}", sec)
    dp = pd.read_csv(rd.tables / "depth_peaks.csv")
    assert len(dp) == len(keys)
    for r, key in zip(dp.itertuples(), keys, strict=True):
        w, _ = judge(Rule(within=(0.5, 0.5), tolerance=0.1),
                     Measured("", r.argmax_rel_depth, r.span_lo_rel_depth, r.span_hi_rel_depth))
        assert f"{w} peak relative depth — {key}" in sec


@pytest.mark.browser
def test_crossmodel_report_in_headless_chromium(xm):
    sync_api = chromium_or_skip()
    rd, _ = xm
    with sync_api.sync_playwright() as pw:
        facts = check_page(pw, rd.report_path)
    if os.environ.get("EMOSCOPE_SCREENSHOT_XM"):
        shutil.copy(facts["screenshot"], os.environ["EMOSCOPE_SCREENSHOT_XM"])


# -- heads, patching, modes, leakage on the tiny llama ----------------------------------------------------------------
@pytest.fixture(scope="module")
def heads_run(tmp_path_factory, cache):
    import emoscope.heads.stage  # noqa: F401  (registers the stage)

    return _run(tmp_path_factory, "name: tiny-heads\nmodel: tiny-llama\ndataset: emotions-basic\nstages: [heads]\n"
                "heads: {emotion: anger, vector_layers: [1, 2], n_permutations: 19, heads: 'top:2', n_random: 3,"
                " n_prompts: 4, max_new_tokens: 5, scorers: [nrc, vader, perplexity, repetition, script]}\n", "heads")


def test_heads_section_heatmap_first_then_effects_against_random_sets(heads_run):
    page = heads_run.report_path.read_text()
    sec = _section(page, "stage-heads")
    assert sec.index('alt="Each head') < sec.index("chosen heads against random sets")
    eff = pd.read_csv(heads_run.tables / "heads_ablate_effects.csv")
    text = _text(sec)
    for r in eff.itertuples():
        interval = f" [{fmt(float(r.effect_lo))}, {fmt(float(r.effect_hi))}]" if pd.notna(r.effect_lo) else ""
        assert f"{fmt(float(r.effect))}{interval}" in text
        assert f"{r.rank} of {r.k + 1}" in text


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory, cache):
    return _run(tmp_path_factory, "name: tiny-patch\nmodel: tiny-llama\nstages: [patch]\n"
                "patch: {source: 'emotions-basic:anger', layers: [1, 2], positions: [last], n_targets: 4, "
                "n_sources: 6, max_new_tokens: 5, n_random: 2, target_score: valence, "
                "scorers: [nrc, vader, perplexity, repetition, script]}\n", "patch")


def test_patch_section_shows_the_two_views_side_by_side(patch_run):
    page = patch_run.report_path.read_text()
    sec = _section(page, "stage-patch")
    side = sec.split('<div class="side">', 1)[1]
    left, right = side.split("</table>", 2)[:2]
    cells = pd.read_csv(patch_run.tables / "patch_cells.csv")
    assert len(cells) == 2
    for r in cells.itertuples():
        assert f"layer {r.layer}, {r.positions}" in left and f"layer {r.layer}, {r.positions}" in right
        assert fmt(float(r.effect)) in _text(left)
        if pd.notna(r.step1_effect):
            assert fmt(float(r.step1_effect)) in _text(right)
        assert str(r.views) in _text(right)
    assert "multi-token effect" in left and "step-1 effect" in right


@pytest.fixture(scope="module")
def modes_run(tmp_path_factory, cache):
    ys = [y.model_dump(mode="json", exclude_defaults=True) for y in load_spec("extraction-modes").yardsticks]
    model = tiny_model("llama")
    spec = parse_spec({"name": "tiny-modes", "model": "tiny-llama", "stages": ["modes"], "yardsticks": ys,
                       "modes": {"emotions": ["joy", "fear", "anger"], "n": 5, "max_new_tokens": 6, "layers": [1, 2],
                                 "steer_layer": 2, "folds": 3, "n_prompts": 2, "steer_tokens": 3, "n_random": 2,
                                 "promote_k": 2}}, source="test")
    return run_spec(spec, tmp_path_factory.mktemp("modes") / "run", model_loader=lambda _: model)


def test_modes_section_compares_arms_and_shows_what_was_elicited(modes_run):
    page = modes_run.report_path.read_text()
    sec = _section(page, "stage-modes")
    text = _text(sec)
    summary = pd.read_csv(modes_run.tables / "modes_summary.csv")
    # the stage draws no figure: the section draws gen_instr - read_plain per metric from modes_paired
    assert sec.index('alt="Generation against comprehension') < sec.index('class="tbl"')
    assert page.split('id="findings"', 1)[0].count('alt="Generation against comprehension') == 1
    assert "arm comparison" in text
    for arm in summary["arm"]:
        assert arm in text
    samples = pd.read_csv(modes_run.tables / "elicit_samples.csv")
    for _label, g in samples.groupby("label"):
        assert html_lib.escape(str(g["text"].iloc[0]))[:40] in sec
    counts = pd.read_csv(modes_run.tables / "elicit_counts.csv")
    assert "elicited texts: kept and rejected per emotion" in text and str(int(counts["kept"].iloc[0])) in text


def test_extraction_modes_yardstick_table_is_filled(modes_run):
    page = modes_run.report_path.read_text()
    sec = _text(page.split('id="yardsticks"', 1)[1].split("</section>", 1)[0])
    assert "no table" not in sec and "no row" not in sec and "has no column" not in sec
    steer = pd.read_csv(modes_run.tables / "modes_steer.csv")
    g = steer[steer["arm"] == "gen_instr"]
    k, n = int(round((g["success_rate"] * g["n_outputs"]).sum())), int(g["n_outputs"].sum())
    assert f"{k} of {n} outputs" in sec
    paired = pd.read_csv(modes_run.tables / "modes_paired.csv").set_index(["metric", "a", "b"])
    r = paired.loc[("separation", "gen_instr", "read_plain")]
    assert f"{r['diff']:.3g} [{r['diff_lo']:.3g}, {r['diff_hi']:.3g}]" in sec


@pytest.fixture(scope="module")
def leakage_run(tmp_path_factory, cache):
    return _run(tmp_path_factory, "name: tiny-leak\nmodel: tiny-llama\ndataset: emotions-12\nstages: [leakage]\n"
                "leakage: {emotions: [joy], layer: 2, strengths: [0.5, 2.0], n_prompts: 2, max_new_tokens: 4, "
                "n_random: 2, promote_k: 3, chat: false}\n", "leak")


def test_leakage_section_draws_script_shares_by_strength(leakage_run):
    page = leakage_run.report_path.read_text()
    sec = _section(page, "stage-leakage")
    assert sec.count('src="data:image/svg+xml;base64,') >= 1
    assert sec.index('alt="token share outside the prompt') < sec.index('class="tbl"')  # the drawn key figure
    table = pd.read_csv(leakage_run.tables / "leakage_by_strength.csv")
    text = _text(sec.split("by strength and kind", 1)[1])
    for r in table.itertuples():
        assert fmt(float(r.token_share)) in text
    for s in sorted(set(table["abs_strength"])):
        assert fmt(float(s)) in text


# -- the registry -----------------------------------------------------------------------------------------------------
def test_a_stage_the_registry_does_not_know_gets_the_generic_section():
    spec = section_spec("some-new-stage@model")
    assert spec.template == "section_stage.html" and spec.key_figures == ()
    assert section_spec("crossmodel@x").template == "section_crossmodel.html"


def test_render_is_deterministic_but_for_its_timestamp(patch_run):
    a, b = render_report(patch_run.root), render_report(patch_run.root)
    strip = re.compile(r"at \d{4}-\d\d-\d\dT[\d:.+]+ from")
    assert strip.sub("", a) == strip.sub("", b)


def test_a_section_whose_own_view_breaks_falls_back_to_its_tables(patch_run, monkeypatch):
    from emoscope.report.sections import load_section_data, section_functions

    def broken(view, stage, rec):
        raise KeyError("effect_lo")

    load_section_data()
    monkeypatch.setitem(section_functions(), "patch", broken)
    page = render_report(patch_run.root)
    sec = _section(page, "stage-patch")
    assert "own view could not be drawn (KeyError" in sec and 'id="table-patch-cells"' in sec
