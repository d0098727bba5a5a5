"""Everything the gateway decides on a replayed lab log, dumped per request, for before/after checks.

The events of a lab ``events.jsonl.gz`` are sent in time order to the gateway app in process
(httpx's ASGI transport, each with its account's key, timestamp, address and user agent; the
upstream answers with the lab's recorded answers). Per request one JSON line: the answer (status,
action, reasons, explanation, body or its SHA-1), the logged record's decision, risk, status and
usage, and the request's ``RequestFacts``. Two source trees give byte-identical files when they
decide identically; run both with one ``PYTHONHASHSEED`` (the cluster attribution confidence in an
explanation depends on string-hash order).

    PYTHONHASHSEED=0 PYTHONPATH=src python benchmarks/replay_parity.py LAB/events.jsonl.gz 24663 after.jsonl
    cmp before.jsonl after.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import tempfile
from pathlib import Path

import httpx
import orjson

from distillguard.events.schema import prompt_view
from distillguard.gateway.app import Gateway, build_app
from distillguard.gateway.config import load_config
from distillguard.gateway.online import read_request
from distillguard.gateway.replay import keys_for, load_events, recorded_answers, request_headers


async def replay_all(events: list[dict], mode: str, work: Path) -> tuple[list, list[bytes]]:
    keys_path = work / "keys.json"
    keys_path.write_bytes(orjson.dumps(keys_for(events)))
    cfg = load_config(None, upstream="http://upstream.invalid", keys=keys_path, trust_client_timestamps=True,
                      trust_forwarded_for=True)
    cfg.log.dir, cfg.log.sink, cfg.log.fsync, cfg.policy.mode = work / "log", "none", False, mode
    gw = Gateway(cfg, transport=httpx.MockTransport(recorded_answers(events)))
    app = build_app(gw)
    logged: list[bytes] = []
    append = gw.log.append

    def keep(data: bytes, *args, **kwargs):       # every record as written to the log
        logged.append(data)
        return append(data, *args, **kwargs)
    gw.log.append = keep
    answers = []
    await gw.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            for ev in events:
                r = await client.post(ev.get("endpoint") or "/v1/chat/completions", content=orjson.dumps(ev["request"]),
                                      headers=request_headers(ev))
                body = r.content.decode("utf-8", "replace") if r.status_code != 200 else hashlib.sha1(r.content).hexdigest()
                answers.append([r.status_code, r.headers.get("x-distillguard-action"),
                                r.headers.get("x-distillguard-reason"), r.headers.get("x-distillguard-explanation"), body])
    finally:
        await gw.stop()
    return answers, logged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("events", type=Path)
    ap.add_argument("n", type=int, help="first N events (time order)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--mode", choices=("enforce", "shadow"), default="enforce")
    args = ap.parse_args()
    events = load_events(args.events)[: args.n]
    answers, logged = asyncio.run(replay_all(events, args.mode, Path(tempfile.mkdtemp(prefix="dg-parity-"))))
    with open(args.out, "wb") as fh:
        for ev, answer, line in zip(events, answers, logged):
            rec = orjson.loads(line)
            facts = dataclasses.asdict(read_request(prompt_view(ev["request"]), 4096))
            row = {"account": ev["account"], "answer": answer, "facts": facts,
                   "logged": {k: rec.get(k) for k in ("account", "decision", "risk", "status", "usage", "ts")}}
            fh.write(orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=bytes.hex) + b"\n")
    print(f"requests {len(events)}, answered {len(answers)}, logged {len(logged)}, "
          f"not allowed {sum(a[1] != 'allow' for a in answers)}")


if __name__ == "__main__":
    main()
