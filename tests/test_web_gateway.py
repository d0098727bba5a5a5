"""The dashboard connected to a real gateway (both uvicorn on loopback, the gateway in front of a
fake upstream): actions pushed to the gateway's admin API with the outcome on each audit row,
cluster actions applied to every member, the appeals queue read and decided there, and a gateway
that is down or refuses the token never losing an audit row."""

from __future__ import annotations

import re

import httpx
import orjson
import pytest

from distillguard.gateway.server import ServerThread, free_port
from distillguard.web.app import Dashboard, WebConfig, build_app
from distillguard.web.gateway import GatewayLink, action_calls
from gateway_support import ADMIN, FaultyUpstream, running_gateway
from web_support import build_lab_store

PASSWORD = "correct horse battery"
USER_KEY = "sk-flagged-0001"


def _csrf(page: str) -> str:
    return re.search(r"name=csrf value='([^']+)'", page).group(1)


def _login(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
    form = client.get("/login")
    reply = client.post("/login", data={"csrf": _csrf(form.text), "user": "erin", "password": PASSWORD})
    assert reply.status_code == 303
    return client


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("web-gw-lab")
    db, _ = build_lab_store(work)
    return db, work


@pytest.fixture(scope="module")
def gateway(lab, tmp_path_factory):
    """A gateway whose key USER_KEY belongs to a flagged single account of the lab."""
    db, work = lab
    snapshot_accounts = Dashboard(WebConfig(db=db, state=work / "probe.web.duckdb", password=PASSWORD)).snapshot
    flagged = next(a["account"] for a in snapshot_accounts.data["accounts"] if a["flagged"] and not a["cluster"])
    gw_dir = tmp_path_factory.mktemp("gw")
    keys = gw_dir / "user-keys.json"
    keys.write_bytes(orjson.dumps({USER_KEY: flagged}))
    with ServerThread(FaultyUpstream()) as upstream, \
            running_gateway(gw_dir, upstream.url, keys=keys, db=gw_dir / "gw.duckdb") as (gw, url):
        yield gw, url, flagged


@pytest.fixture(scope="module")
def dash(lab, gateway):
    db, work = lab
    _, url, _ = gateway
    return Dashboard(WebConfig(db=db, state=work / "web.duckdb", password=PASSWORD,
                               gateway=GatewayLink(url, ADMIN)))


@pytest.fixture(scope="module")
def analyst(dash):
    with ServerThread(build_app(dash.config, dash)) as srv:
        client = _login(srv.url)
        yield client
        client.close()


def _act(client: httpx.Client, kind: str, target: str, action: str, note: str = "") -> httpx.Response:
    page = client.get(f"/{'accounts' if kind == 'account' else 'clusters'}/{target}").text
    return client.post("/actions", data={"csrf": _csrf(page), "target_kind": kind, "target": target,
                                         "action": action, "note": note})


def chat() -> dict:
    return {"model": "ok", "messages": [{"role": "user", "content": "hello there"}]}


def test_block_is_pushed_then_appealed_and_lifted(analyst, dash, gateway):
    gw, url, flagged = gateway
    user = {"authorization": f"Bearer {USER_KEY}"}
    reply = _act(analyst, "account", flagged, "block", "harvesting {reasoning}")
    assert reply.status_code == 303 and reply.headers["location"].startswith(f"/accounts/{flagged}?done=")
    entry = dash.actions.entries(target=flagged)[0]
    assert (entry["action"], entry["pushed"]) == ("block", "sent")
    assert gw.policy.manual[flagged].action == "block" and "harvesting {reasoning}" in gw.policy.manual[flagged].reason
    page = analyst.get(reply.headers["location"]).text
    assert "the gateway applied it" in page and f"#{entry['id']}" in page

    refused = httpx.post(url + "/v1/chat/completions", json=chat(), headers=user)
    assert refused.status_code == 403 and refused.headers["x-distillguard-appeal"] == "/v1/appeals"
    filed = httpx.post(url + "/v1/appeals", json={"message": "We are <b>a school</b>, not a lab."}, headers=user)
    assert filed.status_code == 201
    appeal_id = filed.json()["id"]

    queue = analyst.get("/appeals")
    assert queue.status_code == 200 and f"<tr id='{appeal_id}'>" in queue.text
    assert f"href='/accounts/{flagged}'" in queue.text and "flagged" in queue.text
    assert "&lt;b&gt;a school&lt;/b&gt;" in queue.text and "<b>a school</b>" not in queue.text
    assert "operator block" in queue.text       # why the gateway refused, from the appeal's standing
    token = _csrf(queue.text)
    assert analyst.post(f"/appeals/{appeal_id}/decision", data={"decision": "lift"}).status_code == 403
    assert analyst.post(f"/appeals/{appeal_id}/decision", data={"csrf": token, "decision": "maybe"}).status_code == 400
    missing = analyst.post("/appeals/ap-000000000000/decision", data={"csrf": token, "decision": "lift"})
    assert missing.status_code == 404 and "No such appeal" in missing.text
    assert gw.appeals.get(appeal_id).status == "open"

    lifted = analyst.post(f"/appeals/{appeal_id}/decision", data={"csrf": token, "decision": "lift",
                                                                  "note": "verified school"})
    assert lifted.status_code == 303 and lifted.headers["location"].startswith("/appeals?done=")
    assert gw.appeals.get(appeal_id).status == "lifted" and gw.appeals.get(appeal_id).analyst == "erin"
    assert gw.policy.manual[flagged].action == "allow"
    assert httpx.post(url + "/v1/chat/completions", json=chat(), headers=user).status_code == 200
    rows = dash.actions.entries(limit=2)
    assert [(r["target_kind"], r["action"], r["pushed"]) for r in rows] == \
        [("account", "false_positive", "sent"), ("appeal", "lift", "sent")]
    assert rows[0]["target"] == flagged and appeal_id in rows[0]["note"]
    assert dash.actions.current()[flagged] == "false_positive"
    after = analyst.get(lifted.headers["location"]).text
    assert "lifted" in after and "verified school" in after
    audit = analyst.get("/audit").text
    assert f"appeal {appeal_id}" in audit and "<th>gateway" in audit


def test_cluster_action_reaches_every_member(analyst, dash, gateway):
    gw, _, _ = gateway
    cluster = next(c for c in dash.snapshot.data["clusters"] if c["flagged"])
    reply = _act(analyst, "cluster", cluster["cluster"], "throttle", "hydra")
    assert reply.status_code == 303
    cluster_row = dash.actions.entries(target_kind="cluster", target=cluster["cluster"])[0]
    assert (cluster_row["action"], cluster_row["pushed"]) == ("throttle", "sent")
    for member in cluster["accounts"]:
        row = dash.actions.entries(target_kind="account", target=member)[0]
        assert (row["action"], row["pushed"]) == ("throttle", "sent") and row["note"] == f"cluster {cluster['cluster']}: hydra"
        manual = gw.policy.manual[member]
        assert manual.action == "throttle" and manual.limits.requests_per_minute == 10
    assert all(dash.actions.current()[m] == "throttle" for m in cluster["accounts"])
    assert "throttle" in analyst.get(f"/clusters/{cluster['cluster']}").text


def test_allowlist_and_clear_are_pushed(analyst, dash, gateway):
    gw, _, _ = gateway
    name = next(a["account"] for a in dash.snapshot.data["accounts"] if a["cluster"] is None and not a["flagged"])
    _act(analyst, "account", name, "block")
    assert gw.policy.manual[name].action == "block"
    _act(analyst, "account", name, "allowlist", "known partner")
    assert name in gw.allowlist and name not in gw.policy.manual
    _act(analyst, "account", name, "false_positive")
    assert gw.policy.manual[name].action == "allow"
    _act(analyst, "account", name, "clear")
    assert name not in gw.allowlist and name not in gw.policy.manual
    assert [r["pushed"] for r in dash.actions.entries(target=name)] == ["sent"] * 4


@pytest.mark.parametrize("problem", ["down", "wrong token"])
def test_gateway_failure_keeps_the_audit_row_and_says_so(lab, gateway, tmp_path, problem):
    db, _ = lab
    _, url, flagged = gateway
    link = GatewayLink(f"http://127.0.0.1:{free_port()}", ADMIN, timeout_s=2) if problem == "down" else \
        GatewayLink(url, "not-the-admin-token")
    dash = Dashboard(WebConfig(db=db, state=tmp_path / "web.duckdb", password=PASSWORD, gateway=link))
    with ServerThread(build_app(dash.config, dash)) as srv:
        client = _login(srv.url)
        reply = _act(client, "account", flagged, "block", "still record me")
        assert reply.status_code == 303
        entry = dash.actions.entries()[0]
        assert (entry["target"], entry["action"], entry["note"]) == (flagged, "block", "still record me")
        expected = "unreachable" if problem == "down" else "gateway answered 401"
        assert entry["pushed"].startswith("failed: ") and expected in entry["pushed"]
        page = client.get(reply.headers["location"]).text
        assert "id=notice class='notice error' role=alert" in page and "did not apply it" in page
        assert expected in page
        assert dash.actions.current()[flagged] == "block"
        queue = client.get("/appeals")
        assert queue.status_code == 502 and "could not be read" in queue.text
        cluster = next(c for c in dash.snapshot.data["clusters"] if c["flagged"])
        _act(client, "cluster", cluster["cluster"], "block")
        row = dash.actions.entries(target_kind="cluster")[0]
        n = len(cluster["accounts"])
        assert row["pushed"].startswith(f"failed for {n} of {n} members")
        client.close()
    dash.close()


def test_action_calls_cover_every_action():
    from distillguard.web.queries import ACTIONS

    for action in ACTIONS:
        calls = action_calls(action, "a/b", "why")
        assert calls and all(path.startswith("/admin/") and "a%2Fb" in path for _, path, _ in calls)
    with pytest.raises(ValueError):
        action_calls("delete", "a", "")
