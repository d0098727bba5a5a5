"""`distillguard report`: the incident report agrees with the scan, groups findings into campaigns
with attribution evidence, honours --period and --price-per-mtok, says so when nothing was found,
and refuses bad input with one line."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta

import pytest

from distillguard.detect.scan import ScanOptions, scan_store
from distillguard.errors import UsageError
from distillguard.report.incident import build_report, parse_period, render_incident_html, write_report
from distillguard.store import EventStore
from web_support import build_lab_store


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return build_lab_store(tmp_path_factory.mktemp("report-lab"))


@pytest.fixture(scope="module")
def db(lab):
    return lab[0]


@pytest.fixture(scope="module")
def scan_summary(db):
    with EventStore(db, read_only=True) as store:
        return scan_store(store, ScanOptions()).summary()


@pytest.fixture(scope="module")
def report(db):
    return build_report(db, period="all")


def test_numbers_match_the_scan_summary(report, scan_summary):
    assert report.summary == scan_summary
    assert scan_summary["campaigns"] >= 3
    assert len(report.campaigns) == scan_summary["campaigns"]
    assert sum(c.tokens for c in report.campaigns) == scan_summary["tokens_extracted"]
    assert sum(c.queries for c in report.campaigns) == scan_summary["queries_extracted"]
    assert sum(len(c.accounts) for c in report.campaigns) == scan_summary["accounts_flagged"]
    assert sum(c.value_usd for c in report.campaigns) == pytest.approx(scan_summary["estimated_cost_usd"], abs=0.05)


def test_campaigns_carry_attribution_and_evidence(report, lab):
    _, labels = lab
    hydra = {r["account"] for r in labels if r["strategy"] == "hydra"}
    clusters = [c for c in report.campaigns if c.kind == "cluster"]
    assert clusters, "the hydra should be one campaign"
    best = max(clusters, key=lambda c: len(set(c.accounts) & hydra))
    assert len(set(best.accounts) & hydra) >= 8 and set(best.accounts) <= hydra
    assert 0.5 < best.confidence <= 1.0
    assert any("linked by" in x for x in best.evidence)
    singles = [c for c in report.campaigns if c.kind == "account"]
    assert {r["strategy"] for r in labels if r["account"] in {c.campaign for c in singles}} >= {"cot", "rubric"}
    for c in report.campaigns:
        assert c.evidence and c.areas and sum(c.hour_histogram) == c.queries


def test_html_shows_numbers_plots_and_campaigns(report):
    page = render_incident_html(report)
    s = report.summary
    assert f"{s['tokens_extracted']:,}" in page and f"${s['estimated_cost_usd']:,.2f}" in page
    assert page.count("<svg") >= 4
    for c in report.campaigns:
        assert f"id='campaign-{c.campaign}'" in page
    assert "No incidents found" not in page
    assert "<script" not in page


def test_price_scales_the_value(db, report):
    doubled = build_report(db, period="all", options=ScanOptions(price_per_million=20.0))
    assert doubled.summary["tokens_extracted"] == report.summary["tokens_extracted"]
    assert doubled.summary["estimated_cost_usd"] == pytest.approx(2 * report.summary["estimated_cost_usd"], abs=0.02)


def test_period_keeps_only_the_last_window(db, report):
    last_day = build_report(db, period="1d")
    with EventStore(db, read_only=True) as store:
        expected = store.run("SELECT count(*) FROM events WHERE ts > (SELECT max(ts) FROM events) - INTERVAL 1 DAY")
    assert last_day.events == expected[0][0] < report.events
    assert last_day.window[0] > report.window[0]


def test_empty_store_says_no_incidents(tmp_path):
    EventStore(tmp_path / "empty.duckdb").close()
    empty = build_report(tmp_path / "empty.duckdb", period="30d")
    assert empty.campaigns == [] and empty.summary["campaigns"] == 0 and empty.events == 0
    out = write_report(empty, tmp_path / "r.html")
    assert "No incidents found" in out.read_text()


@pytest.mark.parametrize("text,hours", [("30d", 720), ("12h", 12), ("2w", 336), ("all", None), (None, None)])
def test_parse_period(text, hours):
    got = parse_period(text)
    assert got == (None if hours is None else timedelta(hours=hours))


@pytest.mark.parametrize("bad", ["30", "0d", "-3d", "3x", "d"])
def test_parse_period_refuses_bad_input(bad):
    with pytest.raises(UsageError, match="--period"):
        parse_period(bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "distillguard", *args], capture_output=True, text=True, timeout=120)


def test_cli_writes_report_and_json(db, tmp_path, report):
    proc = _cli("report", "--db", str(db), "--period", "all", "--out", str(tmp_path / "r.html"),
                "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    assert f"{report.summary['tokens_extracted']:,} output tokens" in re.sub(r"\s+", " ", proc.stdout)
    import json
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["summary"] == report.summary and len(data["campaigns"]) == len(report.campaigns)
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")


@pytest.mark.parametrize("args,message", [
    (["--out", "r.txt"], "must end in .html or .pdf"),
    (["--out", "r.html", "--gateway-token-file", "t.txt"], "--gateway-token-file needs --gateway"),
    (["--out", "r.html", "--gateway", "gw:8080"], "--gateway must be the gateway's base URL"),
    (["--out", "r.html", "--period", "3x"], "--period"),
    (["--out", "r.html", "--price-per-mtok", "-1"], "--price-per-mtok must be >= 0"),
])
def test_cli_bad_input_is_one_line(db, tmp_path, args, message, capsys):
    from distillguard.cli import main

    args = [a if not a.startswith("r.") else str(tmp_path / a) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--db", str(db), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_cli_missing_store(tmp_path):
    proc = _cli("report", "--db", str(tmp_path / "nope.duckdb"), "--out", str(tmp_path / "r.html"))
    assert proc.returncode == 2 and "no such DuckDB file" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_reads_the_dashboards_outcomes(db, tmp_path, report):
    from distillguard.web.queries import ActionLog

    singles = [c.campaign for c in report.campaigns if c.kind == "account"]
    log = ActionLog(tmp_path / "web.duckdb")
    log.record(analyst="a", client="c", target_kind="account", target=singles[0], action="false_positive", note="")
    log.record(analyst="a", client="c", target_kind="account", target=singles[1], action="block", note="")
    log.close()
    proc = _cli("report", "--db", str(db), "--period", "all", "--out", str(tmp_path / "r.html"),
                "--json", str(tmp_path / "r.json"), "--state", str(tmp_path / "web.duckdb"))
    assert proc.returncode == 0, proc.stderr
    import json
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["false_positives"] == [singles[0]] and data["outcomes"] == {"false_positive": 1, "block": 1}
    assert singles[0] not in [c["campaign"] for c in data["campaigns"]]
    assert data["summary"]["campaigns"] == report.summary["campaigns"] - 1
    page = (tmp_path / "r.html").read_text()
    assert "False positives and appeals" in page and "block 1" in page and "1 account(s) marked false positive" in page
    bad = _cli("report", "--db", str(db), "--out", str(tmp_path / "r.html"), "--state", str(tmp_path / "no.duckdb"))
    assert bad.returncode == 2 and "no such dashboard state file" in bad.stderr and "Traceback" not in bad.stderr


def test_pdf_without_chromium_is_one_clear_line(db, tmp_path, monkeypatch, capsys):
    from distillguard.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))          # no chromium anywhere on it
    monkeypatch.delenv("DISTILLGUARD_CHROMIUM", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--db", str(db), "--out", str(tmp_path / "r.pdf")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "PDF output needs Chromium" in err and "apt-get install chromium" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.pdf").exists()
    monkeypatch.setenv("DISTILLGUARD_CHROMIUM", str(tmp_path / "no-such-chrome"))
    with pytest.raises(SystemExit):
        main(["report", "--db", str(db), "--out", str(tmp_path / "r.pdf")])
    assert "DISTILLGUARD_CHROMIUM" in capsys.readouterr().err


def test_cli_writes_a_pdf_with_chromium(db, tmp_path, report):
    import os
    import shutil

    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        if os.environ.get("DISTILLGUARD_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is missing but DISTILLGUARD_REQUIRE_BROWSER=1")
        pytest.skip("chromium is not installed (.ci/run installs it)")
    proc = _cli("report", "--db", str(db), "--period", "all", "--out", str(tmp_path / "r.pdf"))
    assert proc.returncode == 0, proc.stderr
    pdf = (tmp_path / "r.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    pages = len(re.findall(rb"/Type\s*/Page(?![s\w])", pdf))
    assert pages >= 2, f"{pages} page(s): the lab report has campaigns, plots and tables"


def test_report_counts_appeals_from_the_gateway_and_the_audit_log(db, tmp_path, report):
    import json

    import httpx

    from distillguard.gateway.server import ServerThread
    from distillguard.web.queries import ActionLog
    from gateway_support import ADMIN, FaultyUpstream, running_gateway

    admin = {"authorization": f"Bearer {ADMIN}"}
    (tmp_path / "gw").mkdir()
    with ServerThread(FaultyUpstream()) as upstream, running_gateway(tmp_path / "gw", upstream.url) as (gw, url):
        for account, key in (("alice", "sk-alice-0001"), ("bob", "sk-bob-00002"), ("research-lab", "sk-research-3")):
            httpx.post(f"{url}/admin/accounts/{account}/action", json={"action": "block"}, headers=admin)
            filed = httpx.post(url + "/v1/appeals", json={"message": "please"},
                               headers={"authorization": f"Bearer {key}"})
            assert filed.status_code == 201
            if account != "alice":
                decision = "lift" if account == "bob" else "uphold"
                httpx.post(f"{url}/admin/appeals/{filed.json()['id']}/decision", json={"decision": decision},
                           headers=admin)
        (tmp_path / "token.txt").write_text(ADMIN + "\n")
        proc = _cli("report", "--db", str(db), "--period", "all", "--out", str(tmp_path / "r.html"),
                    "--json", str(tmp_path / "r.json"), "--gateway", url,
                    "--gateway-token-file", str(tmp_path / "token.txt"))
        assert proc.returncode == 0, proc.stderr
        data = json.loads((tmp_path / "r.json").read_text())
        assert data["appeals"] == {"open": 1, "upheld": 1, "lifted": 1} and url in data["appeals_source"]
        page = (tmp_path / "r.html").read_text()
        assert "id=appeals" in page and "appeals lifted" in page
        wrong = tmp_path / "wrong.txt"
        wrong.write_text("not the token\n")
        bad = _cli("report", "--db", str(db), "--out", str(tmp_path / "r.html"), "--gateway", url,
                   "--gateway-token-file", str(wrong))
        assert bad.returncode == 2 and "cannot read the appeals from the gateway" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    log = ActionLog(tmp_path / "web.duckdb")
    log.record(analyst="a", client="c", target_kind="appeal", target="ap-1", action="lift", note="", pushed="sent")
    log.record(analyst="a", client="c", target_kind="appeal", target="ap-2", action="uphold", note="",
               pushed="failed: gateway down")                   # never took effect: not counted
    log.record(analyst="a", client="c", target_kind="appeal", target="ap-3", action="uphold", note="", pushed="sent")
    log.close()
    proc = _cli("report", "--db", str(db), "--period", "all", "--out", str(tmp_path / "r2.html"),
                "--json", str(tmp_path / "r2.json"), "--state", str(tmp_path / "web.duckdb"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "r2.json").read_text())
    assert data["appeals"] == {"upheld": 1, "lifted": 1} and "dashboard" in data["appeals_source"]
