"""The dashboard in a real browser (headless Debian Chromium driven by Playwright): log in, open a
flagged account, block it (pushed to a real gateway on loopback), see it in the audit log; the
blocked user appeals at the gateway and the analyst lifts the block from the appeals page.

`.ci/run` installs Chromium and sets DISTILLGUARD_REQUIRE_BROWSER=1, so in CI a missing browser
fails this test instead of skipping it. Set DISTILLGUARD_SCREENSHOTS=docs to refresh the README's
screenshots (docs/web-*.png, docs/incident-report.png); otherwise they go to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import orjson
import pytest

from distillguard.gateway.server import ServerThread
from distillguard.report.incident import build_report, write_report
from distillguard.web.app import Dashboard, WebConfig, build_app
from distillguard.web.gateway import GatewayLink
from gateway_support import ADMIN, FaultyUpstream, running_gateway
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
    probe = Dashboard(WebConfig(db=db, state=tmp_path / "probe.web.duckdb", password=PASSWORD))
    flagged = next(a["account"] for a in probe.snapshot.data["accounts"] if a["flagged"] and not a["cluster"])
    cluster = next(c["cluster"] for c in probe.snapshot.data["clusters"] if c["flagged"])
    probe.close()
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw" / "user-keys.json").write_bytes(orjson.dumps({"sk-user-00001": flagged}))
    user = {"authorization": "Bearer sk-user-00001"}
    chat = {"model": "ok", "messages": [{"role": "user", "content": "hello"}]}
    with ServerThread(FaultyUpstream()) as upstream, running_gateway(
            tmp_path / "gw", upstream.url, keys=tmp_path / "gw" / "user-keys.json") as (gw, gw_url), \
            sync_playwright() as p:
        dash = Dashboard(WebConfig(db=db, state=tmp_path / "web.duckdb", password=PASSWORD,
                                   gateway=GatewayLink(gw_url, ADMIN)))
        with ServerThread(build_app(dash.config, dash)) as srv:
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
            assert page.locator("svg#coverage polyline.account").count() == 1
            page.fill("input[name=note]", "templated grading at volume")
            page.click("form.actions button[value=block]")
            assert page.url.startswith(srv.url + f"/accounts/{flagged}?done=")
            assert "block" in page.inner_text("h1")
            assert "the gateway applied it" in page.inner_text("#notice")
            refused = httpx.post(gw_url + "/v1/chat/completions", json=chat, headers=user)
            assert refused.status_code == 403 and refused.headers["x-distillguard-appeal"] == "/v1/appeals"

            # The blocked user appeals at the gateway; the analyst lifts it from the queue.
            filed = httpx.post(gw_url + "/v1/appeals", headers=user,
                               json={"message": "We grade student essays with a rubric for a university course; "
                                                "happy to share our contract."})
            assert filed.status_code == 201
            page.click("nav a:has-text('Appeals')")
            row = page.locator(f"#appeals tr[id='{filed.json()['id']}']")
            assert "open" in row.inner_text() and flagged in row.inner_text()
            page.screenshot(path=str(shots / "web-appeals.png"))
            row.locator("input[name=note]").fill("contract checked")
            row.locator("button[value=lift]").click()
            assert "the gateway applied it" in page.inner_text("#notice")
            assert "lifted" in page.locator(f"#appeals tr[id='{filed.json()['id']}']").inner_text()
            assert httpx.post(gw_url + "/v1/chat/completions", json=chat, headers=user).status_code == 200

            page.click("nav a:has-text('Audit log')")
            rows = [page.locator("table.audit tr").nth(i).inner_text() for i in (1, 2, 3)]
            assert flagged in rows[0] and "false positive" in rows[0] and "dana" in rows[0]
            assert "lift" in rows[1] and "contract checked" in rows[1] and "sent" in rows[1]
            assert flagged in rows[2] and "block" in rows[2] and "templated grading at volume" in rows[2]
            page.screenshot(path=str(shots / "web-audit.png"))

            page.goto(srv.url + f"/clusters/{cluster}")
            assert "attribution confidence" in page.inner_text("body")
            page.screenshot(path=str(shots / "web-cluster.png"), full_page=True)

        dash.close()
        report = build_report(db, period="all", false_positives=frozenset({flagged}))
        report.outcomes, report.appeals = {"false_positive": 1}, {"open": 0, "upheld": 0, "lifted": 1}
        report.appeals_source = "the gateway, filed in this period"
        write_report(report, tmp_path / "report.html")
        page.goto((tmp_path / "report.html").as_uri())
        assert "Distillation incident report" in page.inner_text("h1")
        assert "appeals lifted" in page.inner_text("#appeals")
        page.screenshot(path=str(shots / "incident-report.png"), full_page=True)
        browser.close()
    for name in ("web-accounts", "web-account", "web-appeals", "web-audit", "web-cluster", "incident-report"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
