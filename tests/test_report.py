"""The offline HTML report (fake stages, no model); the browser tests render it in headless Chromium.

The fake run holds a claim that ships, one that fails on a control with a note, one that needs
controls, an observation, a per-finding ``draws_`` figure, a wide table with token ids, a planted
``placebo_rates`` table and two yardsticks, so every part of the page is exercised.
"""

from __future__ import annotations

import html as html_lib
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from emoscope.audit import Control, Finding, Observation
from emoscope.cli.main import main
from emoscope.core.stages import unregister_stage
from emoscope.report import write_report
from emoscope.report.blocks import MAX_COLS, SHOWN_ROWS
from emoscope.runs import StageResult, parse_spec, register_stage, run_spec

from .report_checks import check_page, chromium_or_skip

NOTE = "p = 0.41 over 200 permutations"


def _plot_stage(ctx):
    from matplotlib.figure import Figure

    rng = np.random.default_rng(ctx.seed)
    ctx.write_table("layer_curve", pd.DataFrame({"layer": range(80), "accuracy": rng.uniform(0.4, 1.0, 80)}))
    for name in ("draws_gratitude", "layer_curve", "norms", "draws_001", "placebo_rates"):
        fig = Figure(figsize=(4, 3))
        fig.add_subplot().plot(rng.normal(size=20))
        ctx.save_figure(name, fig)
    ctx.write_table("placebo_rates", pd.DataFrame({
        "kind": ["probe", "steering"], "n_decoys": [40, 40], "n_ship": [1, 9], "rate": [0.025, 0.225],
        "lo": [0.004, 0.123], "hi": [0.129, 0.375]}))
    ctx.add_finding(Finding(
        kind="probe", claim="<script>alert('x')</script> joy is decodable at layer 3",
        observation=Observation(metric="accuracy", value=0.98, interval=(0.96, 0.99), n=400),
        controls=[Control(name="length_baseline", value=0.97, passed=False, note=NOTE),
                  Control(name="shuffled_labels", value=0.51, passed=True)]))
    ctx.add_finding(Finding(
        kind="alignment", claim="the map carries the emotion vectors across models",
        observation=Observation(metric="identification accuracy", value=0.83, interval=(0.6, 0.95), n=12,
                                unit="emotions"),
        controls=[Control(name="identification", value=0.83, passed=True),
                  Control(name="shuffled_pairing", value=0.08, passed=True),
                  Control(name="heldout_fit", value=0.38, passed=True)]))
    ctx.add_finding(Finding(
        kind="similarity", claim="joy and sadness point apart",
        observation=Observation(metric="cosine", value=-0.6),
        controls=[Control(name="length_control", value=-0.55, passed=True),
                  Control(name="null_distribution", value=0.1, passed=True)]))
    ctx.add_finding(Finding(kind="extraction", observation=Observation(metric="mean residual norm", value=7.0)))
    ctx.note("a note with <b>markup</b> & ampersands")
    return StageResult(summary="plotted", metrics={"peak_layer": 3})


def _table_stage(ctx):
    df = pd.DataFrame({f"c{i}": [i * 1.5, float("nan")] for i in range(30)})
    df.insert(1, "token_ids", ["24820 1039 314 1811", "7 8 9"])
    ctx.write_table("wide", df)


YARDSTICKS = [
    {"name": "peak accuracy", "paper": "a <planted> paper", "reported": "0.9–1.0", "definition": "accuracy",
     "here": "layer 3 of layer_curve", "rule": {"within": [0.9, 1.0]},
     "measure": {"table": "layer_curve", "where": {"layer": 3}, "value": "accuracy"}},
    {"name": "missing", "paper": "another paper", "reported": "0.5", "rule": {"above": 0},
     "measure": {"table": "no_such_table", "value": "x"}},
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    register_stage("fake-plot", replace=True)(_plot_stage)
    register_stage("fake-wide", replace=True)(_table_stage)
    spec = parse_spec({"name": "report-test", "description": "a <fake> run", "model": "fake", "seed": 1,
                       "stages": ["fake-plot", "fake-wide"], "yardsticks": YARDSTICKS})
    rd = run_spec(spec, tmp_path_factory.mktemp("report") / "run")
    yield rd
    unregister_stage("fake-plot")
    unregister_stage("fake-wide")


@pytest.fixture(scope="module")
def page(run_dir):
    return run_dir.report_path.read_text()


def _text(html: str) -> str:
    """The page's visible text, tags removed and entities decoded."""
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", html, flags=re.S)))


def test_report_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href|action|poster)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//|@import", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page
    # the only links that leave the page are the run's own CSV files, relative to it
    for href in re.findall(r'href="([^"#][^"]*)"', page):
        assert re.fullmatch(r"(tables/[\w.\-]+\.csv|manifest\.json)", href), href


def test_report_escapes_all_text(page):
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "<b>markup</b>" not in page and "&lt;b&gt;markup&lt;/b&gt; &amp; ampersands" in page
    assert "a &lt;fake&gt; run" in page and "a &lt;planted&gt; paper" in page


def test_first_screen_says_what_the_run_found(page):
    lede = _text(page.split('class="lede"', 1)[1].split("</section>", 1)[0]).lower()
    # written from the findings: 1 of 3 claims ships, the probe fails on its length baseline
    assert "1 of 3 claims ships" in lede and "the map carries the emotion vectors across models" in lede
    assert "prompt length alone reaches 0.97, so the probe may be reading length, not emotion" in lede
    assert "1 claim needs more before it can ship — missing: held-out selection" in lede
    # the key figure is the failing claim's stage's figure (the section's key figure: the first one here)
    first = page.split('id="findings"', 1)[0]
    assert first.count("<img ") == 1 and 'alt="layer curve' in first


def test_findings_at_a_glance_one_row_each_and_no_text_twice(run_dir, page):
    table = page.split('id="findings-table"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr class=\"row-", table)
    assert len(rows) == len(run_dir.ledger.read()) == 4
    # claims first: ships, fails, needs controls, then the observation
    order = re.findall(r'<tr class="row-([a-z-]+)', table)
    assert order == ["ships", "fails", "needs-controls", "holds"]
    assert "accuracy 0.98 [0.96, 0.99], n = 400" in table  # one sentence: value and interval
    assert "length-only baseline 0.97" in table            # the deciding control in a few words
    # the failed control's note is shown once: inside its reason, not again on its own
    assert table.count(NOTE) == 1
    assert "length-only baseline 0.97 explains the probe accuracy 0.98 — " + NOTE in html_lib.unescape(table)
    # controls and reasons fold under native <details>; no script is needed to open them
    assert table.count("<details>") == 3 and "<script" not in page


def test_draws_figure_sits_with_its_finding(run_dir, page):
    ids = [f.id for f in run_dir.ledger.read()]
    row = page.split(f'id="finding-{ids[1].replace("@", "-")}"', 1)[1].split("</tr>", 1)[0]
    assert 'alt="Random-draw control: each draw' in row
    # a draws figure whose name fits no finding stays in its stage, and is never the stage's key figure
    sec = page.split('id="stage-fake-plot"', 1)[1].split("</section>", 1)[0]
    assert page.count('alt="Random-draw control') == 2 and "— gratitude (figures/draws_gratitude.png)" in sec
    assert sec.index('alt="layer curve') < sec.index("draws_gratitude")


def test_tables_fold_with_first_rows_and_a_csv_link_and_no_machine_columns(page):
    block = page.split('id="table-layer-curve"', 1)[1].split('<p class="caption">', 2)
    shown, rest = block[0].split("<details", 1) if "<details" in block[0] else (block[0], "")
    assert shown.count("<tr>") == 1 + SHOWN_ROWS and "more rows" in rest
    assert '<a href="tables/layer_curve.csv">' in page
    wide = page.split('id="table-wide"', 1)[1].split("</div>", 1)[0]
    head = re.findall(r"<th>([^<]+)</th>", wide.split("</thead>", 1)[0])
    assert len(head) == MAX_COLS and "token_ids" not in head and "24820" not in wide
    assert "not shown: token_ids" in wide


def test_stage_opens_with_its_sentence_then_its_key_figure(page):
    sec = page.split('id="stage-fake-plot"', 1)[1].split("</section>", 1)[0]
    assert sec.index("plotted") < sec.index("<img") < sec.index('class="tbl"')
    assert "Notes (1)" in sec and "<details" in sec


def test_placebo_section_renders_a_planted_table(page):
    sec = page.split('id="stage-placebo"', 1)[1].split("</section>", 1)[0]
    text = _text(sec)
    assert "steering" in text and "0.225 [0.123, 0.375]" in text and "above α" in text
    assert "probe" in text and "consistent with α" in text
    assert 'alt="Ship rate of each finding kind' in sec  # its figure, moved from the stage that wrote it
    other = page.split('id="stage-fake-plot"', 1)[1].split("</section>", 1)[0]
    assert "placebo" not in other


def test_yardsticks_show_reported_measured_and_one_word(run_dir, page):
    sec = _text(page.split('id="yardsticks"', 1)[1].split("</section>", 1)[0])
    acc = float(pd.read_csv(run_dir.tables / "layer_curve.csv").set_index("layer").loc[3, "accuracy"])
    word = "reproduced" if 0.9 <= acc <= 1.0 else "contradicted"
    assert f"{acc:.3g}" in sec and word in sec and "no interval" in sec
    assert "no table no_such_table in this run" in sec and "inconclusive" in sec
    assert "Rule: reproduced: the measured interval lies inside" in sec


def test_report_includes_tables_no_stage_claims(run_dir):
    pd.DataFrame({"x": [1]}).to_csv(run_dir.tables / "orphan.csv", index=False)
    try:
        write_report(run_dir.root)
        html = run_dir.report_path.read_text()
        assert 'id="other-outputs"' in html and "orphan" in html
    finally:
        (run_dir.tables / "orphan.csv").unlink()
        write_report(run_dir.root)


def test_cli_report_rewrites_and_prints_path(run_dir, capsys):
    run_dir.report_path.unlink()
    assert main(["report", str(run_dir.root)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir.report_path)
    assert run_dir.report_path.is_file()


def test_cli_report_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err


@pytest.mark.browser
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    sync_api = chromium_or_skip()
    with sync_api.sync_playwright() as pw:
        facts = check_page(pw, run_dir.report_path, n_findings=4)
    assert facts["details"] >= 6 and facts["images"] >= 4
    if os.environ.get("EMOSCOPE_SCREENSHOT"):
        shutil.copy(facts["screenshot"], os.environ["EMOSCOPE_SCREENSHOT"])

