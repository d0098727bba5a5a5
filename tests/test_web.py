"""`distillguard web` over real HTTP (uvicorn on loopback, httpx): login, sessions, rate limits,
CSRF, pages, actions in the audit log, the feedback to the scan, 404 pages, and the store left
unlocked for the gateway and ingest."""

from __future__ import annotations

import re

import httpx
import pytest

from distillguard.gateway.server import ServerThread
from distillguard.store import EventStore
from distillguard.web.app import Dashboard, WebConfig, build_app
from web_support import build_lab_store

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("web-lab")
    db, labels = build_lab_store(work)
    return db, labels, work


@pytest.fixture(scope="module")
def dash(lab):
    db, _, work = lab
    return Dashboard(WebConfig(db=db, state=work / "web.duckdb", password=PASSWORD, max_failures=3,
                               failure_window_s=60))


@pytest.fixture(scope="module")
def server(dash):
    with ServerThread(build_app(dash.config, dash)) as srv:
        yield srv


def _csrf(page: str) -> str:
    return re.search(r"name=csrf value='([^']+)'", page).group(1)


def login(base: str, password: str = PASSWORD, user: str = "alice", **client_kw) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=30, **client_kw)
    form = client.get("/login")
    reply = client.post("/login", data={"csrf": _csrf(form.text), "user": user, "password": password})
    return client, reply


@pytest.fixture(scope="module")
def analyst(server):
    client, reply = login(server.url)
    assert reply.status_code == 303
    yield client
    client.close()


@pytest.fixture(scope="module")
def flagged(dash):
    return [a for a in dash.snapshot.data["accounts"] if a["flagged"] and not a["cluster"]]


def test_pages_need_a_login(server):
    for path in ("/accounts", "/clusters", "/audit", "/accounts/x"):
        reply = httpx.get(server.url + path)
        assert reply.status_code == 303 and reply.headers["location"].startswith("/login?next=")
    assert httpx.post(server.url + "/actions", data={"target": "x"}).status_code == 403


def test_login_sets_a_strict_httponly_session_cookie(server):
    client, reply = login(server.url, user="bob")
    try:
        assert reply.headers["location"] == "/accounts"
        cookie = next(h for h in reply.headers.get_list("set-cookie") if h.startswith("dg_session="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        page = client.get("/accounts")
        assert page.status_code == 200 and "Log out bob" in page.text
        assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no scripts
        # a forged cookie (right id, wrong signature) is no session
        sid = client.cookies["dg_session"].rpartition(".")[0]
        forged = httpx.get(server.url + "/accounts", cookies={"dg_session": sid + ".00"})
        assert forged.status_code == 303
        # log out ends the session on the server, not only in the browser
        token = _csrf(page.text)
        old = client.cookies["dg_session"]
        assert client.post("/logout", data={"csrf": token}).status_code == 303
        assert httpx.get(server.url + "/accounts", cookies={"dg_session": old}).status_code == 303
    finally:
        client.close()


def test_wrong_password_is_refused(server):
    client, reply = login(server.url, password="wrong password", transport=httpx.HTTPTransport(
        local_address="127.0.0.4"))
    try:
        assert reply.status_code == 401 and "Wrong password" in reply.text
        assert "dg_session" not in client.cookies
        assert client.get("/accounts").status_code == 303
    finally:
        client.close()


def test_failed_logins_are_rate_limited_per_client(server):
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    for _ in range(3):
        client, reply = login(server.url, password="guess guess", transport=transport)
        client.close()
        assert reply.status_code == 401
    client, reply = login(server.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    client.close()
    assert reply.status_code == 429 and int(reply.headers["retry-after"]) > 0  # even the right password
    other, reply = login(server.url, user="carol")                              # another address is not locked out
    other.close()
    assert reply.status_code == 303


@pytest.mark.parametrize("asked,lands", [("/clusters", "/clusters"), ("//evil.example/x", "/accounts"),
                                         ("https://evil.example/", "/accounts")])
def test_login_returns_to_the_page_asked_for_and_nowhere_else(server, asked, lands):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        first = client.get(asked) if asked.startswith("/") and not asked.startswith("//") else None
        login_url = first.headers["location"] if first is not None else f"/login?next={asked}"
        form = client.get(login_url)
        action = re.search(r"<form method=post action='([^']+)'", form.text).group(1).replace("&amp;", "&")
        reply = client.post(action, data={"csrf": _csrf(form.text), "password": PASSWORD})
        assert reply.status_code == 303 and reply.headers["location"] == lands


def test_login_needs_its_csrf_token(server):
    reply = httpx.post(server.url + "/login", data={"user": "x", "password": PASSWORD})
    assert reply.status_code == 403 and "dg_session" not in reply.cookies


def test_ranked_accounts_and_clusters(analyst, dash, flagged):
    page = analyst.get("/accounts").text
    accounts = dash.snapshot.data["accounts"]
    order = [m for m in re.findall(r"<a href='/accounts/([^']+)'>", page)]
    assert order[: len(accounts[:20])] == [a["account"] for a in accounts[:20]]
    assert all(a["account"] in page for a in flagged)
    assert f"{dash.snapshot.data['summary']['tokens_extracted']:,}" in page
    clusters = analyst.get("/clusters").text
    flagged_clusters = [c for c in dash.snapshot.data["clusters"] if c["flagged"]]
    assert flagged_clusters and all(f"/clusters/{c['cluster']}" in clusters for c in flagged_clusters)
    one = analyst.get(f"/clusters/{flagged_clusters[0]['cluster']}")
    assert one.status_code == 200 and "attribution confidence" in one.text
    assert all(f"/accounts/{m}" in one.text for m in flagged_clusters[0]["accounts"])
    edges = dash.snapshot.links[flagged_clusters[0]["cluster"]]
    members = set(flagged_clusters[0]["accounts"])
    assert len(edges) >= len(members) - 1 and all(a in members and b in members and kinds for a, b, kinds in edges)
    assert one.text.count("<line ") == len(edges) and "id=link-graph" in one.text


def test_account_page_shows_evidence(analyst, dash, flagged):
    a = flagged[0]
    page = analyst.get(f"/accounts/{a['account']}").text
    assert "requests per hour" in page and "output tokens per hour" in page and "gaps between" in page
    assert page.count("<svg") >= 3
    assert a["reasons"][0]["detail"].split(" ")[0] in page
    unit, timeline = dash.snapshot.timeline(a["account"])
    assert sum(r for _, r, _ in timeline) == a["queries"] and sum(t for _, _, t in timeline) == a["completion_tokens"]
    steps = {(b2 - b1).total_seconds() for (b1, _, _), (b2, _, _) in zip(timeline, timeline[1:])}
    assert steps == {3600.0 if unit == "hour" else 86400.0}   # dense: quiet hours are zero bars
    assert sum(dash.snapshot.cadence(a["account"])) == a["queries"] - 1
    samples = dash.snapshot.samples(a["account"])
    assert samples and samples[0][1][:40].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")[:30] in page


def test_coverage_growth_against_the_organic_band(analyst, dash, lab):
    _, labels, _ = lab
    snap = dash.snapshot
    band = snap.coverage_band()
    assert band and band[0][0] == 1 and all(p10 <= p50 <= p90 for _, p10, p50, p90, _ in band)
    organic = [a for a in snap.data["accounts"] if not a["flagged"]]
    assert all(n_accounts == sum(1 for a in organic if a["queries"] >= n) for n, *_, n_accounts in band)
    hydra = [r["account"] for r in labels if r["strategy"] == "hydra" and snap.accounts[r["account"]]["flagged"]]
    at10 = dict((n, p90) for n, _, _, p90, _ in band)[10]
    above = [a for a in hydra if dict(snap.coverage(a)).get(10, 0) > at10]
    assert len(above) >= len(hydra) // 2, "sweeping accounts cover more areas than organic ones"
    name = hydra[0]
    curve = snap.coverage(name)
    assert curve[-1][0] == min(snap.accounts[name]["queries"], 200) and [n for n, _ in curve] == sorted(
        n for n, _ in curve) and all(a <= b for (_, a), (_, b) in zip(curve, curve[1:]))
    page = analyst.get(f"/accounts/{name}").text
    assert "id=coverage" in page and "<polygon" in page and "class=median" in page
    assert page.count("<circle") >= len(curve)


def test_appeals_page_without_a_gateway_says_how_to_connect(analyst):
    page = analyst.get("/appeals")
    assert page.status_code == 200 and "id=no-gateway" in page.text and "--gateway-token-file" in page.text
    reply = analyst.post("/appeals/ap-1/decision", data={"csrf": _csrf(page.text), "decision": "lift"})
    assert reply.status_code == 409 and "--gateway" in reply.text


def test_post_without_or_with_wrong_csrf_is_refused(analyst, dash, flagged):
    before = len(dash.actions.entries())
    target = {"target_kind": "account", "target": flagged[0]["account"], "action": "block"}
    assert analyst.post("/actions", data=target).status_code == 403
    assert analyst.post("/actions", data={**target, "csrf": "wrong"}).status_code == 403
    assert analyst.post("/refresh", data={}).status_code == 403
    assert len(dash.actions.entries()) == before


def test_action_lands_in_the_audit_log(analyst, dash, flagged):
    name = flagged[0]["account"]
    token = _csrf(analyst.get(f"/accounts/{name}").text)
    reply = analyst.post("/actions", data={"csrf": token, "target_kind": "account", "target": name,
                                           "action": "throttle", "note": "<b>too regular</b>"})
    entry = dash.actions.entries(target=name)[0]
    assert reply.status_code == 303 and reply.headers["location"] == f"/accounts/{name}?done={entry['id']}"
    assert (entry["analyst"], entry["action"], entry["note"], entry["pushed"]) == \
        ("alice", "throttle", "<b>too regular</b>", None)          # no gateway: nothing pushed
    notice = analyst.get(reply.headers["location"]).text
    assert f"Recorded throttle on account {name} as audit entry #{entry['id']}." in notice
    audit = analyst.get("/audit").text
    assert name in audit and "throttle" in audit and "&lt;b&gt;too regular&lt;/b&gt;" in audit
    assert "<b>too regular</b>" not in audit
    assert "throttle" in analyst.get(f"/accounts/{name}").text
    assert dash.actions.current()[name] == "throttle"


def test_bad_actions_are_refused(analyst, flagged):
    token = _csrf(analyst.get("/audit").text)
    bad = analyst.post("/actions", data={"csrf": token, "target_kind": "account", "target": flagged[0]["account"],
                                         "action": "delete"})
    assert bad.status_code == 400
    missing = analyst.post("/actions", data={"csrf": token, "target_kind": "account", "target": "nobody",
                                             "action": "block"})
    assert missing.status_code == 404


def test_unknown_ids_give_a_404_page(analyst):
    for path, what in (("/accounts/nobody", "No such account"), ("/clusters/c999", "No such cluster"),
                       ("/nowhere", "Not found")):
        reply = analyst.get(path)
        assert reply.status_code == 404 and what in reply.text and reply.headers["content-type"].startswith("text/html")
    reply = analyst.get("/accounts/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert reply.status_code == 404 and "<script>" not in reply.text and "&lt;script&gt;" in reply.text


def test_the_store_stays_unlocked(lab, server, analyst, dash):
    db, _, _ = lab
    assert dash.actions.meta("events_db") == str(db.resolve())   # for baseline build --include-false-positives
    with EventStore(db) as writer:  # read-write: would fail while another process/conn held it
        assert writer.count() > 0
    assert analyst.get("/accounts").status_code == 200


def test_false_positive_is_fed_back_on_rescan(analyst, dash, flagged):
    name = flagged[-1]["account"]
    token = _csrf(analyst.get(f"/accounts/{name}").text)
    analyst.post("/actions", data={"csrf": token, "target_kind": "account", "target": name,
                                   "action": "false_positive", "note": "customer's eval"})
    assert dash.snapshot.accounts[name]["flagged"]
    assert analyst.post("/refresh", data={"csrf": token}).status_code == 303
    assert "re-scan running" in analyst.get("/audit").text or not dash.refreshing
    dash.wait_refresh(60)
    assert not dash.refreshing and dash.refresh_error is None
    assert not dash.snapshot.accounts[name]["flagged"] and dash.snapshot.accounts[name]["status"] == "authorised"
    assert "false positive" in analyst.get(f"/accounts/{name}").text


@pytest.mark.parametrize("args,env,message", [
    ([], None, "needs a password"),
    (["--password-file", "missing.txt"], None, "no such password file"),
    ([], "short", "at least 8 characters"),
    (["--db", "nope.duckdb"], PASSWORD, "no such DuckDB file"),
    (["--gateway-token-file", "t.txt"], PASSWORD, "--gateway-token-file needs --gateway"),
    (["--gateway", "ftp://gw.example"], PASSWORD, "--gateway must be the gateway's base URL"),
    (["--gateway", "http://127.0.0.1:9", "--gateway-token-file", "missing.txt"], PASSWORD,
     "no such gateway token file"),
    (["--gateway", "http://127.0.0.1:9"], PASSWORD, "needs the gateway's admin token"),
])
def test_cli_bad_input_is_one_line(lab, tmp_path, monkeypatch, capsys, args, env, message):
    from distillguard.cli import main

    db, _, _ = lab
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISTILLGUARD_WEB_PASSWORD", raising=False)
    monkeypatch.delenv("DISTILLGUARD_ADMIN_TOKEN", raising=False)
    if env is not None:
        monkeypatch.setenv("DISTILLGUARD_WEB_PASSWORD", env)
    if "--db" not in args:
        args = ["--db", str(db), *args]
    with pytest.raises(SystemExit) as exit_info:
        main(["web", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_sessions_expire_and_lockouts_end():
    import time

    from distillguard.web.auth import LoginLimiter, PasswordCheck, SessionStore

    expired = SessionStore(ttl_s=-1)
    _, cookie = expired.create("x")
    assert expired.get(cookie) is None
    live = SessionStore()
    session, cookie = live.create("x")
    assert live.get(cookie) is session and live.get(cookie + "0") is None and live.get("garbage") is None
    limiter = LoginLimiter(max_failures=2, window_s=0.3)
    limiter.failed("a")
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") > 0 and limiter.retry_after("b") == 0
    time.sleep(0.35)
    assert limiter.retry_after("a") == 0
    check = PasswordCheck("long enough")
    assert check.verify("long enough") and not check.verify("long enough ") and not check.verify("")


def test_snapshot_is_the_scan(lab, tmp_path):
    from distillguard.detect.scan import ScanOptions, scan_store
    from distillguard.web.queries import Snapshot

    db, _, _ = lab
    with EventStore(db, read_only=True) as store:
        expected = scan_store(store, ScanOptions()).to_dict()
    snap = Snapshot.take(db, ScanOptions())
    assert snap.data["summary"] == expected["summary"]
    assert [(a["account"], a["flagged"]) for a in snap.data["accounts"]] == \
        [(a["account"], a["flagged"]) for a in expected["accounts"]]
    assert snap.events == sum(a["queries"] for a in expected["accounts"])


def test_account_page_shows_peer_intel_escaped(dash, flagged):
    from distillguard.web import views

    name = flagged[0]["account"]
    a = {**dash.snapshot.accounts[name], "intel": {"score": 0.93, "flagged": True, "matches": [
        {"peer": "acme<corp>", "indicator": "x", "kind": "ip24", "confidence": 80, "trust": 0.9, "tlp": "amber",
         "campaign": "Op <Sweep>", "campaign_id": None, "weight": 0.72}]}}
    page = views.account_page(a, unit="hour", timeline=[], cadence=[0] * 13, samples=[], plots={}, state=None,
                              history=[], csrf="t", user="u", banner="")
    assert "Peer intel" in page and "Score 0.93 — flagged by intel" in page
    assert "acme&lt;corp&gt;" in page and "Op &lt;Sweep&gt;" in page and "Op <Sweep>" not in page
    plain = views.account_page(dash.snapshot.accounts[name], unit="hour", timeline=[], cadence=[0] * 13, samples=[],
                               plots={}, state=None, history=[], csrf="t", user="u", banner="")
    assert "Peer intel" not in plain


def test_gateway_decisions_show_on_the_account_page(tmp_path):
    from conftest import _make_event
    from distillguard.detect.scan import ScanOptions
    from distillguard.store.ingest import ingest_paths
    from distillguard.web import views
    from distillguard.web.queries import Snapshot

    import orjson

    events = [_make_event(i, account="acct-gw", decision={"action": "throttle", "enforced": True, "codes": ["x"]})
              for i in range(5)]
    events += [_make_event(10 + i, account="acct-gw", decision={"action": "block", "enforced": False})
               for i in range(2)]
    events += [_make_event(20 + i, account="acct-gw") for i in range(3)] + [_make_event(30, account="other")]
    path = tmp_path / "gw.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    with EventStore(tmp_path / "gw.duckdb") as store:
        ingest_paths(store, [path])
    snap = Snapshot.take(tmp_path / "gw.duckdb", ScanOptions())
    rows = snap.decisions("acct-gw")
    assert [(a, enforced, n) for a, enforced, n, _ in rows] == [("throttle", True, 5), ("block", False, 2)]
    assert snap.decisions("other") == []
    unit, timeline = snap.timeline("acct-gw")
    page = views.account_page(snap.accounts["acct-gw"], unit=unit, timeline=timeline, cadence=snap.cadence("acct-gw"),
                              samples=snap.samples("acct-gw"), plots={}, state=None, history=[], csrf="t",
                              decisions=rows, user="u", banner="")
    assert "Gateway decisions" in page and "shadow" in page and "enforced" in page


def test_a_state_file_from_before_the_gateway_push_still_reads(tmp_path):
    """A read-only open (report, baseline build) of an audit log written before the pushed column."""
    import duckdb

    from distillguard.web.queries import ActionLog

    con = duckdb.connect(str(tmp_path / "old.web.duckdb"))
    con.execute("CREATE SEQUENCE audit_seq")     # the schema as the first version wrote it
    con.execute("CREATE TABLE audit_log (id BIGINT DEFAULT nextval('audit_seq') PRIMARY KEY, ts TIMESTAMP NOT NULL, "
                "analyst VARCHAR NOT NULL, client VARCHAR, target_kind VARCHAR NOT NULL, target VARCHAR NOT NULL, "
                "action VARCHAR NOT NULL, note VARCHAR)")
    con.execute("INSERT INTO audit_log (ts, analyst, client, target_kind, target, action, note) "
                "VALUES (now()::TIMESTAMP, 'a', 'c', 'account', 'x', 'false_positive', '')")
    con.close()
    old = ActionLog(tmp_path / "old.web.duckdb", read_only=True)
    assert old.entries()[0]["pushed"] is None and old.current() == {"x": "false_positive"}
    assert old.appeal_decisions() == {} and old.meta("events_db") is None
    old.close()
    migrated = ActionLog(tmp_path / "old.web.duckdb")      # read-write: gains the column and the meta table
    entry = migrated.record(analyst="a", client="c", target_kind="appeal", target="ap-1", action="lift", note="",
                            pushed="sent")
    assert migrated.get(entry)["pushed"] == "sent" and migrated.appeal_decisions() == {"lifted": 1}
    with pytest.raises(ValueError):
        migrated.record(analyst="a", client="c", target_kind="appeal", target="ap-1", action="block", note="")
    migrated.close()


def test_login_lock_out_is_keyed_on_the_peer_not_x_forwarded_for(server, dash):
    """Rotating X-Forwarded-For from 127.0.0.1 once reset the lock-out (uvicorn believed the
    header from loopback): unlimited password guesses."""
    try:
        for i in range(3):
            client, reply = login(server.url, password="guess guess", headers={"x-forwarded-for": f"198.51.100.{i}"})
            client.close()
            assert reply.status_code == 401
        client, reply = login(server.url, headers={"x-forwarded-for": "203.0.113.99"})
        client.close()
        assert reply.status_code == 429
    finally:
        dash.limiter.succeeded("127.0.0.1")     # the other tests sign in from 127.0.0.1 too


@pytest.mark.parametrize("token", [b"%E2%80%AE", "é".encode() * 32, b"%ED%B2%80", b"\xff\xfe"])
def test_a_non_ascii_csrf_token_is_refused_not_a_server_error(server, analyst, token):
    """hmac.compare_digest raised TypeError on non-ASCII text: HTTP 500 on login and signed-in forms."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/login")
        reply = client.post("/login", content=b"csrf=" + token + b"&password=x", headers=form)
        assert reply.status_code in (400, 403)
    reply = analyst.post("/refresh", content=b"csrf=" + token, headers=form)
    assert reply.status_code in (400, 403)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        reply = client.get("/accounts", headers={"cookie": b"dg_session=abc." + "é".encode()})
        assert reply.status_code in (303, 307, 401)
