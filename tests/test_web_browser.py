"""The dashboard in a real browser (headless Debian Chromium driven by Playwright): log in, open a
flagged account, take an action, see it in the audit log.

`.ci/run` installs Chromium and sets DISTILLGUARD_REQUIRE_BROWSER=1, so in CI a missing browser
fails this test instead of skipping it. Set DISTILLGUARD_SCREENSHOTS=docs to refresh the README's
screenshots (docs/web-*.png, docs/incident-report.png); otherwise they go to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from distillguard.gateway.server import ServerThread
from distillguard.report.incident import build_report, write_report
from distillguard.web.app import Dashboard, WebConfig, build_app
from web_support import build_lab_store

PASSWORD = "correct horse battery"


def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium and sync_playwright:
        return chromium, sync_playwright
    missing = "chromium" if not chromium else "playwright (pip install -e '.[dev]')"
    if os.environ.get("DISTILLGUARD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{missing} is missing but DISTILLGUARD_REQUIRE_BROWSER=1")
    pytest.skip(f"{missing} is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("DISTILLGUARD_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_log_in_act_and_audit_in_chromium(tmp_path, shots):
    chromium, sync_playwright = _browser_or_skip()
    db, _ = build_lab_store(tmp_path)
    dash = Dashboard(WebConfig(db=db, state=tmp_path / "web.duckdb", password=PASSWORD))
    flagged = next(a["account"] for a in dash.snapshot.data["accounts"] if a["flagged"] and not a["cluster"])
    cluster = next(c["cluster"] for c in dash.snapshot.data["clusters"] if c["flagged"])
    write_report(build_report(db, period="all"), tmp_path / "report.html")
    with ServerThread(build_app(dash.config, dash)) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(srv.url + "/accounts")
        assert page.url.startswith(srv.url + "/login")          # redirected to log in
        page.fill("input[name=password]", "not the password")
        page.click("button:has-text('Log in')")
        assert "Wrong password" in page.inner_text("[role=alert]")
        page.fill("input[name=user]", "dana")
        page.fill("input[name=password]", PASSWORD)
        page.click("button:has-text('Log in')")
        assert page.url == srv.url + "/accounts"                 # back where we were going
        assert page.locator("#accounts tr").count() > 10
        page.screenshot(path=str(shots / "web-accounts.png"))

        page.click(f"#accounts a[href='/accounts/{flagged}']")
        assert page.inner_text("h1").startswith(f"Account {flagged}")
        assert page.locator("#reasons li").count() >= 1
        page.screenshot(path=str(shots / "web-account.png"), full_page=True)
        page.fill("input[name=note]", "templated grading at volume")
        page.click("form.actions button[value=block]")
        assert page.url == srv.url + f"/accounts/{flagged}"
        assert "block" in page.inner_text("h1")

        page.click("nav a:has-text('Audit log')")
        row = page.locator("table.audit tr").nth(1).inner_text()
        assert flagged in row and "block" in row and "dana" in row and "templated grading at volume" in row
        page.screenshot(path=str(shots / "web-audit.png"))

        page.goto(srv.url + f"/clusters/{cluster}")
        assert "attribution confidence" in page.inner_text("body")
        page.screenshot(path=str(shots / "web-cluster.png"), full_page=True)

        page.goto((tmp_path / "report.html").as_uri())
        assert "Distillation incident report" in page.inner_text("h1")
        page.screenshot(path=str(shots / "incident-report.png"), full_page=True)
        browser.close()
    for name in ("web-accounts", "web-account", "web-audit", "web-cluster", "incident-report"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
