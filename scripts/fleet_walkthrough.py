"""Replay one lab extraction account through a gateway fleet, a fresh connection per request
(so the kernel spreads them over the workers), and show where each went and when it was acted on.

    python scripts/fleet_walkthrough.py --gateway http://127.0.0.1:8802 --lab lab --log-dir gw-log

The gateway must trust client timestamps (``trust_client_timestamps = true``: replay only) so the
lab's day of traffic replays in seconds on its own clock, and keep its segments
(``[log] keep_segments = true``) so each worker's log can be counted afterwards.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import httpx
import orjson

from distillguard.gateway.replay import load_events, request_headers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="http://127.0.0.1:8802")
    parser.add_argument("--lab", type=Path, default=Path("lab"))
    parser.add_argument("--log-dir", type=Path, default=Path("gw-log"))
    parser.add_argument("--strategy", default="cot")
    args = parser.parse_args()
    labels = [orjson.loads(line) for line in (args.lab / "labels.jsonl").read_bytes().splitlines()]
    account = next(r["account"] for r in labels if r["strategy"] == args.strategy)
    events = [e for e in load_events(args.lab / "events.jsonl.gz") if e["account"] == account]
    first = None
    actions = Counter()
    for i, ev in enumerate(events, 1):
        with httpx.Client(base_url=args.gateway, timeout=30) as client:     # a new connection each time
            r = client.post("/v1/chat/completions", content=orjson.dumps(ev["request"]), headers=request_headers(ev))
        action = r.headers.get("x-distillguard-action", str(r.status_code))
        actions[action] += 1
        if first is None and action in ("block", "throttle"):
            first = (i, action, r.headers.get("x-distillguard-reason"))
    print(f"account {account} ({args.strategy}): {len(events)} requests; actions {dict(actions)}")
    if first:
        print(f"first acted on at its query {first[0]}: {first[1]} ({first[2]})")
    for directory in sorted(p for p in args.log_dir.iterdir() if p.is_dir()):
        n = sum(1 for seg in directory.glob("segment-*.jsonl") for line in seg.read_bytes().splitlines()
                if line and orjson.loads(line).get("account") == account)
        print(f"  {directory.name}: {n} of its requests")


if __name__ == "__main__":
    main()
