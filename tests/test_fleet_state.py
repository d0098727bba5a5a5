"""The fleet's shared state on a real redis-server: buckets, the observation stream, operator
state, and what happens when Redis goes away and comes back."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from distillguard.detect.baseline import load_default
from distillguard.events.schema import prompt_view
from distillguard.gateway.fleet.buckets import FleetPolicy
from distillguard.gateway.fleet.observation import Observation, ObservationError, decode, encode, fold
from distillguard.gateway.fleet.state import SharedState, redact
from distillguard.gateway.online import read_request
from distillguard.gateway.policy import Limits, PolicyConfig
from distillguard.gateway.scorer import LiveScorer
from redis_support import redis_server  # noqa: F401  (fixture)


def _facts(text: str, **extra):
    body = {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    return read_request(prompt_view(body), 4096)


def _obs(account: str, text: str, ts: float, **kw) -> Observation:
    return Observation("q", account, ts, facts=_facts(text), **kw)


async def _until(cond, timeout: float = 2.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


@pytest.mark.parametrize("text", [
    "Explain step by step how a transformer works",
    "Erkläre Schritt für Schritt, wie ein Transformator funktioniert, und nenne drei Beispiele.",
    "Объясните, пожалуйста, как работает трансформер",
    "请一步一步解释变压器的工作原理",
    "def f(x):\n    return x * 2",
    "   ",
])
def test_every_request_fact_survives_the_stream(text):
    """Every field of RequestFacts travels to the other replicas: a field the encoding forgets
    reads as its default on every peer (a replica then scores the account on different facts;
    an unread-language harvester went unflagged on a 4-replica fleet that way)."""
    import dataclasses

    for extra in ({}, {"logprobs": True, "user": "end-7", "temperature": 0}):
        facts = _facts(text, **extra)
        back = decode(encode(Observation("q", "acct", 1.0, facts=facts))).facts
        for field in dataclasses.fields(facts):
            a, b = getattr(facts, field.name), getattr(back, field.name)
            same = np.array_equal(a, b) if field.name == "keys" else a == b
            assert same, (field.name, a, b)


def test_an_older_record_without_the_unread_bit_reads_as_read():
    facts = _facts("Translate this sentence into French")
    raw = orjson.loads(encode(Observation("q", "acct", 1.0, facts=facts)))
    assert raw["f"] < 1 << 15                          # the first 15 flags: what an older replica writes
    assert decode(orjson.dumps(raw)).facts.instruction_read is True


def test_observation_round_trip_folds_like_the_original():
    facts = _facts("Explain step by step how a transformer works", logprobs=True, user="end-7")
    obs = Observation("q", "acct", 1234.5, facts=facts, ip="198.51.100.9", user_agent="ua/1",
                      identity={"email": "x@example.com"})
    back = decode(encode(obs))
    assert back.account == "acct" and back.ts == 1234.5 and back.ip == "198.51.100.9"
    assert back.identity == {"email": "x@example.com"} and back.facts.end_user == "end-7"
    assert back.facts.bloom_bits == facts.bloom_bits and np.array_equal(back.facts.keys, facts.keys)
    for name in ("cot", "logprobs", "single_turn", "impersonal", "area"):
        assert getattr(back.facts, name) == getattr(facts, name)
    # Folding the decoded copy gives the same state as the original.
    baseline = load_default()
    a, b = LiveScorer(baseline, 0.001), LiveScorer(baseline, 0.001)
    for i in range(40):
        o = _obs("acct", f"Translate sentence number {i} into French, word by word", 1000.0 + i, ip="10.0.0.1")
        fold(a, o)
        fold(b, decode(encode(o)))
    assert bytes(a.accounts["acct"].v) == bytes(b.accounts["acct"].v)
    assert a.accounts["acct"].bloom == b.accounts["acct"].bloom
    out = decode(encode(Observation("o", "acct", 5.0, completion_tokens=77, repeat=True, end_user_key="k")))
    assert (out.kind, out.completion_tokens, out.repeat, out.end_user_repeat, out.end_user_key) == \
        ("o", 77, True, False, "k")


_INT = st.integers(-(2**63), 2**63 - 1)
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=50)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | _INT | st.floats() | _TEXT,
                              lambda c: st.lists(c, max_size=5) | st.dictionaries(_TEXT, c, max_size=6),
                              max_leaves=30).map(orjson.dumps),
                 st.fixed_dictionaries({"k": st.sampled_from(["q", "o", "x"]), "a": _TEXT,
                                        "t": st.floats(allow_nan=True), "b": st.lists(_INT, max_size=5),
                                        "m": st.lists(st.integers(0, 2**32), min_size=15, max_size=17), "f": _INT, "r": _INT, "o": _INT, "p": _INT},
                                       ).map(orjson.dumps)))
def test_decode_refuses_anything_malformed_with_one_error(raw):
    try:
        obs = decode(raw)
    except ObservationError:
        return
    assert obs.kind in ("q", "o") and isinstance(obs.account, str)


def test_redact_hides_the_password():
    assert redact("redis://user:s3cret@host:6380/0") == "redis://user:***@host:6380/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_bucket_holds_across_four_replicas(redis_server):
    """60 requests/min with a burst of 60: concurrent requests through 4 replicas over 10
    simulated minutes are admitted as one bucket would admit them (within 5 %)."""
    async def main():
        replicas = [SharedState(redis_server.url, replica=f"r{i}") for i in range(4)]
        for r in replicas:
            await r.start()
        admitted = 0
        t = 1_000_000.0
        for step in range(600):              # one second per step, 4 x 3 requests a second
            results = await asyncio.gather(*[r.admit([("account:a:requests", 60.0, 1.0, 1.0)], True, None, now=t)
                                             for r in replicas for _ in range(3)])
            admitted += sum(1 for _now, waits in results if waits[0] == 0)
            t += 1.0
        for r in replicas:
            await r.stop()
        return admitted
    admitted = asyncio.run(main())
    expected = 60 + 600                      # the burst, then one a second
    assert abs(admitted - expected) <= 0.05 * expected, admitted


def test_refused_requests_take_nothing_and_shadow_takes_always(redis_server):
    async def main():
        r = SharedState(redis_server.url, replica="r")
        await r.start()
        key = ("account:b:requests", 2.0, 1.0, 1.0)
        waits = [(await r.admit([key], True, None, now=100.0))[1][0] for _ in range(4)]
        # 2 admitted, then refused; refusals did not deepen the debt: the wait is for one token.
        assert waits[:2] == [0.0, 0.0] and waits[2] == pytest.approx(30.0) and waits[3] == pytest.approx(30.0)
        # A request bucket plus a token bucket in debt: refused as a whole, the request bucket untouched.
        await r.charge(["account:c:tokens"], 50.0, now=100.0)          # no such bucket yet: nothing
        out = await r.admit([("account:c:requests", 10.0, 1.0, 1.0), ("account:c:tokens", 100.0, 0.0, 0.0)],
                            True, None, now=100.0)
        assert out[1] == [0.0, 0.0]
        await r.charge(["account:c:tokens"], 250.0, now=100.0)          # now in debt by 150
        out = await r.admit([("account:c:requests", 10.0, 1.0, 1.0), ("account:c:tokens", 100.0, 0.0, 0.0)],
                            True, None, now=100.0)
        assert out[1][0] == 0.0 and out[1][1] == pytest.approx(150 / (100 / 60))
        level = float(await r.redis.hget(r.bucket_key("account:c:requests"), "l"))
        assert level == pytest.approx(9.0)       # only the admitted request took a token
        shadow = [(await r.admit([("account:d:requests", 1.0, 1.0, 1.0)], False, None, now=5.0))[1][0]
                  for _ in range(3)]
        assert shadow[0] == 0 and shadow[1] > 0 and shadow[2] > shadow[1]   # shadow mode charges anyway
        # Redis's own clock when none is given.
        now, _ = await r.admit([("account:e:requests", 5.0, 1.0, 1.0)], True, None)
        assert abs(now - time.time()) < 5
        await r.stop()
    asyncio.run(main())


def test_observations_reach_the_other_replicas_within_the_bound(redis_server):
    async def main():
        a, b = SharedState(redis_server.url, replica="a"), SharedState(redis_server.url, replica="b")
        got_a, got_b = [], []
        a.on_observation, b.on_observation = got_a.append, got_b.append
        await a.start()
        await b.start()
        t0 = time.monotonic()
        await a.admit([], True, _obs("acct", "hello there", 10.0, ip="192.0.2.1"))
        delay = await _until(lambda: len(got_b) == 1)
        assert got_b[0].account == "acct" and got_b[0].ip == "192.0.2.1"
        a.publish(Observation("o", "acct", 11.0, completion_tokens=5))
        await _until(lambda: len(got_b) == 2)
        await asyncio.sleep(0.2)
        assert got_a == []                       # a replica never folds its own observations twice
        assert time.monotonic() - t0 < 1.0 and delay < 1.0
        # A replica that starts later folds the recent history from the stream.
        c = SharedState(redis_server.url, replica="c")
        got_c = []
        c.on_observation = got_c.append
        await c.start()
        await _until(lambda: len(got_c) == 2)
        # A record that is not an observation is counted and skipped, the fold goes on.
        await a.redis.xadd(a.stream, {"o": "intruder", "d": b"{not json"})
        await a.admit([], True, _obs("acct2", "x", 12.0))
        await _until(lambda: len(got_b) == 3)
        assert b.counts["skipped_bad"] == 1 and got_b[-1].account == "acct2"
        for s in (a, b, c):
            await s.stop()
    asyncio.run(main())


def test_operator_state_is_shared_and_survives_a_redis_restart(redis_server):
    async def main():
        seen = {"a": {}, "b": {}}

        def applier(name):
            def apply(kind, key, value):
                if value is None:
                    seen[name].pop(f"{kind}:{key}", None)
                else:
                    seen[name][f"{kind}:{key}"] = value
            return apply
        a, b = SharedState(redis_server.url, replica="a"), SharedState(redis_server.url, replica="b")
        a.on_admin, b.on_admin = applier("a"), applier("b")
        got = []
        a.on_observation = got.append
        await a.start()
        await b.start()
        await a.set_admin("manual", "mallory", {"action": "block", "reason": "test"})
        await a.set_admin("allow", "lab", True)
        await _until(lambda: len(seen["b"]) == 2)
        assert seen["b"]["manual:mallory"]["action"] == "block"
        await b.set_admin("allow", "lab", None)
        await _until(lambda: "allow:lab" not in seen["a"])
        # Redis goes away: both fall back to local state and say so.
        redis_server.stop()
        await b.admit([("account:x:requests", 5.0, 1.0, 1.0)], True, _obs("x", "during outage", 20.0))
        await _until(lambda: not a.connected and not b.connected, timeout=5)
        assert b.status()["mode"] == "local" and b.status()["buffered"] == 1
        assert await b.admit([], True, _obs("x", "again", 21.0)) is None
        await a.set_admin("manual", "eve", {"action": "block", "reason": "while down"})   # kept, pushed later
        # It comes back empty (no persistence): the replicas re-seed it and publish what they buffered.
        redis_server.start()
        await _until(lambda: a.connected and b.connected, timeout=10)
        await _until(lambda: "manual:eve" in seen["b"], timeout=5)
        fields = await a.redis.hgetall(a.admin_key)
        assert {f.decode() for f in fields} == {"manual:mallory", "manual:eve"}
        await _until(lambda: len(got) == 2, timeout=5)
        assert [(o.account, o.ts) for o in got] == [("x", 20.0), ("x", 21.0)]
        assert a.counts["resets"] == 1 and b.status()["mode"] == "shared" and b.status()["buffered"] == 0
        for s in (a, b):
            await s.stop()
    asyncio.run(main())


def test_fleet_policy_limits_hold_across_replicas(redis_server):
    """Two gateways' policies with a 3 requests/min limit per account share one bucket."""
    from distillguard.gateway.scorer import INSUFFICIENT, Assessment

    async def main():
        states = [SharedState(redis_server.url, replica=f"p{i}") for i in range(2)]
        policies = [FleetPolicy(PolicyConfig(limits=Limits(requests_per_minute=3))) for _ in states]
        for s, p in zip(states, policies):
            await s.start()
            p.shared = True
        a = Assessment(account="acct", queries=1, verdict=INSUFFICIENT, elevated=False)
        actions = []
        for i in range(6):
            p, s = policies[i % 2], states[i % 2]
            d = p.decide(a, now=50.0)
            _now, waits = await s.admit(p.requests(d), d.enforced, None, now=50.0)
            p.settle(d, waits, "acct")
            actions.append((d.action, d.codes, d.retry_after))
        assert [x[0] for x in actions] == ["allow"] * 3 + ["throttle"] * 3
        assert actions[3][1] == ["rate_limit_account_requests"] and actions[3][2] == pytest.approx(20.0)
        # Local mode: each policy has its own bucket again.
        policies[0].shared = False
        assert policies[0].decide(a, now=50.0).action == "allow"
        for s in states:
            await s.stop()
    asyncio.run(main())


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "--workers needs --state"),
    (["--state", "http://127.0.0.1:6379"], "must be a redis://"),
])
def test_cli_refuses_a_fleet_it_cannot_run_with_one_line(tmp_path, args, message):
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-m", "distillguard", "gateway", "--upstream", "http://127.0.0.1:9",
                           "--log-dir", str(tmp_path / "log"), "--db", str(tmp_path / "e.duckdb"), *args],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr


def test_requests_waiting_together_share_one_call_and_are_admitted_in_order(redis_server):
    """50 concurrent requests on one replica: far fewer script calls (stream entries) than
    requests, the bucket admits exactly what one bucket admits in order (10 of 50 at 10/min),
    and the other replica folds all 50 observations and the answers' output records that rode
    along with later calls."""
    async def main():
        a, b = SharedState(redis_server.url, replica="a"), SharedState(redis_server.url, replica="b")
        got = []
        b.on_observation = got.append
        await a.start()
        await b.start()
        key = ("account:batch:requests", 10.0, 1.0, 1.0)
        out = await asyncio.gather(*[a.admit([key], True, _obs("batch", f"question {i}", 100.0), now=100.0)
                                     for i in range(50)])
        waits = [w[0] for _now, w in out]
        assert sum(1 for w in waits if w == 0) == 10
        assert waits[:10] == [0.0] * 10 and all(w > 0 for w in waits[10:])   # in order of arrival
        entries = await a.redis.xlen(a.stream)
        assert entries < 10, entries
        for i in range(50):
            a.publish(Observation("o", "batch", 101.0, completion_tokens=i))
        await a.admit([], True, _obs("batch", "one more", 102.0))
        await _until(lambda: len(got) == 101)
        assert [o.kind for o in got].count("o") == 50
        assert sorted(o.completion_tokens for o in got if o.kind == "o") == list(range(50))
        # An output record with no request behind it goes on its own, within the bound.
        a.publish(Observation("o", "batch", 103.0, completion_tokens=999))
        assert await _until(lambda: len(got) == 102) < 1.0
        assert a.counts["published"] == 102 and not a.outbox and not a._pending
        for s in (a, b):
            await s.stop()
    asyncio.run(main())


def test_folding_a_peers_requests_gives_the_verdict_observing_them_would():
    """Two replicas' share of one account: a replica that folds the other's requests (no verdict
    computed as they arrive) reaches the state and verdict of one that saw them all, at the
    same request, and shows it judged (the admin view)."""
    baseline = load_default()
    whole, half = LiveScorer(baseline, 0.001), LiveScorer(baseline, 0.001)
    verdicts = []
    for i in range(400):
        text = (f"Solve step by step and show your reasoning: what is {i} * {i + 7} minus {3 * i}? "
                f"Then grade your own answer from 1 to 10.")
        o = _obs("acct", text, 1000.0 + 3 * i, ip="203.0.113.9", user_agent="harvester/1")
        a = whole.observe("acct", o.facts, o.ts, ip=o.ip, user_agent=o.user_agent)
        if i % 2:
            fold(half, o)
        else:
            b = half.observe("acct", o.facts, o.ts, ip=o.ip, user_agent=o.user_agent)
            verdicts.append((a.verdict.flagged, b.verdict.flagged, a.queries, b.queries))
        whole.add_output("acct", 300, a.repeat, prompt_chars=a.prompt_chars)
        half.add_output("acct", 300, a.repeat, prompt_chars=a.prompt_chars)
    assert bytes(whole.accounts["acct"].v) == bytes(half.accounts["acct"].v)
    assert all(qa == qb for _fa, _fb, qa, qb in verdicts)
    assert any(fa for fa, _fb, _qa, _qb in verdicts)                   # the account is flagged ...
    first = [fa for fa, *_ in verdicts].index(True)
    assert [fb for _fa, fb, *_ in verdicts].index(True) == first       # ... at the same request
    assert half.judged("acct").verdict.flagged
