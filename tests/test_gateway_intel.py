"""Peers' intel in the gateway, over real HTTP on loopback: lab A signs indicators, lab B imports
them, and B's gateway (``[intel] home``) acts on accounts that match; revocation + reload undo it."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import httpx
import orjson
import pytest

from distillguard.errors import BadInputError
from distillguard.gateway.config import load_config
from distillguard.gateway.intel import LiveIntel
from distillguard.gateway.keys import KeyInfo
from distillguard.gateway.policy import Policy, PolicyConfig
from distillguard.gateway.server import ServerThread
from distillguard.intel.identifiers import campaign_templates, hash_values
from distillguard.intel.importer import import_bundle
from distillguard.intel.match import AccountIntel, IntelMatch
from distillguard.intel.publish import revoke, sign_and_publish
from distillguard.intel.store import IntelStore
from distillguard.intel.vocab import TEMPLATE_PATTERN_TYPE, TLP_IDS
from gateway_support import ADMIN, FaultyUpstream, running_gateway
from intel_support import make_homes
from test_gateway_units import _assessment

ADMIN_H = {"authorization": f"Bearer {ADMIN}"}
KEYS = {"sk-mallory-001": {"account": "mallory", "email": "Mallory.Jones+api@Example.org", "payment": "card_m_01"},
        "sk-walter-0002": {"account": "walter", "email": "walter@quickinbox.io"},
        "sk-trent-00003": {"account": "trent", "email": "trent@someplace.net"},
        "sk-alice-00004": {"account": "alice", "email": "alice@wonder.example"}}
TEMPLATE_PROMPTS = [f"Topic: science > subject {i}\nAspect: core concepts\nAudience: a beginner\nOutput format: "
                    f"a numbered list\nWrite the full answer, step by step, with one example per step."
                    for i in range(30)]
NOW = "2026-10-01T00:00:00.000Z"


def chat(content: str = "Hello, how are you today?") -> dict:
    return {"model": "ok", "messages": [{"role": "user", "content": content}], "max_tokens": 2000}


@pytest.fixture(scope="module")
def upstream():
    app = FaultyUpstream()
    with ServerThread(app) as server:
        server.app = app
        yield server


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    return make_homes(tmp_path_factory.mktemp("gw-intel"))


def _publish(home_a, home_b, tmp_path, indicators: list[tuple[str, str | None, int]], name: str) -> list[str]:
    """Lab A signs a campaign with these (kind, raw value or None for the template, confidence)
    indicators and publishes it; lab B imports the bundle. Returns the indicator ids."""
    key = home_a.community_key()
    marking = {"object_marking_refs": [TLP_IDS["amber"]], "created_by_ref": home_a.identity_id}
    campaign = {"type": "campaign", "spec_version": "2.1", "id": f"campaign--{uuid.uuid4()}", "created": NOW,
                "modified": NOW, "name": f"Distillation campaign {name}", **marking}
    objects, ids = [campaign], []
    patterns = {"email": "email-addr:x_hmac_sha256", "payment": "user-account:x_payment_hmac_sha256",
                "ip24": "ipv4-addr:x_prefix_hmac_sha256"}
    for kind, value, confidence in indicators:
        iid = f"indicator--{uuid.uuid4()}"
        if kind == "template":
            pattern = {"pattern": campaign_templates(TEMPLATE_PROMPTS, key)[0].to_pattern(),
                       "pattern_type": TEMPLATE_PATTERN_TYPE}
        else:
            digest = hash_values(key, kind, [value])[0]
            pattern = {"pattern": f"[{patterns[kind]} = '{digest}']", "pattern_type": "stix"}
        objects.append({"type": "indicator", "spec_version": "2.1", "id": iid, "created": NOW, "modified": NOW,
                        "valid_from": NOW, "confidence": confidence, **pattern, **marking})
        objects.append({"type": "relationship", "spec_version": "2.1", "id": f"relationship--{uuid.uuid4()}",
                        "created": NOW, "modified": NOW, "relationship_type": "indicates", "source_ref": iid,
                        "target_ref": campaign["id"], **marking})
        ids.append(iid)
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
    out = tmp_path / f"{name}.json"
    with IntelStore(home_a.db_path) as store:
        sign_and_publish(bundle, home_a, store, valid_days=30, out=out)
    with IntelStore(home_b.db_path) as store:
        import_bundle(out, home_b, store)
    return ids


def _revoke(home_a, home_b, tmp_path, ids: list[str]) -> None:
    out = tmp_path / f"revoke-{uuid.uuid4().hex[:6]}.json"
    with IntelStore(home_a.db_path) as store:
        revoke(home_a, store, ids, valid_days=30, out=out)
    with IntelStore(home_b.db_path) as store:
        import_bundle(out, home_b, store)


def _keys(tmp_path):
    path = tmp_path / "intel-keys.json"     # (running_gateway writes its own keys.json)
    path.write_bytes(orjson.dumps(KEYS))
    return path


def _send(url: str, key: str, content: str = "Hello, how are you today?", ip: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    if ip:
        headers["x-forwarded-for"] = ip
    return httpx.post(url + "/v1/chat/completions", json=chat(content), headers=headers)


def _account(url: str, account: str) -> dict:
    r = httpx.get(f"{url}/admin/accounts/{account}", headers=ADMIN_H)
    assert r.status_code == 200, r.text
    return r.json()


def test_matching_accounts_get_intel_reasons_and_the_graduated_action(tmp_path, upstream, homes):
    home_a, home_b = homes
    email_id, weak_ip_id, template_id = _publish(home_a, home_b, tmp_path, [
        ("email", "mallory.jones@example.org", 80), ("ip24", "198.51.100.7", 90), ("template", None, 90)], "m1")
    config = f'trust_forwarded_for = true\n[intel]\nhome = "{home_b.path}"\nreload_s = 0\n'
    with running_gateway(tmp_path, upstream.url, config_text=config, keys=_keys(tmp_path)) as (gw, url):
        assert gw.intel is not None and gw.intel.status()["indicators"] == 3
        # mallory's key carries the e-mail A saw (normalised alike: case, +tag): flagged on intel alone,
        # limited and watermarked (not blocked)
        r = _send(url, "sk-mallory-001")
        assert r.status_code == 200 and r.headers["x-distillguard-action"] == "modify"
        # (the intel_flagged rule also shapes the answer since issue 20: output_shaped follows)
        assert r.headers["x-distillguard-reason"] == "intel_flagged,output_shaped"
        assert "flagged on peers' intel" in r.headers["x-distillguard-explanation"]
        assert upstream.app.headers[-1]["x-distillguard-cohort"] == "watch" and upstream.app.seen[-1]["max_tokens"] == 512
        assert upstream.app.headers[-1]["x-distillguard-shape"] == "antidistillation"
        view = _account(url, "mallory")
        assert view["flagged"] and view["intel"]["flagged"] and view["score"] == pytest.approx(0.8)
        first = view["reasons"][0]
        assert first["signal"] == "intel_match" and first["detail"].startswith(
            f"e-mail hash matched indicator {email_id} from peer lab-a, confidence 80, TLP:AMBER")
        assert "(Distillation campaign m1)" in first["detail"]
        statuses = [_send(url, "sk-mallory-001").status_code for _ in range(12)]
        assert statuses.count(429) >= 2                       # throttled at 10 requests a minute
        r = _send(url, "sk-mallory-001")
        assert r.status_code == 429 and r.json()["error"]["code"] == "intel_flagged"
        # walter comes from A's /24: a weak match (0.4 x 0.9) only routes him to the watermark cohort
        r = _send(url, "sk-walter-0002", ip="198.51.100.201")
        assert r.headers["x-distillguard-action"] == "modify" and r.headers["x-distillguard-reason"] == "intel_match"
        assert upstream.app.headers[-1]["x-distillguard-cohort"] == "watch" and upstream.app.seen[-1]["max_tokens"] == 2000
        view = _account(url, "walter")
        assert not view["flagged"] and view["reasons"][0]["detail"].startswith(
            f"IP /24 hash matched indicator {weak_ip_id} from peer lab-a, confidence 90, TLP:AMBER")
        # trent sends A's templated prompts: an account's first prompts are checked, so the
        # template matches on his very first request (an actor moving from a peer brings it along)
        actions = [_send(url, "sk-trent-00003", p).headers["x-distillguard-action"] for p in TEMPLATE_PROMPTS[:5]]
        assert actions == ["modify"] * 5, actions
        view = _account(url, "trent")
        assert view["intel"]["matches"][0]["indicator"] == template_id
        assert view["reasons"][0]["detail"].startswith(f"prompt-template signature matched indicator {template_id}")
        # alice matches nothing
        r = _send(url, "sk-alice-00004", ip="203.0.113.9")
        assert r.headers["x-distillguard-action"] == "allow" and "intel" not in _account(url, "alice")
        listed = httpx.get(url + "/admin/intel", headers=ADMIN_H).json()
        assert {a["account"] for a in listed["accounts"]} == {"mallory", "walter", "trent"}
        assert httpx.get(url + "/admin/status", headers=ADMIN_H).json()["intel"]["accounts_flagged"] == 2
        assert httpx.post(url + "/admin/intel/reload", headers={"authorization": "Bearer sk-alice-00004"}
                          ).status_code == 403

        # A revokes the e-mail and template indicators; B imports the revocation and reloads
        _revoke(home_a, home_b, tmp_path, [email_id, template_id])
        assert _account(url, "mallory")["intel"]["flagged"]          # not before the reload
        r = httpx.post(url + "/admin/intel/reload", headers=ADMIN_H)
        assert r.status_code == 200 and r.json()["indicators"] == 1
        view = _account(url, "mallory")
        assert "intel" not in view and not view["flagged"] and view["score"] < 0.5
        assert not any(x["signal"] == "intel_match" for x in view["reasons"])
        r = _send(url, "sk-mallory-001")
        assert r.status_code == 200 and r.headers["x-distillguard-action"] == "allow"
        assert "intel" not in _account(url, "trent")
        assert _account(url, "walter")["intel"]["matches"][0]["indicator"] == weak_ip_id   # still live


def test_periodic_reload_picks_up_new_imports_and_keys_added_later(tmp_path, upstream, homes):
    home_a, home_b = homes
    config = f'[intel]\nhome = "{home_b.path}"\nreload_s = 0.2\n'
    with running_gateway(tmp_path, upstream.url, config_text=config, keys=_keys(tmp_path)) as (gw, url):
        assert _send(url, "sk-alice-00004").headers["x-distillguard-action"] == "allow"
        ids = _publish(home_a, home_b, tmp_path, [("email", "alice@wonder.example", 95),
                                                  ("payment", "card_x_77", 95)], "m2")
        deadline = time.monotonic() + 10
        while "intel" not in _account(url, "alice") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _account(url, "alice")["intel"]["matches"][0]["indicator"] == ids[0]
        assert _send(url, "sk-alice-00004").headers["x-distillguard-reason"] == "intel_flagged,output_shaped"
        # a key added through the admin API is hashed when added: its payment matches at once
        r = httpx.post(url + "/admin/keys", headers=ADMIN_H,
                       json={"key": "sk-oscar-000005", "account": "oscar", "payment": "card_x_77"})
        assert r.status_code == 201
        assert _send(url, "sk-oscar-000005").headers["x-distillguard-reason"] == "intel_flagged,output_shaped"
        assert "payment fingerprint hash matched" in _account(url, "oscar")["reasons"][0]["detail"]
        # the peer loses our trust: its indicators stop counting at the next reload
        home_b.peers["lab-a"].trust = 0.0
        home_b.save()
        deadline = time.monotonic() + 10
        while "intel" in _account(url, "alice") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "intel" not in _account(url, "alice") and gw.intel.status()["peers"] == []
    home_b.peers["lab-a"].trust = 1.0
    home_b.save()


def test_without_intel_nothing_changes(tmp_path, upstream, homes):
    _, home_b = homes
    with running_gateway(tmp_path, upstream.url, keys=_keys(tmp_path)) as (gw, url):
        assert gw.intel is None and gw.scorer.intel is None
        r = _send(url, "sk-mallory-001")
        assert r.headers["x-distillguard-action"] == "allow" and "x-distillguard-reason" not in r.headers
        view = _account(url, "mallory")
        assert "intel" not in view and not view["flagged"]
        assert httpx.get(url + "/admin/status", headers=ADMIN_H).json()["intel"] is None
        assert httpx.post(url + "/admin/intel/reload", headers=ADMIN_H).status_code == 404


def test_intel_never_lowers_or_softens_a_decision():
    """A peer's weak match on an account our scorer flags: our decision stands (a hydra cluster's
    block, a flagged account's limits), intel is only added."""
    weak = AccountIntel("acct", (IntelMatch("lab-a", "indicator--x", "ip24", 20, 1.0, "TLP:AMBER"),))
    policy = Policy(PolicyConfig())
    plain = policy.decide(_assessment(cluster_flagged=True))
    with_intel = policy.decide(replace(_assessment(cluster_flagged=True), intel=weak))
    assert plain.action == with_intel.action == "block" and with_intel.codes == ["cluster_flagged", "intel_match"]
    assert "also matches peers' intel" in with_intel.explanation
    plain = Policy(PolicyConfig()).decide(_assessment(flagged=True))
    with_intel = Policy(PolicyConfig()).decide(replace(_assessment(flagged=True), intel=weak))
    assert plain.action == with_intel.action == "modify" and plain.rule == with_intel.rule == "flagged_elicitation"
    assert with_intel.codes == ["extraction_flagged", "output_shaped", "intel_match"]
    assert "also matches peers' intel: IP /24 hash matched indicator indicator--x from peer lab-a" in with_intel.explanation
    # the allowlist still exempts, whatever a peer says
    strong = AccountIntel("acct", (IntelMatch("lab-a", "indicator--y", "email", 100, 1.0, "TLP:AMBER"),))
    a = replace(_assessment(), intel=strong)
    assert Policy(PolicyConfig(), allowlist={"acct"}).decide(a).codes == ["authorised"]
    assert Policy(PolicyConfig()).decide(a).codes[0] == "intel_flagged"


def test_an_intel_rule_can_block_when_configured(tmp_path, upstream, homes):
    home_a, home_b = homes
    _publish(home_a, home_b, tmp_path, [("email", "walter@quickinbox.io", 90)], "m3")
    config = (f'[intel]\nhome = "{home_b.path}"\n[[policy.rules]]\nname = "peer_block"\nwhen = "intel"\n'
              f'actions = ["block"]\n')
    with running_gateway(tmp_path, upstream.url, config_text=config, keys=_keys(tmp_path)) as (gw, url):
        r = _send(url, "sk-walter-0002")
        assert r.status_code == 403 and r.json()["error"]["code"] == "intel_flagged"
        assert "e-mail hash matched indicator" in r.json()["error"]["message"]


def test_intel_config_errors_name_the_key(tmp_path, homes):
    def load(text: str):
        path = tmp_path / "gw.toml"
        path.write_text(text)
        return load_config(path, upstream="http://127.0.0.1:9")

    assert load('[intel]\nhome = "somewhere"\n').intel.home.name == "somewhere"
    for text, where in (('[intel]\nreload = 5\n', "intel.reload"), ('[intel]\nreload_s = -1\n', "intel.reload_s"),
                        ('[intel]\nhome = 5\n', "intel.home"), ('intel = 5\n', "intel")):
        with pytest.raises(BadInputError) as err:
            load(text)
        assert err.value.field == where
    with pytest.raises(BadInputError, match="not an intel home"):
        LiveIntel(tmp_path / "nowhere")


def test_identity_hashes_are_computed_once_per_key(homes):
    _, home_b = homes
    live = LiveIntel(home_b.path, reload_s=0)
    live.add_keys([KeyInfo("mallory", "key-1", {"email": "MALLORY.jones@example.org", "payment": "card_m_01"}),
                   KeyInfo("mallory", "key-2", {"email": "other@example.org"})])
    key = home_b.community_key()
    assert hash_values(key, "email", ["mallory.jones@example.org"])[0] in live._hashes["mallory"]
    assert hash_values(key, "org_domain", ["x@example.org"])[0] in live._hashes["mallory"]
    assert len(live._hashes["mallory"]) == 4          # two e-mails, one domain, one card
