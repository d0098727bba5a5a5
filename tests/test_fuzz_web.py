"""Generated bad input for the dashboard: login and signed-in forms (valid and invalid CSRF
tokens, any field values and encodings), page paths and query parameters. Never a 5xx."""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillguard.gateway.server import ServerThread
from distillguard.web.app import Dashboard, WebConfig, build_app
from hostile import TEXT
from web_support import build_lab_store

PASSWORD = "correct horse battery"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz-web")
    db, _ = build_lab_store(work)
    dash = Dashboard(WebConfig(db=db, state=work / "web.duckdb", password=PASSWORD, max_failures=1000))
    with ServerThread(build_app(dash.config, dash)) as server, \
            httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as analyst:
        form = analyst.get("/login")
        token = re.search(r"name=csrf value='([^']+)'", form.text).group(1)
        assert analyst.post("/login", data={"csrf": token, "password": PASSWORD}).status_code == 303
        csrf = re.search(r"name=csrf value='([^']+)'", analyst.get("/accounts").text).group(1)
        yield server, analyst, csrf
    dash.close()


FIELD_NAMES = st.sampled_from(["csrf", "user", "password", "next", "target_kind", "target", "action", "note",
                               "decision", "ttl", "é", ""])
FIELDS = st.dictionaries(FIELD_NAMES, TEXT, max_size=6)
RAW_FORM = st.binary(max_size=200)


def _body(fields: dict[str, str], csrf: str | None) -> bytes:
    if csrf is not None:
        fields = {**fields, "csrf": csrf}
    return urlencode(fields).encode()


@given(FIELDS | RAW_FORM, st.booleans())
def test_login_form(web, fields, with_cookie):
    server, _, _ = web
    with httpx.Client(base_url=server.url, timeout=60) as client:
        if with_cookie:
            client.get("/login")
        content = fields if isinstance(fields, bytes) else _body(fields, None)
        r = client.post("/login", content=content, headers=FORM)
        assert r.status_code < 500, (r.status_code, r.text[:300])


@given(st.sampled_from(["/actions", "/refresh", "/logout", "/appeals/ap-1/decision", "/appeals/{x}/decision"]),
       FIELDS | RAW_FORM, st.sampled_from(["valid", "none", "given"]), TEXT)
def test_signed_in_forms(web, path, fields, csrf_mode, segment):
    server, analyst, token = web
    if path == "/logout":
        csrf_mode = "given" if csrf_mode == "valid" else csrf_mode     # stay signed in
    path = path.replace("{x}", quote(segment or "x", safe=""))
    if isinstance(fields, bytes):
        content = fields
    else:
        if fields.get("action") in ("block", "allow", "throttle") and csrf_mode == "valid":
            fields = {**fields, "target": "fuzz-" + fields.get("target", "")}   # never the lab's accounts
        content = _body(fields, token if csrf_mode == "valid" else None)
    r = analyst.post(path, content=content, headers=FORM)
    assert r.status_code < 500, (r.status_code, r.text[:300])


@given(st.sampled_from(["/", "/accounts", "/accounts/{x}", "/clusters", "/clusters/{x}", "/audit", "/appeals",
                        "/login", "/{x}"]), TEXT, st.dictionaries(TEXT, TEXT, max_size=3))
def test_pages(web, path, segment, params):
    server, analyst, _ = web
    r = analyst.get(path.replace("{x}", quote(segment or "x", safe="")), params=params)
    assert r.status_code < 500, (r.status_code, r.text[:300])
