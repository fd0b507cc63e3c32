"""report.html as a person opens it: headless Chromium (Debian's `chromium`, driven through
Playwright's client) renders it without console errors or network requests and shows the tables,
the figures and the Reproduce panel. .ci/run installs chromium and checks it is there before the
tests, so CI always runs this; elsewhere (the README's `uv run pytest` on a machine without
chromium) the test says why it skips."""

import os
import shutil

import pytest
from conftest import REPO, cli

ENERGY = REPO / "tests" / "fixtures" / "energy-session"


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium executable (apt-get install chromium, as .ci/run does, or set CHROMIUM=/path)")
    return path


@pytest.fixture
def page(tmp_path):
    """A headless page that records console messages, page errors and every request."""
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency: uv sync")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.events = {"console": [], "errors": [], "requests": []}
        pg.on("console", lambda m: pg.events["console"].append(f"{m.type}: {m.text}"))
        pg.on("pageerror", lambda e: pg.events["errors"].append(str(e)))
        pg.on("request", lambda r: pg.events["requests"].append(r.url))
        yield pg
        browser.close()


@pytest.mark.slow
def test_report_html_renders_tables_figures_and_reproduce_panel(page, tmp_path):
    d = tmp_path / "session"
    shutil.copytree(ENERGY, d)
    assert cli("report", str(d)).returncode == 0
    url = (d / "report.html").as_uri()
    page.goto(url)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert page.events["errors"] == [] and page.events["console"] == []
    assert page.events["requests"] == [url]  # self-contained: nothing else fetched
    assert page.title() == "Session 20260102T000000Z-energy"
    assert page.locator("table.cells tbody tr").count() == 2
    assert page.locator("table.cells tbody tr").first.inner_text().startswith("gpu")
    assert page.locator("table.comparisons tbody tr").count() == 2
    assert "6.29x (5.48-6.56x) lower energy" in page.locator("table.comparisons").inner_text()
    figures = page.locator("figure svg")
    assert figures.count() == 7  # latency vs energy, runs: latency + 4 channels, equivalence
    for i in range(figures.count()):
        box = figures.nth(i).bounding_box()
        assert box["width"] > 200 and box["height"] > 150  # drawn at a visible size, not collapsed
    assert page.locator("#fig-latency_vs_energy svg").is_visible()
    assert "throttled run(s) 2" in page.locator("ul.warn").inner_text()
    reproduce = page.locator("dl.reproduce").inner_text()
    assert "Apple M2 Pro" in reproduce and "interleaved, seed 1234" in reproduce
    assert (tmp_path / "report.png").stat().st_size > 50_000


@pytest.mark.slow
def test_report_html_of_a_session_without_energy_says_what_is_left_out(page, tmp_path):
    d = tmp_path / "session"
    shutil.copytree(REPO / "tests" / "fixtures" / "known-session", d)
    assert cli("report", str(d)).returncode == 0
    page.goto((d / "report.html").as_uri())
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert page.events["errors"] == [] and page.events["console"] == []
    skipped = page.locator("p.skipped").all_inner_texts()
    assert skipped == ["Latency vs energy per image (estimated, 50 x step): left out: no cell has energy (no meter in this fixture)",
                       "Energy per step per run: left out: no energy (no meter in this fixture)"]
    assert page.locator("figure svg").count() == 2  # latency per run, equivalence
    assert page.locator("table.cells tbody tr").count() == 3
