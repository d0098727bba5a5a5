"""`scan` end to end on generated lab traffic: who is flagged, the JSON shape, the summary, the
allowlist, the HTML report, DuckDB input, and the command line (`scan`, `baseline build`).

One lab is generated per module and scanned once; the command-line checks use a second,
smaller lab so each CLI start stays short.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from distillguard.detect.baseline import Baseline, load_default
from distillguard.detect.scan import PLOTTED_ACCOUNTS, ScanOptions, ScanResult, scan_paths
from distillguard.errors import UsageError
from distillguard.lab.campaigns import CampaignSpec
from distillguard.lab.traffic import TrafficConfig, generate
from distillguard.report.scan_html import render_scan_html, write_scan_html
from distillguard.store import EventStore
from distillguard.store.ingest import ingest_paths

SINGLE_ACCOUNT_STRATEGIES = ("sweep", "cot", "rubric", "agentic", "low_and_slow", "replay")
ORGANIC_STRATEGIES = ("organic", "power_user", "batch_app", "eval_run", "researcher")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(events path, labels list, work dir) of a small lab with every default campaign."""
    work = tmp_path_factory.mktemp("scan-lab")
    summary = generate(TrafficConfig(seed=17, accounts=60, days=3, batch_per_day=300), work / "lab")
    labels = [orjson.loads(line) for line in summary.labels_path.read_bytes().splitlines()]
    return summary.events_path, labels, work


@pytest.fixture(scope="module")
def baseline():
    return load_default()


@pytest.fixture(scope="module")
def result(lab, baseline) -> ScanResult:
    events, _, _ = lab
    return scan_paths([events], ScanOptions(baseline=baseline))


@pytest.fixture(scope="module")
def by_account(result):
    return {a.account: a for a in result.accounts}


@pytest.fixture(scope="module")
def labels_by_strategy(lab, by_account):
    """strategy -> labels of accounts that sent at least one event."""
    _, labels, _ = lab
    out = collections.defaultdict(list)
    for row in labels:
        if row["account"] in by_account:
            out[row["strategy"]].append(row)
    return out


@pytest.fixture(scope="module")
def db_path(lab):
    events, _, work = lab
    path = work / "events.duckdb"
    with EventStore(path) as store:
        ingest_paths(store, [events])
    return path


@pytest.fixture(scope="module")
def completion_tokens_by_account(lab):
    """Output tokens per account, read straight from the raw events (independent of the store)."""
    events, _, _ = lab
    totals: collections.Counter = collections.Counter()
    with gzip.open(events, "rb") as fh:
        for line in fh:
            ev = orjson.loads(line)
            totals[ev["account"]] += (ev.get("usage") or {}).get("completion_tokens") or 0
    return totals


# ---------------------------------------------------------------- who is flagged

def test_every_account_with_events_is_scored(result, lab, labels_by_strategy):
    _, labels, _ = lab
    assert len(result.accounts) == sum(len(v) for v in labels_by_strategy.values())
    assert len({a.account for a in result.accounts}) == len(result.accounts)


@pytest.mark.parametrize("strategy", SINGLE_ACCOUNT_STRATEGIES)
def test_single_account_campaigns_are_flagged(strategy, labels_by_strategy, by_account):
    rows = labels_by_strategy[strategy]
    assert rows, f"the lab has no {strategy} account"
    for row in rows:
        acct = by_account[row["account"]]
        assert acct.queries >= 200, (strategy, acct.queries)
        assert acct.flagged and acct.verdict.flagged, (strategy, acct.verdict.status, acct.verdict.family_p)
        assert acct.verdict.status == "flagged"


def test_hydra_accounts_are_flagged_through_a_flagged_cluster(result, labels_by_strategy, by_account):
    hydra = {row["account"] for row in labels_by_strategy["hydra"]}
    assert len(hydra) >= 10
    clusters = {by_account[a].cluster for a in hydra}
    assert len(clusters) == 1 and None not in clusters
    (name,) = clusters
    cluster = next(c for c in result.clusters if c.cluster == name)
    assert cluster.verdict.flagged
    assert set(cluster.accounts) == hydra               # and no organic account got pulled in
    assert cluster.queries == sum(by_account[a].queries for a in hydra)
    for a in hydra:
        acct = by_account[a]
        assert acct.cluster_flagged and acct.flagged
    # most members are too small to flag on their own: the cluster is what catches them
    assert sum(not by_account[a].verdict.flagged for a in hydra) > len(hydra) / 2


@pytest.mark.parametrize("strategy", ORGANIC_STRATEGIES)
def test_no_organic_or_hard_negative_account_is_flagged(strategy, labels_by_strategy, by_account):
    rows = labels_by_strategy[strategy]
    assert rows, f"the lab has no {strategy} account"
    flagged = [(r["account"], by_account[r["account"]].verdict.status) for r in rows
               if by_account[r["account"]].flagged]
    assert flagged == []
    for r in rows:
        assert by_account[r["account"]].cluster is None or not by_account[r["account"]].cluster_flagged


def test_hard_negatives_get_the_expected_status(labels_by_strategy, by_account):
    (eval_run,) = labels_by_strategy["eval_run"]
    assert by_account[eval_run["account"]].verdict.status == "repeated_runs"
    for row in labels_by_strategy["batch_app"]:
        assert by_account[row["account"]].verdict.status == "clear"


def test_every_flagged_account_explains_itself(result):
    flagged = [a for a in result.accounts if a.flagged]
    assert flagged
    for a in flagged:
        reasons = a.to_dict()["reasons"]
        assert reasons, a.account
        assert all(isinstance(r["detail"], str) and r["detail"] for r in reasons)
        if a.cluster_flagged and not a.verdict.flagged:
            assert reasons[0]["signal"] == "hydra_cluster" and a.cluster in reasons[0]["detail"]


# ---------------------------------------------------------------- output shape

def test_to_dict_matches_the_design_shape(result):
    data = result.to_dict()
    assert set(data) >= {"accounts", "clusters", "calibration", "summary"}
    json.dumps(data, allow_nan=False)                     # plain JSON: no NaN, no numpy types
    assert len(data["accounts"]) == len(result.accounts)
    for a in data["accounts"]:
        assert {"account", "score", "p_value", "flagged", "cluster", "queries", "reasons"} <= set(a)
        assert isinstance(a["account"], str) and isinstance(a["flagged"], bool)
        assert 0.0 <= a["score"] <= 1.0 and 0.0 <= a["p_value"] <= 1.0
        assert a["cluster"] is None or isinstance(a["cluster"], str)
        assert isinstance(a["queries"], int) and a["queries"] > 0
        for r in a["reasons"]:
            assert {"signal", "value", "detail"} <= set(r)
    for c in data["clusters"]:
        assert {"cluster", "accounts", "score", "flagged", "reasons"} <= set(c)
        assert c["reasons"][0]["signal"] == "linked_accounts"
        assert c["reasons"][0]["value"] == len(c["accounts"])
    cal = data["calibration"]
    assert cal["target_fpr"] == 0.001
    assert cal["baseline"] and cal["baseline_accounts"] > 0


def test_flagged_accounts_come_first_ranked_by_p_value(result):
    accounts = result.to_dict()["accounts"]
    flags = [a["flagged"] for a in accounts]
    assert flags == sorted(flags, reverse=True)
    flagged_ps = [a["p_value"] for a in accounts if a["flagged"]]
    assert flagged_ps == sorted(flagged_ps)
    only = result.to_dict(include_clear=False)["accounts"]
    assert only and all(a["flagged"] for a in only)
    assert len(only) == sum(flags)


def test_flagged_accounts_have_higher_scores_than_organic(result, labels_by_strategy, by_account):
    organic_scores = [by_account[r["account"]].verdict.score for r in labels_by_strategy["organic"]]
    campaign_scores = [by_account[r["account"]].verdict.score for s in SINGLE_ACCOUNT_STRATEGIES
                       for r in labels_by_strategy[s]]
    assert min(campaign_scores) > max(organic_scores)


def test_flagged_accounts_carry_evidence_plots(result):
    flagged = sorted((a for a in result.accounts if a.flagged), key=lambda a: a.verdict.p_value)
    plotted = [a for a in result.accounts if a.plots]
    assert len(plotted) == min(PLOTTED_ACCOUNTS, len(flagged))
    assert {a.account for a in plotted} == {a.account for a in flagged[:PLOTTED_ACCOUNTS]}
    for a in plotted:
        assert len(a.plots["hour_histogram"]) == 24
        assert sum(a.plots["hour_histogram"]) == a.queries
        growth = a.plots["coverage_growth"]
        assert growth[-1][0] == a.queries
        assert all(0 < y <= x for x, y in growth)
        assert [y for _, y in growth] == sorted(y for _, y in growth)


# ---------------------------------------------------------------- summary

def test_summary_counts_campaigns_and_tokens(result, lab, by_account, completion_tokens_by_account):
    _, labels, _ = lab
    s = result.summary()
    flagged = [a for a in result.accounts if a.flagged]
    campaign_of = {r["account"]: r["campaign"] for r in labels}
    assert s["accounts_scanned"] == len(result.accounts)
    assert s["accounts_flagged"] == len(flagged)
    assert s["clusters_flagged"] == 1
    # one campaign per flagged cluster plus one per flagged account outside it
    assert s["campaigns"] == len({campaign_of[a.account] for a in flagged})
    assert s["campaigns"] >= len(SINGLE_ACCOUNT_STRATEGIES) + 1
    assert s["queries_extracted"] == sum(a.queries for a in flagged)
    expected_tokens = sum(completion_tokens_by_account[a.account] for a in flagged)
    assert s["tokens_extracted"] == expected_tokens > 0
    assert s["estimated_cost_usd"] == pytest.approx(round(expected_tokens / 1e6 * 10.0, 2))
    assert sum(s["capability_areas"].values()) == s["queries_extracted"]
    assert set(s["attribution"]) == {c.cluster for c in result.clusters if c.verdict.flagged}


def test_price_per_million_scales_the_estimate(result):
    from dataclasses import replace

    dear = replace(result, price_per_million=20.0)
    assert dear.summary()["estimated_cost_usd"] == pytest.approx(2 * result.summary()["estimated_cost_usd"], abs=0.02)


# ---------------------------------------------------------------- DuckDB input and the allowlist

def test_scanning_a_duckdb_store_gives_the_same_flags(db_path, result, baseline):
    from_db = scan_paths([db_path], ScanOptions(baseline=baseline))
    assert {a.account: a.flagged for a in from_db.accounts} == {a.account: a.flagged for a in result.accounts}
    assert {a.account: a.verdict.status for a in from_db.accounts} == \
           {a.account: a.verdict.status for a in result.accounts}
    assert [sorted(c.accounts) for c in from_db.clusters] == [sorted(c.accounts) for c in result.clusters]
    with EventStore(db_path, read_only=True) as store:   # the scan did not write to the store
        assert store.count() == sum(a.queries for a in result.accounts)


def test_allowlisting_a_flagged_account_makes_it_authorised(db_path, labels_by_strategy, baseline, result):
    cot = labels_by_strategy["cot"][0]["account"]
    hydra = sorted(r["account"] for r in labels_by_strategy["hydra"])
    allowed = frozenset([cot] + hydra)
    scanned = scan_paths([db_path], ScanOptions(baseline=baseline, allowlist=allowed))
    accounts = {a.account: a for a in scanned.accounts}
    assert not accounts[cot].flagged
    assert accounts[cot].verdict.status == "authorised"
    assert accounts[cot].to_dict()["status"] == "authorised"
    for h in hydra:
        assert not accounts[h].flagged
    assert not any(c.verdict.flagged for c in scanned.clusters)
    # everyone else keeps their verdict
    before = {a.account: a.flagged for a in result.accounts}
    assert {k: v.flagged for k, v in accounts.items() if k not in allowed} == \
           {k: v for k, v in before.items() if k not in allowed}
    assert scanned.summary()["accounts_flagged"] == result.summary()["accounts_flagged"] - 1 - len(hydra)


@pytest.mark.parametrize("options", [ScanOptions(fpr=0.0), ScanOptions(fpr=1.0), ScanOptions(engine="nope"),
                                     ScanOptions(price_per_million=-1.0)])
def test_scan_options_are_checked(options):
    with pytest.raises(UsageError):
        options.check()


def test_scan_without_sources_is_a_usage_error():
    with pytest.raises(UsageError):
        scan_paths([], ScanOptions())


# ---------------------------------------------------------------- HTML report

def test_html_report_renders_flagged_accounts_and_svg(result, tmp_path):
    page = render_scan_html(result)
    assert page.startswith("<!doctype html>")
    assert "<svg" in page
    for a in result.accounts:
        if a.flagged:
            assert f"id='{a.account}'" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    s = result.summary()
    assert f"<b>{s['campaigns']}</b>campaigns" in page
    path = tmp_path / "deep" / "scan.html"
    write_scan_html(result, path)
    assert path.read_text(encoding="utf-8") == page


# ---------------------------------------------------------------- the command line

def cli(*args, cwd):
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "distillguard", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def assert_one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory):
    """A lab small enough for quick CLI runs: 20 casual users, hard negatives and one cot campaign."""
    work = tmp_path_factory.mktemp("cli-lab")
    summary = generate(TrafficConfig(seed=5, accounts=20, days=2, batch_per_day=100,
                                     campaigns=(CampaignSpec("cot", per_day=400),)), work / "lab")
    labels = [orjson.loads(line) for line in summary.labels_path.read_bytes().splitlines()]
    return work, summary.events_path, summary.labels_path, labels


@pytest.fixture(scope="module")
def cli_json(small_lab):
    work, events, _, _ = small_lab
    return cli("scan", events, "--format", "json", "--out", work / "out" / "scan.json",
               "--html", work / "out" / "scan.html", cwd=work)


def test_cli_scan_json(cli_json, small_lab):
    work, _, _, labels = small_lab
    proc = cli_json
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert {"accounts", "clusters", "calibration", "summary"} <= set(data)
    cot = next(r["account"] for r in labels if r["strategy"] == "cot")
    flagged = {a["account"] for a in data["accounts"] if a["flagged"]}
    assert flagged == {cot}
    assert data["calibration"]["target_fpr"] == 0.001
    # --out writes the same result, --html writes the report
    assert json.loads((work / "out" / "scan.json").read_text()) == data
    page = (work / "out" / "scan.html").read_text(encoding="utf-8")
    assert cot in page and "<svg" in page


def test_cli_scan_fail_on_findings_exits_1(small_lab):
    work, events, _, labels = small_lab
    proc = cli("scan", events, "--fail-on-findings", "--fpr", "0.001", cwd=work)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    cot = next(r["account"] for r in labels if r["strategy"] == "cot")
    assert cot in proc.stdout                          # the table names the flagged account


def test_cli_scan_fail_on_findings_exits_0_when_all_flagged_are_allowlisted(small_lab):
    work, events, _, labels = small_lab
    cot = next(r["account"] for r in labels if r["strategy"] == "cot")
    allow = work / "allow.txt"
    allow.write_text(f"# authorised red team\n{cot}\n", encoding="utf-8")
    proc = cli("scan", events, "--fail-on-findings", "--allowlist", allow, "--format", "json", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    (row,) = [a for a in data["accounts"] if a["account"] == cot]
    assert row["flagged"] is False and row["status"] == "authorised"


def test_cli_scan_missing_file(small_lab):
    work, _, _, _ = small_lab
    line = assert_one_line_error(cli("scan", work / "nope.jsonl", cwd=work))
    assert "nope.jsonl" in line and "no such file" in line


@pytest.mark.parametrize("args, needle", [
    (("--fpr", "2"), "--fpr"),
    (("--fpr", "0"), "--fpr"),
    (("--engine", "nope"), "--engine"),
    (("--format", "xml"), "--format"),
])
def test_cli_scan_bad_options(small_lab, args, needle):
    work, events, _, _ = small_lab
    line = assert_one_line_error(cli("scan", events, *args, cwd=work))
    assert needle in line


def test_cli_scan_missing_allowlist(small_lab):
    work, events, _, _ = small_lab
    line = assert_one_line_error(cli("scan", events, "--allowlist", work / "no-allow.txt", cwd=work))
    assert "allowlist" in line


@pytest.mark.parametrize("content, needle", [
    (b"{this is not json", "not JSON"),
    (b'{"version": 99}', "not a distillguard baseline"),
    (b'{"version": 1, "max_tokens_cap": 4096}', "incomplete"),
], ids=["not-json", "wrong-version", "incomplete"])
def test_cli_scan_malformed_baseline(small_lab, content, needle):
    work, events, _, _ = small_lab
    bad = work / "bad-baseline.json"
    bad.write_bytes(content)
    line = assert_one_line_error(cli("scan", events, "--baseline", bad, cwd=work))
    assert needle in line and "bad-baseline.json" in line


def test_cli_scan_baseline_missing_a_signal(small_lab):
    work, events, _, _ = small_lab
    data = load_default().to_dict()
    del data["rates"]["grading_prompts"]
    bad = work / "no-grading.json"
    bad.write_bytes(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY))
    line = assert_one_line_error(cli("scan", events, "--baseline", bad, cwd=work))
    assert "grading_prompts" in line


def test_regression_cli_scan_baseline_with_list_section_prints_traceback(small_lab):
    """BUG: a baseline whose "rates" is a list (not an object) makes Baseline.from_dict raise
    AttributeError, so `scan --baseline` dies with a traceback instead of one `error:` line."""
    work, events, _, _ = small_lab
    data = load_default().to_dict()
    data["rates"] = []
    bad = work / "rates-list.json"
    bad.write_bytes(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY))
    assert_one_line_error(cli("scan", events, "--baseline", bad, cwd=work))


def test_cli_scan_malformed_jsonl_line(small_lab, make_event):
    work, _, _, _ = small_lab
    bad = work / "bad.jsonl"
    bad.write_bytes(orjson.dumps(make_event(0)) + b"\n" + b'{"ts": 1791201600, "account": \n'
                    + orjson.dumps(make_event(1)) + b"\n")
    line = assert_one_line_error(cli("scan", bad, cwd=work))
    assert "bad.jsonl:2" in line


def test_cli_baseline_build_writes_a_loadable_baseline(small_lab):
    work, events, labels_path, labels = small_lab
    out = work / "built" / "baseline.json"
    proc = cli("baseline", "build", events, "--labels", labels_path, "--out", out, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    built = Baseline.load(out)
    with EventStore(":memory:") as store:
        ingest_paths(store, [events])
        present = {row[0] for row in store.run("SELECT DISTINCT account FROM events")}
    organic_present = {r["account"] for r in labels if r["kind"] == "organic"} & present
    assert built.accounts_ == len(organic_present)
    assert str(events) in built.source
    assert set(built.rate_fits_) | set(built.value_fits_) == set(load_default().rate_fits_) | set(
        load_default().value_fits_)
    assert all(math.isfinite(fit.tail_scale) for fit in built.value_fits_.values())
    # and the new baseline can drive a scan
    scanned = cli("scan", events, "--baseline", out, "--format", "json", cwd=work)
    assert scanned.returncode == 0, scanned.stderr[-3000:]
    assert json.loads(scanned.stdout)["calibration"]["baseline"] == built.source


def test_cli_baseline_build_missing_labels(small_lab):
    work, events, _, _ = small_lab
    line = assert_one_line_error(cli("baseline", "build", events, "--labels", work / "no-labels.jsonl",
                                     "--out", work / "x.json", cwd=work))
    assert "labels" in line
    assert not (work / "x.json").exists()


def test_templated_substream_in_a_reseller_is_flagged_on_its_own(tmp_path):
    """A reseller's organic customer traffic with 10 % sweep prompts hidden inside: the account as
    a whole is busy but unremarkable; its templated sub-stream, judged alone, is extraction."""
    from distillguard.lab.campaigns import CampaignSpec

    config = TrafficConfig(seed=41, accounts=0, days=4, batch_apps=0, eval_runs=0, researchers=0, power_users=0,
                           campaigns=(CampaignSpec("mixed", per_day=450, extraction_share=0.10, content="sweep",
                                                   family=3),))
    summary = generate(config, tmp_path / "lab")
    result = scan_paths([summary.events_path], ScanOptions())
    (reseller,) = result.accounts
    assert reseller.flagged
    lead = reseller.to_dict()["reasons"][0]
    assert lead["signal"] == "templated_substream"
    assert "sub-stream" in lead["detail"] and 0.05 < lead["value"] < 0.2
    assert reseller.verdict.p_value <= 0.001


@pytest.fixture(scope="module")
def reseller_lab(tmp_path_factory):
    """Two resellers relaying 12 organic customers each, 5 % of their traffic one customer's replay
    script (organic-looking prompts, single-turn): one names its customers in ``request.user``."""
    from distillguard.lab.campaigns import CampaignSpec

    work = tmp_path_factory.mktemp("resellers")
    config = TrafficConfig(seed=43, accounts=0, days=3, batch_apps=0, eval_runs=0, researchers=0, power_users=0,
                           campaigns=(CampaignSpec("mixed", name="named", per_day=2000, extraction_share=0.05,
                                                   content="replay", family=3),
                                      CampaignSpec("mixed", name="unnamed", per_day=2000, extraction_share=0.05,
                                                   content="replay", family=3, end_user_ids=False)))
    summary = generate(config, work / "lab")
    labels = {orjson.loads(line)["campaign"]: orjson.loads(line)["account"]
              for line in summary.labels_path.read_bytes().splitlines()}
    return summary, labels


def test_a_resellers_harvesting_end_user_is_flagged_on_its_own(reseller_lab):
    from distillguard.lab.campaigns import _customer_id

    summary, labels = reseller_lab
    result = scan_paths([summary.events_path], ScanOptions())
    by = {a.account: a for a in result.accounts}
    named = by[labels["named"]]
    script = _customer_id(labels["named"], 12)   # the reseller's 13th customer runs the script
    assert named.flagged
    assert [u.end_user for u in named.end_users] == [script]  # and none of its 12 organic customers
    out = named.to_dict()
    lead = out["reasons"][0]
    assert lead["signal"] == "end_user_substream" and script in lead["detail"]
    assert "one of 13 busy end users" in lead["detail"]
    # Bonferroni over the 13: the account's p-value is 13 times its end user's.
    assert out["p_value"] == pytest.approx(min(1.0, 13 * named.end_users[0].verdict.p_value), rel=1e-3)
    assert 0.02 < lead["value"] < 0.1                       # its share of the account's traffic
    assert out["end_users"][0]["end_user"] == script and out["end_users"][0]["flagged"]
    assert {r["signal"] for r in out["end_users"][0]["reasons"]} & {"single_turn", "new_prompts_per_day"}
    # Every customer of the naming reseller was scored (12 customers + the script).
    assert sum(k.startswith(labels["named"]) for k in result.end_user_features.index) == 13
    # The other reseller names nobody: there is nothing to separate, so no end-user rows.
    assert by[labels["unnamed"]].end_users == []
    assert not any(k.startswith(labels["unnamed"]) for k in result.end_user_features.index)


def test_allowlisted_reseller_end_users_are_authorised(reseller_lab):
    summary, labels = reseller_lab
    result = scan_paths([summary.events_path], ScanOptions(allowlist=frozenset({labels["named"]})))
    named = next(a for a in result.accounts if a.account == labels["named"])
    assert not named.flagged and named.verdict.status == "authorised"
    assert [u.verdict.status for u in named.end_users] == ["authorised"]


def test_a_store_from_before_the_end_user_column_reads_ids_from_requests(reseller_lab, tmp_path):
    """Opened read-only, an old store is not migrated: end-user ids come from the request JSON."""
    from distillguard.detect.engine import local_features
    from distillguard.store import EventStore
    from distillguard.store.ingest import ingest_paths

    summary, labels = reseller_lab
    path = tmp_path / "old.duckdb"
    with EventStore(path) as store:
        ingest_paths(store, [summary.events_path])
        store.run("ALTER TABLE events DROP COLUMN end_user")
        # a non-string id must be ignored here too, as on ingest
        store.run("UPDATE events SET request = json_merge_patch(request, '{\"user\": 7}') WHERE account = ?",
                  [labels["unnamed"]])
    with EventStore(path, read_only=True) as store:
        assert "end_user" not in store.columns()
        features, _ = local_features(store, max_tokens_cap=4096)
    users = [k for k in features.index if "\x1f" in k]
    assert len(users) == 13 and all(k.startswith(labels["named"]) for k in users)
    # Opened read-write, it gains the column, filled from the bodies (not NULL for the old rows).
    with EventStore(path) as store:
        assert "end_user" in store.columns()
        named, ignored = store.run("SELECT count(end_user) FILTER (WHERE account = ?), "
                                   "count(end_user) FILTER (WHERE account = ?) FROM events",
                                   [labels["named"], labels["unnamed"]])[0]
        assert named > 0 and ignored == 0
        migrated, _ = local_features(store, max_tokens_cap=4096)
    assert sorted(k for k in migrated.index if "\x1f" in k) == sorted(users)


def test_organic_resellers_are_not_flagged(tmp_path):
    """Hard negative: aggregators relaying organic customers' conversations (busy, broad, round the
    clock; half of them name their customers). Before timing stopped counting as automation on its
    own, about one in seven of these was flagged."""
    # (seed 7001: reseller 4 was one of those flagged by the old rule)
    config = TrafficConfig(seed=7001, accounts=0, days=7, batch_apps=0, eval_runs=0, researchers=0, power_users=0,
                           campaigns=(), resellers=5, reseller_per_day=1000)
    summary = generate(config, tmp_path / "lab")
    labels = [orjson.loads(line) for line in summary.labels_path.read_bytes().splitlines()]
    assert {row["strategy"] for row in labels} == {"reseller"} and len(labels) == 5
    result = scan_paths([summary.events_path], ScanOptions())
    assert len(result.accounts) == 5
    assert [a.account for a in result.accounts if a.flagged or a.end_users] == []
    assert len(result.end_user_features) == 3 * 12        # resellers 0, 2 and 4 name their 12 customers


def test_templated_substream_gathers_a_script_spread_over_several_templates(tmp_path):
    """A proxy naming no end users hides an 11 % reasoning-harvest script that speaks through several
    frames at once: the sub-stream judged on its own is every templated query, not the largest
    template group alone (which held 42 of ~225 script queries on lab seed 7305 and was cleared)."""
    import dataclasses

    from distillguard.detect.features import account_features
    from distillguard.events.jsonl import iter_jsonl
    from distillguard.lab.evasive import ProxyMixed
    from distillguard.lab.evasive_prompts import BUILDERS
    from distillguard.lab.traffic import build_context

    ctx = build_context(TrafficConfig(seed=47, accounts=0, days=5))
    proxy = ProxyMixed(ctx, 0)
    proxy.spec = dataclasses.replace(proxy.spec, per_day=400, extraction_share=0.11, end_user_ids=False)
    builder = BUILDERS["slow_reasoning"](ctx, proxy.rng)
    asked: set[str] = set()

    def script_prompt(rng):
        prompt = builder(rng)
        asked.add(prompt.messages[-1]["content"])
        return prompt

    proxy.prompts = script_prompt
    path = tmp_path / "proxy.jsonl"
    path.write_bytes(b"".join(orjson.dumps(ev) + b"\n" for ev in proxy.events()))
    events = list(iter_jsonl(path))
    script = {e.id for e in events if e.request["messages"][-1]["content"] in asked}
    assert 150 < len(script) < 0.2 * len(events)
    import pandas as pd

    frame = pd.DataFrame({"t": [e.ts for e in events], "prompt": [e.request["messages"][-1]["content"] for e in events],
                          "system": [e.request["messages"][0]["content"] for e in events],
                          "n_turns": [sum(m["role"] == "user" for m in e.request["messages"]) for e in events],
                          "n_messages": [len(e.request["messages"]) for e in events],
                          "max_tokens": [e.request.get("max_tokens") for e in events], "logprobs": False,
                          "has_tools": False, "temperature": 0.7,
                          "completion_tokens": [float((e.response.get("usage") or {}).get("completion_tokens") or 0)
                                                for e in events], "end_user": None})
    feats = account_features(frame)
    # the sub-stream is the script (give or take organic prompts that happen to share a template)
    assert 0.5 * len(script) <= feats["sub_queries"] <= 1.3 * len(script)
    result = scan_paths([path], ScanOptions())
    (account,) = result.accounts
    assert account.flagged
    assert account.to_dict()["reasons"][0]["signal"] == "templated_substream"
