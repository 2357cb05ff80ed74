"""The HTML report: files on disk, self-containedness, and rendering in a real headless Chromium."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

from bench.report import make_report
from bench.results import scan_runs

try:
    from test_leaderboard import FINAL, make_store, write_run
except ImportError:  # run with a different import mode / rootdir
    from tests.test_leaderboard import FINAL, make_store, write_run

CHROMIUM = os.environ.get("DPPO_BENCH_CHROMIUM", "/usr/bin/chromium")  # Debian's package (.ci/run installs it)
CHROMIUM_INSTALL = "apt-get update && apt-get install -y chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPS = 200


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report of 2 algorithms x 2 tasks x 3 seeds, plus one incomplete run."""
    root = tmp_path_factory.mktemp("report")
    store = make_store(root / "res")
    write_run(store, "hopper", "ppo", 5, 0.1, complete=False)
    records, warnings = scan_runs(store)
    path = make_report(records, root / "out", reps=REPS, warnings=warnings)
    return path


def test_report_files_and_self_contained(report):
    out = report.parent
    assert report.name == "report.html"
    figs = out / "figures"
    names = {"curve-hopper", "curve-lift", "aggregates", "profiles", "poi"}
    assert {p.stem for p in figs.glob("*.png")} == names
    assert {p.stem for p in figs.glob("*.pdf")} == names
    for p in figs.iterdir():
        assert p.stat().st_size > 1000
        assert p.read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    assert (out / "leaderboard.csv").exists() and (out / "leaderboard.md").exists()
    page = report.read_text()
    # nothing is fetched from elsewhere: every src is a data: URI, no link/script to a URL
    srcs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert 'id="leaderboard"' in page and "1 incomplete run" in page
    assert "<figcaption>IQM, Mean, Median, Optimality gap with 95% CIs</figcaption>" in page  # the registry's labels


def test_report_single_algorithm_has_note_instead_of_poi(tmp_path):
    final = {k: v for k, v in FINAL.items() if k[0] == "dppo"}
    records, _ = scan_runs(make_store(tmp_path / "res", final))
    page = make_report(records, tmp_path / "out", reps=REPS).read_text()
    assert 'id="poi-note"' in page and 'id="fig-poi"' not in page
    assert page.count('class="plot"') == 4  # 2 curves, aggregates, profiles


def chromium_or_loud_skip(path: str = CHROMIUM) -> str:
    """The browser, or a skip that is loud: a warning in pytest's summary (`-q` hides skip reasons) naming the
    test and the one command that enables it."""
    if not Path(path).exists():
        why = (f"test_report_renders_in_headless_chromium SKIPPED: no browser at {path}, so the HTML report "
               f"is not checked in a real browser; `{CHROMIUM_INSTALL}` (Debian, as root) enables it")
        warnings.warn(pytest.PytestWarning(why))
        pytest.skip(why)
    return path


@pytest.fixture
def chromium():
    return chromium_or_loud_skip()  # requested before `report`: a skip builds nothing


def test_report_renders_in_headless_chromium(chromium, report, tmp_path):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"requestfailed: {r.url}"))
            page.goto(report.resolve().as_uri(), wait_until="load")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")

            rows = page.eval_on_selector_all(
                "table#leaderboard tbody tr",
                "trs => trs.map(tr => Array.from(tr.cells).map(td => td.textContent.trim()))")
            assert [r[:4] for r in rows] == [
                ["all", "dppo", "2", "3"], ["all", "ppo", "2", "3"], ["gym", "dppo", "1", "3"],
                ["gym", "ppo", "1", "3"], ["robomimic", "dppo", "1", "3"], ["robomimic", "ppo", "1", "3"]]
            headers = page.eval_on_selector_all("table#leaderboard thead th", "ths => ths.map(t => t.textContent)")
            assert "IQM (95% CI)" in headers and "P(> dppo) (95% CI)" in headers

            imgs = page.eval_on_selector_all(
                "img.plot", "ims => ims.map(i => ({id: i.id, w: i.naturalWidth, h: i.naturalHeight}))")
            assert sorted(i["id"] for i in imgs) == sorted(
                ["fig-curve-hopper", "fig-curve-lift", "fig-aggregates", "fig-profiles", "fig-poi"])
            assert all(i["w"] > 0 and i["h"] > 0 for i in imgs), imgs
            assert page.evaluate("document.images.length") == len(imgs)

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert errors == []
