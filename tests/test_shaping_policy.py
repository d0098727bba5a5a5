"""The gateway's ``shape`` action and the model server's shaping: flagged and watch-routed accounts
get shaped answers (reason code ``output_shaped``), allowlisted accounts never do."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from distillguard.errors import BadInputError
from distillguard.gateway.config import load_config
from distillguard.gateway.policy import Policy, PolicyConfig
from distillguard.gateway.server import ServerThread
from gateway_support import FaultyUpstream, running_gateway
from test_gateway_units import _assessment

ALICE = {"authorization": "Bearer sk-alice-0001"}
RESEARCH = {"authorization": "Bearer sk-research-3"}


def test_shape_applies_to_flagged_and_watch_accounts_never_to_the_allowlist():
    policy = Policy(PolicyConfig(), allowlist={"research-lab"})
    clear = policy.decide(_assessment())
    assert clear.action == "allow" and clear.shape is None and "output_shaped" not in clear.codes
    for kwargs in ({"flagged": True, "elicitation": False}, {"elevated": True}):
        d = policy.decide(_assessment(**kwargs))
        assert d.cohort == "watch" and d.shape == "antidistillation" and "output_shaped" in d.codes, kwargs
        assert d.to_dict()["shape"] == "antidistillation"
    for kwargs in ({"flagged": True, "elicitation": False}, {"elevated": True}, {"flagged": True}):
        d = policy.decide(_assessment(account="research-lab", **kwargs))
        assert d.shape is None and d.codes == ["authorised"] and d.action == "allow", kwargs
    # Flagged on privileged content: its reasoning summarised, not the antidistillation shift.
    d = policy.decide(_assessment(flagged=True))
    assert d.shape == "summary" and d.strip_reasoning and "output_shaped" in d.codes
    blocked = policy.decide(_assessment(cluster_flagged=True))   # a block has nothing to shape
    assert blocked.action == "block" and blocked.shape is None


def test_shape_rules_from_config(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[[policy.rules]]\nwhen = "elevated"\nactions = ["shape"]\nshape = "summary"\n')
    cfg = load_config(path, upstream="http://127.0.0.1:1")
    rule = cfg.policy.rules[0]
    assert rule.actions == ("shape",) and rule.shape == "summary"
    d = Policy(cfg.policy).decide(_assessment(elevated=True))
    assert d.action == "modify" and d.shape == "summary" and d.codes == ["elevated_risk", "output_shaped"]
    path.write_text('[[policy.rules]]\nwhen = "elevated"\nactions = ["shape"]\nshape = "scramble"\n')
    with pytest.raises(BadInputError) as err:
        load_config(path, upstream="http://127.0.0.1:1")
    assert err.value.field == "policy.rules[0].shape"


RULES = '[policy]\nallowlist = ["research-lab"]\n[[policy.rules]]\nname = "shape_all"\nwhen = "any"\n' \
        'actions = ["shape"]\nshape = "summary"\n'


def test_gateway_tells_the_model_server_per_request(tmp_path):
    app = FaultyUpstream()
    with ServerThread(app) as up, running_gateway(tmp_path, up.url, config_text=RULES) as (gw, url):
        chat = {"model": "ok", "messages": [{"role": "user", "content": "Hello there"}]}
        r = httpx.post(url + "/v1/chat/completions", json=chat, headers=ALICE, timeout=30)
        assert r.status_code == 200 and r.headers["x-distillguard-action"] == "modify"
        assert "output_shaped" in r.headers["x-distillguard-reason"]
        assert app.headers[-1]["x-distillguard-shape"] == "summary"
        r = httpx.post(url + "/v1/chat/completions", json=chat, headers=RESEARCH, timeout=30)
        assert r.status_code == 200 and "x-distillguard-shape" not in app.headers[-1]
    shadow = RULES.replace("[policy]\n", '[policy]\nmode = "shadow"\n')
    app2 = FaultyUpstream()
    (tmp_path / "s").mkdir()
    with ServerThread(app2) as up, running_gateway(tmp_path / "s", up.url, config_text=shadow) as (gw, url):
        r = httpx.post(url + "/v1/chat/completions", json=chat, headers=ALICE, timeout=30)
        assert r.status_code == 200 and "x-distillguard-shape" not in app2.headers[-1]   # shadow: logged only


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from distillguard.lab.tinylm import build_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_model(out, seconds=30, steps=10, vocab_size=512, max_chars=20_000)
    return out


@pytest.mark.slow
def test_model_server_shapes_on_the_header_and_keeps_the_watermark(model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from distillguard.serve.hf import HFModelServer
    from distillguard.shaping.serving import Shaper
    from distillguard.watermark.keys import KeySet
    from distillguard.watermark.kgw import KGWDetector

    keys = KeySet(secret=b"shaping-serve-secret-0123", cohorts=4)
    server = HFModelServer(model_dir, keys=keys)
    vocab = server.model.config.vocab_size
    torch.manual_seed(5)
    proxy = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=1, n_head=2))
    server.shaper = Shaper(proxy, server.tokenizer, strength=3.0,
                           heldout=["User: what is two plus two?\nAssistant: Four. Two and two make four."])
    answers: dict[str, list[str]] = {"plain": [], "shaped": []}

    def ask(up, i: int, shape: str | None, temperature: float) -> str:
        headers = {"x-distillguard-account": "alice", **({"x-distillguard-shape": shape} if shape else {})}
        r = httpx.post(up.url + "/v1/chat/completions", headers=headers, timeout=120,
                       json={"messages": [{"role": "user", "content": f"Tell me about rivers {i}"}],
                             "max_tokens": 80, "temperature": temperature})
        assert r.status_code == 200
        return r.json()["choices"][0]["message"]["content"]

    with ServerThread(server) as up:
        for kind, shape in (("plain", None), ("shaped", "antidistillation")):
            answers[kind].append(ask(up, 0, shape, 0.0))        # greedy: only the shaping differs
        for i in range(1, 4):
            answers["shaped"].append(ask(up, i, "antidistillation", 1.0))
        bad = httpx.post(up.url + "/v1/chat/completions", headers={"x-distillguard-shape": "scramble"},
                         json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
        assert bad.status_code == 200          # an unknown mode leaves the answer unshaped
    assert answers["plain"][0] != answers["shaped"][0]
    assert server.shaper.shaped == {"antidistillation": 4}
    cohort = keys.cohort_of("alice")
    detector = KGWDetector([keys.cohort_key(c) for c in range(keys.total)], vocab, keys.greenlist_ratio)
    ids = [np.asarray(server.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in answers["shaped"]]
    scores = [detector.score_pooled(ids, c) for c in range(keys.total)]
    assert min(range(keys.total), key=lambda c: scores[c].p_value) == cohort
    assert scores[cohort].p_value < 1e-4


def test_incident_report_counts_shaped_answers_per_account(tmp_path):
    import orjson

    from distillguard.report.incident import build_report, render_incident_html
    from distillguard.store import EventStore
    from distillguard.store.ingest import ingest_paths

    def event(i: int, account: str, decision: dict | None, status: int = 200) -> dict:
        ev = {"id": f"e{i}", "ts": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z", "account": account,
              "endpoint": "/v1/chat/completions", "status": status, "response": "ok",
              "request": {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}}
        if decision is not None:
            ev["decision"] = decision
        return ev

    shaped = {"action": "modify", "enforced": True, "codes": ["extraction_flagged", "output_shaped"],
              "shape": "antidistillation"}
    events = ([event(i, "farm", shaped) for i in range(3)] + [event(3, "farm", shaped, status=429)]
              + [event(4, "shadowed", {**shaped, "enforced": False})] + [event(5, "plain", {"action": "allow"})]
              + [event(6, "plain", None)] + [event(7, "summ", {**shaped, "shape": "summary"})])
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    db = tmp_path / "events.duckdb"
    with EventStore(db) as store:
        ingest_paths(store, [path])
    report = build_report(db, period="all")
    assert report.shaped == {"farm": 3, "summ": 1}
    assert report.to_dict()["shaped"] == {"farm": 3, "summ": 1}
    html = render_incident_html(report)
    assert "4 answer(s) to 2 account(s)" in html


def test_batched_left_padded_shaped_answers_keep_the_watermark(model_dir):
    """The distillation lab's path: one account's prompts of different lengths answered in one
    left-padded batch, antidistillation ahead of the account's KGW processor. The answers differ
    from unshaped ones and the text detector still names the account's cohort (others stay null)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from distillguard.serve.hf import HFModelServer
    from distillguard.shaping.serving import Shaper
    from distillguard.watermark.keys import KeySet
    from distillguard.watermark.kgw import KGWDetector

    keys = KeySet(secret=b"shaping-batch-secret-4567", cohorts=4)
    server = HFModelServer(model_dir, keys=keys)
    vocab = server.model.config.vocab_size
    torch.manual_seed(6)
    proxy = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    held = ["User: what is two plus two?\nAssistant: Four. Two and two make four. " * 8]    # longer than the proxy's context
    server.shaper = Shaper(proxy, server.tokenizer, strength=3.0, heldout=held)
    prompts = [f"User: {'tell me about rivers ' * (1 + i % 4)}{i}\nAssistant:" for i in range(8)]
    torch.manual_seed(0)
    plain = server.generate_batch(prompts, max_tokens=40, temperature=1.0, account="farm")
    torch.manual_seed(0)
    shaped = server.generate_batch(prompts, max_tokens=40, temperature=1.0, account="farm", shape="antidistillation")
    assert len(shaped) == len(prompts) and shaped != plain
    assert server.shaper.shaped == {"antidistillation": len(prompts)}
    assert server.shaper.shaper.proxy_calls >= 30
    detector = KGWDetector([keys.cohort_key(c) for c in range(keys.total)], vocab, keys.greenlist_ratio)
    ids = [np.asarray(server.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in shaped]
    scores = [detector.score_pooled(ids, c) for c in range(keys.total)]
    cohort = keys.cohort_of("farm")
    assert scores[cohort].p_value < 1e-4, scores[cohort]
    assert all(s.p_value > 1e-3 for c, s in enumerate(scores) if c != cohort)
