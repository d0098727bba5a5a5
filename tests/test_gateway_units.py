"""Gateway parts without HTTP: online state vs the batch features, memory, policy, config, SSE relay."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.detect.baseline import load_default
from distillguard.detect.features import account_features
from distillguard.detect.minhash import band_keys, band_keys32_one, minhash_signatures, signature_one, template_shingles
from distillguard.detect.scoring import Reason, Verdict
from distillguard.errors import BadInputError
from distillguard.events.schema import prompt_view
from distillguard.gateway.config import load_config
from distillguard.gateway.online import AccountState, read_request
from distillguard.gateway.policy import Limits, ManualAction, Policy, PolicyConfig, TokenBucket
from distillguard.gateway.live_links import ip24
from distillguard.gateway.scorer import Assessment, LiveScorer
from distillguard.gateway.sse import SSERelay

BASE = 1791201600.0


def _requests(n: int, template: bool) -> list[dict]:
    out = []
    for i in range(n):
        if template:
            text = (f"Explain step by step how to solve: a train leaves city {i} at {i % 12} pm going {i * 3} km/h. "
                    f"Show your reasoning before the final answer.")
        else:
            text = ["hi, can you help me write an email to my landlord about the heating?",
                    "what's a good recipe for dinner tonight with chickpeas",
                    "I need ideas for my sister's birthday gift, she likes hiking"][i % 3] + f" ({i})"
        out.append({"messages": [{"role": "user", "content": text}], "max_tokens": 4000 if template else 300,
                    "temperature": 0.7})
    return out


def _batch_features(reqs: list[dict], times: np.ndarray) -> dict:
    views = [prompt_view(r) for r in reqs]
    frame = pd.DataFrame({"t": times, "prompt": [v.prompt_text for v in views], "system": [None] * len(views),
                          "n_turns": [v.n_turns for v in views], "n_messages": [v.n_messages for v in views],
                          "max_tokens": [v.max_tokens for v in views], "logprobs": [v.logprobs for v in views],
                          "has_tools": [v.has_tools for v in views], "temperature": [v.temperature for v in views],
                          "completion_tokens": [500.0] * len(views)})
    return account_features(frame, substreams=False)


@pytest.mark.parametrize("template", [True, False])
def test_online_features_match_the_batch_features(template):
    reqs = _requests(300, template)
    times = BASE + np.arange(300) * 37.0
    state = AccountState()
    for r, t in zip(reqs, times):
        repeat, _ = state.update(read_request(prompt_view(r), 4096), float(t))
        state.add_output(500, repeat)
    online = state.features()
    batch = _batch_features(reqs, times)
    for name in ("queries", "span_days", "cot_count", "near_cap_count", "single_turn_count", "impersonal_count"):
        assert online[name] == pytest.approx(batch[name], rel=1e-6), name
    # Distinct prompts come from a 1 KB Bloom filter: a rare false "seen before" is allowed.
    for name in ("distinct_prompts", "distinct_per_day", "output_tokens_per_day"):
        assert online[name] == pytest.approx(batch[name], rel=0.01), name
    assert abs(online["areas_seen"] - batch["areas_seen"]) <= 1
    assert online["topic_entropy"] == pytest.approx(batch["topic_entropy"], abs=0.05)
    assert online["hour_entropy"] == pytest.approx(batch["hour_entropy"], rel=1e-6)
    assert online["gap_cv"] == pytest.approx(batch["gap_cv"], abs=1e-6)
    # Templates: online looks back over the last 24 distinct prompts; the batch over everything.
    assert online["templated_count"] <= batch["templated_count"]
    assert online["templated_count"] >= (0.95 * batch["templated_count"] if template else 0)


def test_repeats_and_distinct_estimate():
    state = AccountState()
    req = {"messages": [{"role": "user", "content": "same question again"}], "temperature": 0}
    facts = read_request(prompt_view(req), 4096)
    assert state.update(facts, BASE)[0] is False
    assert all(state.update(facts, BASE + i)[0] for i in range(1, 10))
    assert state.features()["repeat_share"] == pytest.approx(0.9)
    assert state.features()["distinct_prompts"] == 1
    many = AccountState()
    for i in range(3000):
        f = read_request(prompt_view({"messages": [{"role": "user", "content": f"distinct prompt {i} x{i * i}"}]}), 4096)
        many.update(f, BASE + i)
    assert many.features()["distinct_prompts"] == pytest.approx(3000, rel=0.05)


def test_memory_per_account_is_under_8_kb():
    import tracemalloc

    baseline = load_default()
    scorer = LiveScorer(baseline, 1e-3)
    n_accounts = 1000
    facts = [[read_request(prompt_view({"messages": [{"role": "user", "content": f"Explain step by step: task {a}-{j} "
                                                                                f"with {a * j} items"}]}), 4096)
              for j in range(5)] for a in range(n_accounts)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for a in range(n_accounts):
        for j in range(5):
            scorer.observe(f"account-{a:05d}", facts[a][j], BASE + a + j, ip=f"10.{a // 250}.{a % 250}.1",
                           user_agent="sdk/1.0", identity={"email": f"user{a}@example.com", "payment": f"card-{a}"})
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_account = used / n_accounts
    assert per_account <= 8192, per_account
    assert AccountState().memory_bytes() <= 8192


def test_signature_one_equals_the_batch_minhash():
    for text in ("Explain step by step: 12 + 7", "a b", "", "x" * 5000 + " the end of a long prompt"):
        shingles = template_shingles(text)
        assert (signature_one(shingles) == minhash_signatures([shingles])[0]).all()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=800))
def test_one_prompts_band_keys_equal_the_batch_band_keys(text):
    """The gateway's per-request band keys are the scan's, folded to 32 bits (0: no template)."""
    shingles = template_shingles(text)
    keys = band_keys(minhash_signatures([shingles]))[0]
    folded = (keys ^ (keys >> np.uint64(32))).astype(np.uint32)
    folded[keys == 0] = 0
    assert (band_keys32_one(shingles) == folded).all()
    assert (band_keys32_one(shingles) == 0).all() == (not shingles)


def test_a_requests_cached_template_keys_are_its_band_keys(monkeypatch):
    """read_request caches band keys by shingle set: a prompt read from the cache, after the cache
    was emptied at its bound, and fresh all carry ``band_keys32_one`` of its own shingles."""
    from distillguard.gateway import online

    monkeypatch.setattr(online, "KEYS_CACHED", 3)
    online._KEYS.clear()
    texts = [f"Translate to French: item {i}. Keep the tone." for i in range(3)] + \
        ["Write a haiku about the sea, please, in a calm voice", "Write a haiku about the sea", "hi", ""] + \
        [f"Summarise this report on {w} in three bullet points for a manager" for w in ("rice", "steel", "rice")]
    for _ in range(2):
        for text in texts:
            expected = tuple(band_keys32_one(template_shingles(text)).tolist())
            assert read_request(prompt_view({"messages": [{"role": "user", "content": text}]}), 4096).keys == expected
            assert len(online._KEYS) <= 3


def test_fast_p_values_equal_the_frame_p_values():
    baseline = load_default()
    state = AccountState()
    for i, r in enumerate(_requests(150, True)):
        state.update(read_request(prompt_view(r), 4096), BASE + i * 20)
    row = state.features()
    fast = baseline.p_values(row)
    frame = baseline.p_value_frame(pd.DataFrame([row])).iloc[0].to_dict()
    assert fast.keys() == frame.keys()
    for k in fast:
        assert fast[k] == pytest.approx(frame[k], rel=1e-9, abs=1e-300), k


def test_live_scorer_flags_a_harvester_and_links_a_hydra():
    scorer = LiveScorer(load_default(), 1e-3)
    reqs = _requests(200, True)
    flagged_at = None
    for i, r in enumerate(reqs):
        a = scorer.observe("harvester", read_request(prompt_view(r), 4096), BASE + i * 30)
        scorer.add_output("harvester", 900, a.repeat)
        if a.verdict.flagged and flagged_at is None:
            flagged_at = i + 1
    assert flagged_at is not None and flagged_at <= 100
    # Three accounts on one payment method and one /24, each mild: one live cluster.
    for k in range(3):
        a = scorer.observe(f"h{k}", read_request(prompt_view(reqs[k]), 4096), BASE + k, ip=f"198.51.100.{k + 1}",
                           identity={"payment": "card-4242", "email": f"dev{1000 + k}@mailbox.io"})
    assert a.cluster is not None and a.cluster_size == 3
    assert [c["accounts"] for c in scorer.clusters()] == [["h0", "h1", "h2"]]


def test_ip24():
    assert ip24("203.0.113.77") == "203.0.113.0/24"
    assert ip24("2001:db8::1") == "2001:db8::/48"
    assert ip24("not an ip") is None and ip24(None) is None


def _assessment(flagged=False, elevated=False, cluster_flagged=False, account="acct", elicitation=True,
                queries=100) -> Assessment:
    family = {"harvest": 1e-6, "coverage": 1e-3, "elicitation": 1e-5 if elicitation else 0.5, "automation": 1e-3}
    v = Verdict(p_value=1e-9 if flagged else 0.5, flagged=flagged, status="flagged" if flagged else "clear",
                family_p=family, reasons=())
    cv = Verdict(p_value=1e-8, flagged=True, status="flagged", family_p=family, reasons=()) if cluster_flagged else None
    return Assessment(account=account, queries=queries, verdict=v, elevated=elevated or flagged,
                      cluster="c1" if cluster_flagged else None, cluster_size=4 if cluster_flagged else 0,
                      cluster_verdict=cv, cluster_confidence=0.9)


def test_policy_actions_and_codes():
    policy = Policy(PolicyConfig())
    assert policy.decide(_assessment()).action == "allow"
    # Flagged on privileged content: not blocked on its first flagged request; reasoning stripped,
    # the summary shape asked for, answers capped, limited and watermarked.
    d = policy.decide(_assessment(flagged=True), now=0.0)
    assert d.action == "modify" and d.rule == "flagged_elicitation" and d.codes == ["extraction_flagged", "output_shaped"]
    assert d.strip_reasoning and d.strip_logprobs and d.shape == "summary" and d.max_tokens == 512
    assert d.cohort == "watch" and "on privileged content" in d.explanation and "rather than blocked" in d.explanation
    assert "persists past a day and 1,000 more queries" in d.explanation
    # Flagged without privileged content (value or coverage from automated prompts): the same
    # limits with the antidistillation shape.
    d = policy.decide(_assessment(flagged=True, elicitation=False, account="cov"), now=0.0)
    assert d.action == "modify" and d.rule == "flagged_coverage" and d.cohort == "watch" and d.strip_logprobs
    assert d.codes == ["extraction_flagged", "output_shaped"] and "rather than blocked" in d.explanation
    assert d.shape == "antidistillation"
    d = policy.decide(_assessment(cluster_flagged=True))
    assert d.action == "block" and d.codes == ["cluster_flagged"] and "cluster c1 (4 accounts" in d.explanation
    d = policy.decide(_assessment(elevated=True))
    assert d.action in ("modify", "throttle") and d.strip_logprobs and d.max_tokens == 1024 and d.cohort == "watch"
    assert d.codes[0] == "elevated_risk"
    allow = Policy(PolicyConfig(), allowlist={"acct"})
    d = allow.decide(_assessment(flagged=True))
    assert d.action == "allow" and d.codes == ["authorised"]
    allow.manual["acct"] = ManualAction("block", "abuse report")
    assert allow.decide(_assessment()).codes == ["manual_block"]      # manual blocks beat the allowlist
    shadow = Policy(PolicyConfig(mode="shadow"))
    d = shadow.decide(_assessment(flagged=True))
    assert d.action == "modify" and d.enforced is False


@pytest.mark.parametrize("elicitation", [True, False])
def test_a_flag_blocks_only_once_it_persists_a_day_and_1000_queries(elicitation):
    """The graduated ladder: a flag first limits; it blocks once it has held for a day and over
    1,000 more of the account's queries, counted from its first flagged request (a long first
    pass in one sitting is not blocked, a slow one that lasts days but stays small is not either;
    pausing does not restart the count)."""
    policy = Policy(PolicyConfig())
    first = policy.decide(_assessment(flagged=True, elicitation=elicitation, queries=40), now=1000.0)
    assert first.action == "modify"
    assert policy.flagged_since("acct") == (1000.0, 40)
    # A long first pass in one sitting: 5,000 more queries within 23 hours, never blocked.
    d = policy.decide(_assessment(flagged=True, elicitation=elicitation, queries=5040), now=1000.0 + 23 * 3600)
    assert d.action in ("modify", "throttle") and d.rule != "flagged_persistent"
    # Days later but only 999 more queries: still limited, not blocked.
    d = policy.decide(_assessment(flagged=True, elicitation=elicitation, queries=1039), now=1000.0 + 5 * 86400)
    assert d.action in ("modify", "throttle") and d.rule != "flagged_persistent"
    # The flag lapses for a while (allow), then returns: the count goes on from the first flag.
    assert policy.decide(_assessment(queries=1039), now=1000.0 + 5 * 86400 + 1).action == "allow"
    d = policy.decide(_assessment(flagged=True, elicitation=elicitation, queries=1040), now=1000.0 + 5 * 86400 + 2)
    assert d.action == "block" and d.rule == "flagged_persistent" and d.codes[0] == "extraction_flagged"
    assert "persisted past a day and 1,000 more queries" in d.explanation
    # Another account flagged later starts its own count.
    d = policy.decide(_assessment(flagged=True, elicitation=elicitation, account="other", queries=5000),
                      now=1000.0 + 5 * 86400 + 3)
    assert d.action == "modify"


def test_sustained_rule_fields_from_toml(tmp_path):
    from distillguard.errors import BadInputError
    from distillguard.gateway.config import load_config

    path = tmp_path / "gw.toml"
    path.write_text('[[policy.rules]]\nname = "slow"\nwhen = "flagged"\nactions = ["block"]\n'
                    'sustained_s = 3600\nsustained_queries = 50\n')
    rule = load_config(path, upstream="http://127.0.0.1:1").policy.rules[0]
    assert (rule.sustained_s, rule.sustained_queries, rule.sustained) == (3600.0, 50, True)
    policy = Policy(PolicyConfig(rules=(rule,)))
    assert policy.decide(_assessment(flagged=True, queries=10), now=0.0).action == "allow"
    assert policy.decide(_assessment(flagged=True, queries=60), now=3600.0).action == "block"
    for bad in ("sustained_s = -1", "sustained_s = nan", 'sustained_s = "a day"', "sustained_queries = 1.5",
                "sustained_queries = true"):
        path.write_text(f'[[policy.rules]]\nwhen = "flagged"\nactions = ["block"]\n{bad}\n')
        with pytest.raises(BadInputError, match="sustained"):
            load_config(path, upstream="http://127.0.0.1:1")


@pytest.mark.parametrize("status, code", [("probing", "security_probing"), ("evaluation", "evaluation_run")])
def test_probing_and_evaluation_are_watermarked_and_limited_never_blocked(status, code, tmp_path):
    policy = Policy(PolicyConfig())
    reason = Reason(status, "info", 0.9, 1e-6, f"criteria of {status} in words")
    v = Verdict(p_value=1e-12, flagged=False, status=status, family_p={"elicitation": 1e-9, "harvest": 1e-9},
                reasons=(reason,))
    actions = []
    for i in range(200):      # a fast first pass: 200 requests in 20 s
        a = Assessment(account="lab", queries=100 + i, verdict=v, elevated=False)
        d = policy.decide(a, now=i * 0.1)
        actions.append(d.action)
        assert d.codes[0] == code and d.cohort == "watch" and d.rule == status
        assert "never blocked" in d.explanation and "criteria of" in d.explanation
    assert "block" not in actions and "throttle" in actions and actions[0] == "modify"
    # An operator cannot configure a block on these statuses.
    path = tmp_path / "g.toml"
    path.write_text(f'[[policy.rules]]\nwhen = "{status}"\nactions = ["block"]\n')
    with pytest.raises(BadInputError, match="never blocked"):
        load_config(path, upstream="http://127.0.0.1:1")


def test_rate_limits_per_account_and_cluster():
    policy = Policy(PolicyConfig(limits=Limits(requests_per_minute=3), cluster_limits=Limits(requests_per_minute=5)))
    actions = [policy.decide(_assessment(), now=100.0).action for _ in range(4)]
    assert actions == ["allow", "allow", "allow", "throttle"]
    d = policy.decide(_assessment(), now=100.0)
    assert d.codes == ["rate_limit_account_requests"] and 0 < d.retry_after <= 20.0
    assert policy.decide(_assessment(), now=120.0).action == "allow"         # refilled
    tokens = Policy(PolicyConfig(limits=Limits(tokens_per_minute=1000)))
    assert tokens.decide(_assessment(), now=0.0).action == "allow"
    tokens.charge_tokens("acct", None, 5000, now=0.0)                        # into debt
    d = tokens.decide(_assessment(), now=1.0)
    assert d.action == "throttle" and d.codes == ["rate_limit_account_tokens"]


def test_token_bucket():
    bucket = TokenBucket(60, now=0.0)
    for _ in range(60):
        assert bucket.wait(1, 0.0) == 0
        bucket.take(1, 0.0)
    assert bucket.wait(1, 0.0) == pytest.approx(1.0)
    assert bucket.wait(1, 1.0) == 0


def test_config_errors_name_the_key(tmp_path):
    def load(text):
        path = tmp_path / "g.toml"
        path.write_text(text)
        return load_config(path, upstream="http://127.0.0.1:1")

    assert load('port = 9000\n[policy]\nmode = "shadow"\n').policy.mode == "shadow"
    cfg = load('[[policy.rules]]\nwhen = "elevated"\nactions = ["throttle"]\nrequests_per_minute = 5\n')
    assert cfg.policy.rules[0].limits == Limits(requests_per_minute=5.0)
    for text, field in [('port = "x"', "port"), ('bogus = 1', "bogus"), ('[policy]\nmode = "loud"', "policy.mode"),
                        ('[[policy.rules]]\nwhen = "sometimes"\nactions = ["block"]', "policy.rules[0].when"),
                        ('[[policy.rules]]\nwhen = "any"\nactions = ["explode"]', "policy.rules[0].actions"),
                        ('[[policy.rules]]\nwhen = "any"\nactions = ["cap_max_tokens"]', "policy.rules[0].max_tokens"),
                        ('[policy.limits]\nrequests_per_minute = -1', "policy.limits.requests_per_minute"),
                        ('[[policy.rules]]\nwhen = "any"\nactions = ["block"]\nevidence = "vibes"', "policy.rules[0].evidence"),
                        ('[[policy.rules]]\nwhen = "any"\nactions = ["block"]\nmin_queries = -5', "policy.rules[0].min_queries"),
                        ('[log]\nsink = "s3"', "log.sink")]:
        with pytest.raises(BadInputError) as info:
            load(text)
        assert info.value.field == field, text
    with pytest.raises(BadInputError, match="TOML"):
        load("port = = 1")
    with pytest.raises(BadInputError, match="upstream"):
        load_config(None, upstream="not a url")


def test_keys_file_errors(tmp_path):
    from distillguard.gateway.keys import KeyRing

    ring = KeyRing()
    for text in ("[]", '{"sk-1": 5}', '{"sk-1": {"email": "x"}}', '{"sk-1": ""}', "{oops"):
        (tmp_path / "k.json").write_text(text)
        with pytest.raises(BadInputError):
            ring.load_file(tmp_path / "k.json")
    (tmp_path / "k.json").write_text('{"sk-live-1": "a", "sk-live-2": {"account": "b", "org": "Acme"}}')
    assert ring.load_file(tmp_path / "k.json") == 2
    assert ring.lookup("sk-live-2").identity == {"org": "Acme"} and ring.lookup("sk-nope") is None


def test_sse_relay_holds_done_and_reassembles():
    relay = SSERelay()
    parts = [b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n', b'\ndata: {"choices": [{"delta": {"conte',
             b'nt": "lo"}, "finish_reason": "stop"}]}\r\n\r\n', b"data: [DONE]\n\n"]
    sent = b"".join(relay.feed(p) for p in parts)
    assert b"[DONE]" not in sent and sent.count(b"data:") == 2
    assert relay.done and relay.text == "Hello" and relay.tail() == b"data: [DONE]\n\n"
    assert relay.assembled("m")["choices"][0]["finish_reason"] == "stop"
    relay = SSERelay(strip_reasoning=lambda o: o["choices"][0]["delta"].pop("reasoning_content", None) is not None)
    out = relay.feed(b'data: {"choices": [{"delta": {"content": "a", "reasoning_content": "secret"}}]}\n\n')
    assert b"secret" not in out and orjson.loads(out[6:])["choices"][0]["delta"] == {"content": "a"}


def test_structured_logs_are_json_lines():
    import io
    import logging

    from distillguard.gateway.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("distillguard.test-json")
    logger.addHandler(handler)
    logger.setLevel("INFO")
    logger.info("decision", extra={"account": "acct-ü", "codes": ["manual_block"]})
    record = orjson.loads(stream.getvalue())
    assert record["msg"] == "decision" and record["account"] == "acct-ü" and record["codes"] == ["manual_block"]
    assert record["level"] == "info" and record["ts"].endswith("Z")


def test_live_scorer_judges_a_resellers_end_users_on_their_own(tmp_path):
    """A reseller's traffic (12 organic customers and one customer's replay script, 5 %), in time
    order: the script's requests are assessed as its end user's and acted on; the reseller's other
    customers are never limited by extraction rules, and the account itself stays clear."""
    from distillguard.gateway.replay import load_events
    from distillguard.lab.campaigns import CampaignSpec, _customer_id
    from distillguard.lab.traffic import TrafficConfig, generate

    config = TrafficConfig(seed=43, accounts=0, days=3, batch_apps=0, eval_runs=0, researchers=0, power_users=0,
                           campaigns=(CampaignSpec("mixed", per_day=2000, extraction_share=0.05, content="replay",
                                                   family=3),))
    events = load_events(generate(config, tmp_path).events_path)
    account = events[0]["account"]
    script = _customer_id(account, 12)
    scorer = LiveScorer(load_default(), 1e-3, max_end_users=64)
    policy = Policy(PolicyConfig())
    acted: dict[str, list[str]] = {"script": [], "customers": []}
    first_flag = None
    for i, ev in enumerate(events):
        facts = read_request(prompt_view(ev["request"]), 4096)
        a = scorer.observe(account, facts, ev["ts_epoch"])
        scorer.add_output(account, ev["usage"]["completion_tokens"], a.repeat, end_user_key=a.end_user_key,
                          end_user_repeat=a.end_user_repeat)
        d = policy.decide(a, now=ev["ts_epoch"])
        who = "script" if ev["request"].get("user") == script else "customers"
        if a.end_user is not None:
            assert who == "script" and a.end_user == script
            assert a.verdict.reasons[0].signal == "end_user_substream"
            if a.verdict.flagged and first_flag is None:
                first_flag = i
        if d.action != "allow" and not any(c.startswith("rate_limit_account") for c in d.codes):
            acted[who].append(d.codes[0])
            if who == "script":
                assert "end_user" in d.codes and f"end user '{script}'" in d.explanation
    assert first_flag is not None
    assert acted["customers"] == []
    assert len(acted["script"]) >= 50
    assert not scorer.accounts[account].verdict.flagged          # the reseller itself is clear
    assert len(scorer.end_users) == 13 <= scorer.max_end_users


def test_end_user_states_are_bounded():
    scorer = LiveScorer(load_default(), 1e-3, max_end_users=5)
    for i in range(12):
        req = {"messages": [{"role": "user", "content": f"question {i}"}], "user": f"u{i}"}
        scorer.observe("platform", read_request(prompt_view(req), 4096), BASE + i)
    assert len(scorer.end_users) == 5
    assert [k.split("\x1f")[1] for k in scorer.end_users] == ["u7", "u8", "u9", "u10", "u11"]
    assert scorer._end_user_count == {"platform": 5}     # the Bonferroni k follows evictions


def test_behaviour_identity_is_cached_until_the_accounts_next_request():
    """Hydra's behaviour link reads an account once per request of its own (cached on the state),
    and never a stale view: a new request moves its last time, slots and area."""
    from distillguard.gateway.live_links import _behaviour

    state = AccountState()
    code = read_request(prompt_view({"messages": [{"role": "user", "content": "Write a Python function to merge two sorted lists."}]}), 4096)
    state.update(code, BASE)
    first = _behaviour("a", state)
    assert _behaviour("a", state) is first                      # no new request: the same object
    state.update(code, BASE + 3600)
    second = _behaviour("a", state)
    assert second is not first
    assert (second.first, second.last) == (BASE, BASE + 3600)
    assert len(second.slots) == 2 and second.slots >= first.slots
    assert second.area == first.area
