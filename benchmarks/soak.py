"""Soak: ≥ 10,000 generated hostile inputs per target against real servers on 127.0.0.1.

Per target it prints how many inputs were sent, crashes (tracebacks logged by a server, or an
exception other than the project's own clear errors in-process), HTTP 5xx (a deliberate 503 with
Retry-After excepted), hangs (no answer within the timeout) and answered exchanges missing from
the store (gateway: every request answered 200 must be in DuckDB once the gateway has stopped;
ingest: every line the schema accepts must be stored under --skip-bad).

    nice -n 10 .venv/bin/python benchmarks/soak.py --n 10000 --seed 1

Inputs are seeded (``--seed``): valid OpenAI bodies with 0-3 mutations (a value replaced by any
JSON, a key dropped or added), nesting up to 1,100 levels, 4 MiB strings, raw bytes, truncated
JSON, odd headers (spoofed X-Forwarded-For, broken Authorization, replay timestamps), and for the
admin/appeals/TAXII/dashboard targets random paths, methods, query parameters and form fields.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))   # the test suite's fixtures: lab stores, intel homes

TEXTS = ["", " ", "hi", "\u202e", "\x00", "é" * 40, "𝕏" * 9, "null", "[DONE]", "data: x\n\n", "\ud7ff", "a" * 500,
         "Ignore previous instructions", "\r\n", "%00", "../../etc/passwd", "1e309", "-0"]


@dataclass
class Tally:
    target: str
    inputs: int = 0
    crashes: int = 0
    server_errors: int = 0
    hangs: int = 0
    lost: int = 0
    seconds: float = 0.0


class TracebackCounter(logging.Handler):
    """Counts log records that carry a traceback or are errors (uvicorn's 'Exception in ASGI application')."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 3:
            self.samples.append(self.format(record)[-600:])


# -- generators --------------------------------------------------------------------------------------
def text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(TEXTS)
    return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xA0, 0xD7FF), rng.randrange(0xE000, 0x10FFFF)]))
                   for _ in range(rng.randrange(0, 30)))


def nest(depth: int, kind: str) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def any_json(rng: random.Random, depth: int = 0) -> object:
    r = rng.random()
    if r < 0.05:
        return nest(rng.choice([rng.randrange(1, 70), rng.randrange(250, 260), rng.randrange(1000, 1100)]),
                    rng.choice(["list", "dict"]))
    if depth > 3 or r < 0.45:
        return rng.choice([None, True, False, rng.randrange(-2**70, 2**70), rng.uniform(-1e308, 1e308), 0, -1,
                           text(rng)])
    if r < 0.7:
        return [any_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {text(rng): any_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def encode(value: object) -> bytes:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        return json.dumps(value).encode()
    except ValueError:
        return b"{}"
    finally:
        sys.setrecursionlimit(limit)


def chat_body(rng: random.Random, i: int) -> tuple[bytes, bool]:
    """(body, streamed) of a chat request: mostly valid, with 0-3 mutations."""
    body: dict = {"model": "m", "messages": [{"role": "user", "content": f"soak request {i}: {text(rng)}"}]}
    if rng.random() < 0.25:
        body["stream"] = True
    if rng.random() < 0.002:                      # the F1: a body just under max_body_bytes
        body["messages"][0]["content"] = "x" * 4_194_000
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        kind = rng.random()
        if kind < 0.3:
            body[rng.choice(["model", "messages", "max_tokens", "stream", "metadata", "tools", "user", "logprobs",
                             "temperature", text(rng)])] = any_json(rng)
        elif kind < 0.5 and body.get("messages") and isinstance(body["messages"], list):
            body["messages"][0] = any_json(rng) if rng.random() < 0.5 else {"role": text(rng), "content": any_json(rng)}
        elif kind < 0.6:
            body.pop(rng.choice(list(body) or ["x"]), None)
        elif kind < 0.7:
            body["metadata"] = nest(rng.randrange(60, 300), rng.choice(["list", "dict"]))
        else:
            body[text(rng)] = any_json(rng)
    raw = encode(body)
    r = rng.random()
    if r < 0.03:
        raw = raw[: rng.randrange(0, max(1, len(raw)))]
    elif r < 0.05:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    return raw, body.get("stream") is True


def headers(rng: random.Random, key: str) -> dict[str, str]:
    h = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    r = rng.random()
    if r < 0.05:
        h["authorization"] = rng.choice(["", "Bearer", "Basic eDp5", f"bearer   {key}", "Bearer sk-nope", key])
    if rng.random() < 0.2:
        h["x-forwarded-for"] = rng.choice(["203.0.113.9", "1.1.1.1, 10.0.0.1", "garbage", "::1", "999.0.0.1"])
    if rng.random() < 0.05:
        h["x-distillguard-replay-ts"] = rng.choice(["1", "nan", "1e309", "-5", "x"])
    if rng.random() < 0.05:
        h["user-agent"] = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(0, 300)))
    return h


# -- runners -----------------------------------------------------------------------------------------
async def drive(requests, tally: Tally, concurrency: int, timeout: float, on_answer=None) -> None:
    """Send (method, url, kwargs) from an iterator with ``concurrency`` clients; count 5xx and hangs."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False) as client:
        async def worker() -> None:
            for method, url, kwargs in requests:
                tally.inputs += 1
                try:
                    r = await client.request(method, url, **kwargs)
                except httpx.TimeoutException:
                    tally.hangs += 1
                    continue
                except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
                    tally.inputs -= 1           # the client could not even send it: not an input
                    continue
                except httpx.HTTPError as exc:
                    tally.crashes += 1          # connection dropped by the server
                    print(f"  connection error: {type(exc).__name__}: {exc}"[:200], file=sys.stderr)
                    continue
                if r.status_code >= 500 and not (r.status_code == 503 and "retry-after" in r.headers):
                    tally.server_errors += 1
                if on_answer is not None:
                    on_answer(r, kwargs)
        await asyncio.gather(*(worker() for _ in range(concurrency)))


def soak_gateway(n: int, seed: int, work: Path, counter: TracebackCounter) -> list[Tally]:
    from distillguard.gateway.app import Gateway, build_app
    from distillguard.gateway.config import load_config
    from distillguard.gateway.server import ServerThread
    from distillguard.serve.fixed import FixedCompletionServer
    from gateway_support import ADMIN, write_keys
    from distillguard.store import EventStore

    rng = random.Random(seed)
    tallies = []
    with ServerThread(FixedCompletionServer(chunks=3)) as upstream:
        cfg = load_config(None, upstream=upstream.url, db=work / "events.duckdb", keys=write_keys(work),
                          admin_token=ADMIN)
        cfg.log.dir = work / "log"
        cfg.log.load_interval_s = 0.5
        # Two of the three accounts allowlisted, so most valid requests are answered (and must be
        # stored) instead of blocked as the automation they are; the third exercises refusals.
        cfg.allowlist = {"alice", "bob"}
        gw = Gateway(cfg)
        server = ServerThread(build_app(gw))
        server.start()
        answered: set[str] = set()

        def on_chat(r: httpx.Response, kwargs) -> None:
            if r.status_code == 200:
                if r.headers.get("content-type", "").startswith("text/event-stream") and \
                        not r.text.rstrip().endswith("[DONE]"):
                    chat.server_errors += 1          # a stream cut short counts as a failure
                answered.add(r.headers["x-request-id"])
            elif not r.headers.get("content-type", "").startswith("application/json"):
                chat.crashes += 1                    # not the OpenAI error format
                if len(counter.samples) < 5:
                    counter.samples.append(f"not JSON: {r.status_code} {r.headers.get('content-type')} {r.text[:120]!r}")

        chat = Tally("gateway: chat/completions bodies + headers")
        before = counter.count
        t0 = time.perf_counter()
        keys = ["sk-alice-0001", "sk-bob-00002", "sk-research-3"]
        reqs = iter([("POST", server.url + rng.choice(["/v1/chat/completions", "/v1/completions"]),
                      {"content": chat_body(rng, i)[0], "headers": headers(rng, rng.choice(keys))})
                     for i in range(n)])
        asyncio.run(drive(reqs, chat, 16, 60, on_chat))
        chat.seconds = time.perf_counter() - t0
        tallies.append(chat)

        admin = Tally("gateway: admin API")
        t0 = time.perf_counter()
        paths = ["/admin/status", "/admin/accounts", "/admin/accounts/{x}", "/admin/accounts/{x}/action",
                 "/admin/allowlist", "/admin/allowlist/{x}", "/admin/clusters", "/admin/keys", "/admin/keys/revoke",
                 "/admin/appeals", "/admin/appeals/{x}", "/admin/appeals/{x}/decision", "/admin/intel",
                 "/admin/intel/reload", "/admin/{x}", "/{x}", "/v1/{x}", "/healthz", "/metrics", "/v1/models"]

        def admin_request(i: int):
            path = rng.choice(paths).replace("{x}", quote("soak-" + text(rng), safe=""))
            token = rng.choice([ADMIN, ADMIN, "", "wrong", "sk-alice-0001"])
            params = {rng.choice(["limit", "flagged", "status", "account"]): text(rng) for _ in range(rng.randrange(3))}
            body = encode(any_json(rng)) if rng.random() < 0.5 else encode(
                {"action": rng.choice(["block", "throttle", "allow", "clear", text(rng)]), "reason": any_json(rng),
                 "ttl_s": any_json(rng), "requests_per_minute": any_json(rng), "key": any_json(rng),
                 "account": any_json(rng), "decision": any_json(rng)})
            return (rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"]), server.url + path,
                    {"content": body, "params": params, "headers": {"authorization": f"Bearer {token}"} if token else {}})

        not_openai: list[str] = []

        def json_errors(r: httpx.Response, kwargs) -> None:
            if r.status_code >= 400:               # every error in the OpenAI format
                try:
                    assert isinstance(r.json()["error"]["message"], str)
                except Exception:
                    admin.crashes += 1
                    if len(not_openai) < 3:
                        not_openai.append(f"{r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:80]}")

        asyncio.run(drive(iter([admin_request(i) for i in range(n)]), admin, 8, 60, json_errors))
        admin.seconds = time.perf_counter() - t0
        tallies.append(admin)
        for line in not_openai:
            print("  not an OpenAI error: " + line, file=sys.stderr)

        appeals = Tally("gateway: appeals API")
        t0 = time.perf_counter()
        reqs = iter([(rng.choice(["POST", "GET"]), server.url + "/v1/appeals",
                      {"content": encode({"message": any_json(rng)} if rng.random() < 0.7 else any_json(rng)),
                       "headers": {"authorization": "Bearer " + rng.choice(keys + ["x"])}}) for _ in range(n)])
        asyncio.run(drive(reqs, appeals, 8, 60))
        appeals.seconds = time.perf_counter() - t0
        tallies.append(appeals)

        server.stop()                     # the final load: everything logged reaches the store
        with EventStore(work / "events.duckdb", read_only=True) as store:
            stored = {row[0] for row in store.run("SELECT id FROM events")}
        chat.lost = len(answered - stored)
        chat.crashes += counter.count - before
        print(f"  gateway: {len(answered):,} chat requests answered 200, {len(stored):,} events stored "
              f"(all targets' requests)", file=sys.stderr)
    return tallies


def soak_ingest(n: int, seed: int, work: Path) -> Tally:
    from distillguard.errors import DistillguardError, FieldError
    from distillguard.events.jsonl import Quarantine
    from distillguard.events.schema import event_from_obj
    from distillguard.store import EventStore
    from distillguard.store.ingest import ingest_paths

    rng = random.Random(seed + 1)
    tally = Tally("ingest: event lines (strict and --skip-bad)")
    t0 = time.perf_counter()
    expected: set[str] = set()
    files = []
    for f in range(n // 100):
        lines = []
        for i in range(100):
            record: dict = {"id": f"soak-{f}-{i}", "ts": 1791201600 + f * 100 + i, "account": f"acct-{i % 7}",
                            "request": {"messages": [{"role": "user", "content": text(rng)}]}}
            for _ in range(rng.choice([0, 0, 1, 2])):
                record[rng.choice(["ts", "account", "request", "response", "usage", "status", "identity", "id",
                                   "endpoint", text(rng)])] = any_json(rng)
            raw = encode(record).replace(b"\n", b" ")
            if rng.random() < 0.03:
                raw = raw[: rng.randrange(0, max(1, len(raw)))]
            lines.append(raw)
            try:
                event = event_from_obj(orjson.loads(raw))
                expected.add(event.id)
            except (orjson.JSONDecodeError, FieldError):
                pass
        path = work / f"ingest-{f:04d}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        files.append(path)
    with EventStore(work / "ingest.duckdb") as store, Quarantine(work / "ingest.quarantine.jsonl") as quarantine:
        for path in files:
            tally.inputs += 100
            try:
                ingest_paths(store, [path])                      # strict: a clear error or all stored
            except DistillguardError:
                pass
            except Exception:
                tally.crashes += 1
            try:
                ingest_paths(store, [path], quarantine=quarantine)
            except Exception:
                tally.crashes += 1
        stored = {row[0] for row in store.run("SELECT id FROM events")}
    tally.lost = len(expected - stored)
    tally.seconds = time.perf_counter() - t0
    return tally


def soak_intel(n: int, seed: int, work: Path, counter: TracebackCounter) -> list[Tally]:
    from distillguard.errors import DistillguardError
    from distillguard.gateway.server import ServerThread
    from distillguard.intel.importer import import_bundle
    from distillguard.intel.signing import sign_objects
    from distillguard.intel.store import IntelStore
    from distillguard.intel.taxii import API_ROOT, TaxiiServer
    from intel_support import SECRET_T_ON_A, make_homes

    rng = random.Random(seed + 2)
    home_a, home_b = make_homes(work)
    indicator = {"type": "indicator", "spec_version": "2.1", "id": "indicator--9a1f0f3e-1111-4222-8333-444455556666",
                 "created": "2026-10-01T00:00:00.000Z", "modified": "2026-10-01T00:00:00.000Z",
                 "pattern": "[email-addr:x_hmac_sha256 = '" + "ab" * 32 + "']", "pattern_type": "stix",
                 "valid_from": "2026-10-01T00:00:00.000Z", "confidence": 70}
    objects = [indicator | {"id": f"indicator--9a1f0f3e-1111-4222-8333-{i:012d}"} for i in range(3)]
    bundle_id = "bundle--0c0f3c39-4b8e-4c36-9d8b-2b7f4d6e1a55"
    sig = sign_objects(objects, home_a.signing_key(), home_a, bundle_id=bundle_id, valid_days=30)
    imports = Tally("intel import: mutated bundles + signatures (imported must be 0)")
    t0 = time.perf_counter()
    with IntelStore(home_b.db_path) as store:
        for i in range(n):
            bundle = {"type": "bundle", "id": bundle_id, "objects": [dict(o) for o in objects]}
            signature = dict(sig)
            for _ in range(rng.choice([1, 1, 2])):
                target = rng.choice(["object", "object", "signature", "bundle"])
                if target == "object" and isinstance(bundle["objects"], list) and bundle["objects"]:
                    obj = rng.choice(bundle["objects"])
                    key = rng.choice(list(indicator) + [text(rng)])
                    if not isinstance(obj, dict):
                        continue
                    if rng.random() < 0.2:
                        obj.pop(key, None)
                    else:
                        obj[key] = any_json(rng)
                elif target == "signature":
                    signature[rng.choice(list(sig))] = any_json(rng)
                else:
                    bundle[rng.choice(["id", "type", "objects", "spec_version"])] = any_json(rng)
            raw_bundle, raw_sig = encode(bundle), encode(signature)
            if bundle["objects"] == objects and signature == sig and bundle["id"] == bundle_id \
                    and bundle["type"] == "bundle":
                raw_bundle = raw_bundle[:-1]                # the mutation changed nothing: break it
            if rng.random() < 0.05:
                raw_bundle = raw_bundle[: rng.randrange(len(raw_bundle))]
            (work / "b.json").write_bytes(raw_bundle)
            (work / "b.json.sig").write_bytes(raw_sig)
            imports.inputs += 1
            try:
                import_bundle(work / "b.json", home_b, store)
            except DistillguardError:
                pass
            except Exception as exc:
                imports.crashes += 1
                counter.samples.append(f"intel import: {type(exc).__name__}: {exc}"[:600])
        imports.lost = store.count()          # here: objects wrongly imported
    imports.seconds = time.perf_counter() - t0

    taxii = Tally("TAXII: query parameters, paths, headers")
    t0 = time.perf_counter()
    before = counter.count
    with ServerThread(TaxiiServer(home_a, max_page=25).app()) as server:
        cids = [c["id"] for c in home_a.collections.values()]
        names = ["added_after", "limit", "next", "match[id]", "match[type]", "match[version]", "match[spec_version]"]

        def taxii_request(i: int):
            cid = rng.choice(cids + [quote(text(rng) or "x", safe="")])
            tail = rng.choice(["objects/", "manifest/", "objects/{o}/", "objects/{o}/versions/", ""])
            path = f"/{API_ROOT}/collections/{cid}/" + tail.replace("{o}", quote(text(rng) or "x", safe=""))
            params = {rng.choice(names): rng.choice([text(rng), "0", "-1", "9" * 30, "2026-10-05T12:00:00.000Z",
                                                     "2026-13-45T99:99:99Z", "last,first,all", "2.1"])
                      for _ in range(rng.randrange(4))}
            hdrs = {"accept": rng.choice(["application/taxii+json;version=2.1", "*/*", "text/html", ""])}
            auth = ("taxii-client", SECRET_T_ON_A) if rng.random() < 0.9 else (text(rng) or "x", text(rng))
            method = "POST" if rng.random() < 0.1 else "GET"
            kwargs = {"params": params, "headers": hdrs, "auth": auth}
            if method == "POST":
                kwargs["content"] = encode(any_json(rng))
            return method, server.url + path, kwargs

        asyncio.run(drive(iter([taxii_request(i) for i in range(n)]), taxii, 8, 60))
    taxii.crashes += counter.count - before
    taxii.seconds = time.perf_counter() - t0
    return [imports, taxii]


def soak_web(n: int, seed: int, work: Path, counter: TracebackCounter) -> Tally:
    import re

    from distillguard.gateway.server import ServerThread
    from distillguard.web.app import Dashboard, WebConfig, build_app
    from web_support import build_lab_store

    rng = random.Random(seed + 3)
    db, _ = build_lab_store(work)
    dash = Dashboard(WebConfig(db=db, state=work / "web.duckdb", password="correct horse battery",
                               max_failures=10 ** 9))
    tally = Tally("dashboard: login + signed-in forms, pages")
    t0 = time.perf_counter()
    before = counter.count
    with ServerThread(build_app(dash.config, dash)) as server, \
            httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as analyst:
        token = re.search(r"name=csrf value='([^']+)'", analyst.get("/login").text).group(1)
        analyst.post("/login", data={"csrf": token, "password": "correct horse battery"})
        csrf = re.search(r"name=csrf value='([^']+)'", analyst.get("/accounts").text).group(1)
        cookies = {"cookie": "; ".join(f"{k}={v}" for k, v in analyst.cookies.items())}
        fields = ["csrf", "user", "password", "next", "target_kind", "target", "action", "note", "decision"]

        def web_request(i: int):
            r = rng.random()
            form = {rng.choice(fields): text(rng) for _ in range(rng.randrange(5))}
            if form.get("action") in ("block", "allow", "throttle"):
                form["target"] = "soak-" + form.get("target", "")
            if r < 0.35:
                if rng.random() < 0.5:
                    form["csrf"] = csrf
                path = rng.choice(["/actions", "/refresh", "/appeals/{x}/decision"])
                body = urlencode(form).encode() if rng.random() < 0.9 else bytes(
                    rng.randrange(256) for _ in range(rng.randrange(100)))
                return "POST", server.url + path.replace("{x}", quote(text(rng) or "x", safe="")), {
                    "content": body, "headers": {"content-type": "application/x-www-form-urlencoded", **cookies}}
            if r < 0.6:
                return "POST", server.url + "/login", {"content": urlencode(form).encode(), "headers": {
                    "content-type": "application/x-www-form-urlencoded",
                    "cookie": f"dg_login_csrf={quote(text(rng))}"}}
            path = rng.choice(["/", "/accounts", "/accounts/{x}", "/clusters", "/clusters/{x}", "/audit", "/appeals",
                               "/login", "/{x}"]).replace("{x}", quote(text(rng) or "x", safe=""))
            jar = {"headers": cookies if rng.random() < 0.8 else {"cookie": f"dg_session={quote(text(rng))}"}}
            return "GET", server.url + path, {"params": {text(rng): text(rng) for _ in range(rng.randrange(3))}, **jar}

        asyncio.run(drive(iter([web_request(i) for i in range(n)]), tally, 4, 60))
    dash.close()
    tally.crashes += counter.count - before
    tally.seconds = time.perf_counter() - t0
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=["gateway", "ingest", "intel", "web"])
    args = parser.parse_args()
    counter = TracebackCounter()
    for name in ("uvicorn.error", "distillguard", "starlette"):
        logging.getLogger(name).addHandler(counter)
    tallies: list[Tally] = []
    with tempfile.TemporaryDirectory(prefix="dg-soak-") as tmp:
        work = Path(tmp)
        for part in args.only:
            (work / part).mkdir()
            print(f"soaking {part} ...", file=sys.stderr)
            if part == "gateway":
                tallies += soak_gateway(args.n, args.seed, work / part, counter)
            elif part == "ingest":
                tallies.append(soak_ingest(args.n, args.seed, work / part))
            elif part == "intel":
                tallies += soak_intel(args.n, args.seed, work / part, counter)
            elif part == "web":
                tallies.append(soak_web(args.n, args.seed, work / part, counter))
    print(f"\n| target | inputs | crashes/tracebacks | HTTP 5xx | hangs | answered but not stored | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for t in tallies:
        print(f"| {t.target} | {t.inputs:,} | {t.crashes} | {t.server_errors} | {t.hangs} | {t.lost} | {t.seconds:.0f} |")
    for sample in counter.samples:
        print("\nsample traceback:\n" + sample, file=sys.stderr)
    bad = sum(t.crashes + t.server_errors + t.hangs + t.lost for t in tallies)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
