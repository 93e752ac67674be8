"""What every report page must do in headless Chromium at 1280x800, with JavaScript on and off:
the first screen holds the run summary, the findings table's header and one whole figure; no
element is wider than the viewport; every <details> opens on a click; every image decodes; and
nothing is fetched from outside the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
W, H = 1280, 800

_WIDE = """() => [...document.querySelectorAll('body *')]
  .filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.right > innerWidth + 0.5; })
  .slice(0, 5).map(e => e.tagName + '.' + e.className + ' right=' + Math.round(e.getBoundingClientRect().right))"""


def chromium_or_skip() -> Any:
    """playwright's sync API, or skip saying what is missing (``make browser`` installs chromium)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (make browser, or apt-get install -y chromium)")
    return sync_api


def _box(page: Any, selector: str) -> dict[str, float]:
    loc = page.locator(selector).first
    assert loc.count() and loc.is_visible(), f"{selector} is not on the page"
    box = loc.bounding_box()
    assert box and box["width"] > 0 and box["height"] > 0, f"{selector} has no size"
    return box


def _check(page: Any, url: str, *, n_findings: int | None) -> dict[str, Any]:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url, wait_until="load")
    # the first screen: summary, the findings table's header, one whole figure
    summary = _box(page, "#summary .lede")
    assert summary["y"] < H and summary["y"] + summary["height"] <= H, summary
    head = _box(page, "#findings-table thead")
    assert head["y"] + head["height"] <= H, f"the findings table header ends at {head['y'] + head['height']:.0f} px"
    figs = page.locator("figure img")
    whole = [b for i in range(figs.count()) if (b := figs.nth(i).bounding_box()) and b["y"] + b["height"] <= H
             and b["height"] > 50]
    assert whole, "no whole figure on the first screen"
    if n_findings is not None:
        assert page.locator("#findings-table tbody tr").count() == n_findings
    assert page.evaluate("document.documentElement.scrollWidth") <= W
    assert page.evaluate(_WIDE) == []
    # every <details> opens (in document order, so a parent opens before what it holds)
    details = page.locator("details")
    n = details.count()
    for i in range(n):
        d = details.nth(i)
        summary_el = d.locator(":scope > summary")
        summary_el.scroll_into_view_if_needed()
        summary_el.click()
        assert d.evaluate("e => e.open"), f"details {i} did not open"
    assert page.evaluate(_WIDE) == [], "an opened <details> is wider than the viewport"
    assert page.evaluate("document.documentElement.scrollWidth") <= W
    # every image decodes
    imgs = page.locator("img")
    m = imgs.count()
    for i in range(m):
        img = imgs.nth(i)
        img.scroll_into_view_if_needed()
        assert img.evaluate("e => e.complete && e.naturalWidth > 0"), f"image {i} did not load"
    external = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert external == [], external
    return {"details": n, "images": m}


def check_page(pw: Any, path: Path, *, n_findings: int | None = None, shot: Path | None = None) -> dict[str, Any]:
    """Run every check on ``path`` with JavaScript on, then off; returns counts and a screenshot
    of the first screen (``shot``, default beside the page)."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        url = Path(path).resolve().as_uri()
        facts: dict[str, Any] = {}
        for js in (True, False):
            ctx = browser.new_context(viewport={"width": W, "height": H}, java_script_enabled=js)
            page = ctx.new_page()
            facts[f"js={js}"] = _check(page, url, n_findings=n_findings)
            if js:
                out = shot or Path(path).with_suffix(".first-screen.png")
                page.goto(url, wait_until="load")
                page.screenshot(path=str(out))
                facts["screenshot"] = out
            ctx.close()
        facts.update(facts["js=False"])
        return facts
    finally:
        browser.close()
