"""The offline HTML report (fake stages, no model); one test renders it in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emoscope.audit import Control, Finding, Observation
from emoscope.cli.main import main
from emoscope.core.stages import unregister_stage
from emoscope.report import write_report
from emoscope.runs import StageResult, parse_spec, register_stage, run_spec

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _plot_stage(ctx):
    from matplotlib.figure import Figure

    rng = np.random.default_rng(ctx.seed)
    ctx.write_table("layer_curve", pd.DataFrame({"layer": range(80), "accuracy": rng.uniform(0.4, 1.0, 80)}))
    for name in ("layer_curve", "norms"):
        fig = Figure(figsize=(4, 3))
        fig.add_subplot().plot(rng.normal(size=20))
        ctx.save_figure(name, fig)
    ctx.add_finding(Finding(
        kind="probe", claim="<script>alert('x')</script> joy is decodable at layer 3",
        observation=Observation(metric="accuracy", value=0.98, interval=(0.96, 0.99), n=400),
        controls=[Control(name="length_baseline", value=0.97, passed=False),
                  Control(name="shuffled_labels", value=0.51, passed=True)]))
    ctx.add_finding(Finding(
        kind="similarity", claim="joy and sadness point apart",
        observation=Observation(metric="cosine", value=-0.6),
        controls=[Control(name="length_control", value=-0.55, passed=True),
                  Control(name="null_distribution", value=0.1, passed=True)]))
    ctx.add_finding(Finding(kind="probe", observation=Observation(metric="accuracy", value=0.7)))
    ctx.note("a note with <b>markup</b> & ampersands")
    return StageResult(summary="plotted", metrics={"peak_layer": 3})


def _table_stage(ctx):
    ctx.write_table("wide", pd.DataFrame({f"c{i}": [i * 1.5, float("nan")] for i in range(30)}))


@pytest.fixture
def run_dir(tmp_path):
    register_stage("fake-plot", replace=True)(_plot_stage)
    register_stage("fake-wide", replace=True)(_table_stage)
    spec = parse_spec({"name": "report-test", "description": "a <fake> run", "model": "fake", "seed": 1,
                       "stages": ["fake-plot", "fake-wide"]})
    rd = run_spec(spec, tmp_path / "run")
    yield rd
    unregister_stage("fake-plot")
    unregister_stage("fake-wide")


def test_report_is_self_contained(run_dir):
    html = run_dir.report_path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href|action|poster)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//|@import", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html


def test_report_has_findings_figures_tables_and_manifest(run_dir):
    html = run_dir.report_path.read_text()
    assert 'id="findings-table"' in html
    for text in ("length-only baseline 0.97 explains the probe accuracy 0.98", "observation only",
                 "badge v-fails", "badge v-ships", "accuracy = 0.98 [0.96, 0.99], n=400"):
        assert text in html
    figures = sorted(p.stem for p in run_dir.figures.glob("*.png"))
    assert figures == ["layer_curve", "norms"]
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == len(figures)
    for name in figures:
        assert f'alt="{name}"' in html
    assert "table layer_curve" in html and "showing 50 of 80 rows" in html
    assert "table wide" in html and "24 of 30 columns" in html
    assert '<p class="note">a note with' in html and "stages" in html and "2 done, 0 other" in html
    assert 'id="manifest"' in html and "git revision" in html and "torch threads" in html
    assert "peak_layer" in html


def test_report_escapes_all_text(run_dir):
    html = run_dir.report_path.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<b>markup</b>" not in html and "&lt;b&gt;markup&lt;/b&gt; &amp; ampersands" in html
    assert "a &lt;fake&gt; run" in html


def test_report_includes_tables_no_stage_claims(run_dir):
    pd.DataFrame({"x": [1]}).to_csv(run_dir.tables / "orphan.csv", index=False)
    write_report(run_dir.root)
    html = run_dir.report_path.read_text()
    assert 'id="other-outputs"' in html and "table orphan" in html


def test_cli_report_rewrites_and_prints_path(run_dir, capsys):
    run_dir.report_path.unlink()
    assert main(["report", str(run_dir.root)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir.report_path)
    assert run_dir.report_path.is_file()


@pytest.mark.browser
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(run_dir.report_path.resolve().as_uri(), wait_until="load")

            table = page.locator("#findings-table")
            assert table.is_visible()
            box = table.bounding_box()
            assert box and box["width"] > 0 and box["height"] > 0
            assert table.locator("tbody tr").count() == 3
            assert "explains the probe accuracy" in table.inner_text()

            figures = page.locator("figure img, figure svg")
            n = figures.count()
            assert n == 2
            for i in range(n):
                fig = figures.nth(i)
                fig.scroll_into_view_if_needed()
                box = fig.bounding_box()
                assert box and box["width"] > 0 and box["height"] > 0, f"figure {i} has no size"
                if fig.evaluate("e => e.tagName.toLowerCase()") == "img":
                    assert fig.evaluate("e => e.complete && e.naturalWidth") > 0, f"figure {i} did not decode"
            assert page.locator("text=a note with").first.is_visible()
            external = [u for u in requests if not u.startswith(("file:", "data:"))]
            assert external == [], external

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("EMOSCOPE_SCREENSHOT"):
                shutil.copy(shot, os.environ["EMOSCOPE_SCREENSHOT"])
        finally:
            browser.close()
