"""Demo step: the lab's first day, live, through the enforcing gateway over loopback HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import orjson
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

DEMO_POLICY = """
# The default graduated rules, with tight token budgets for flagged accounts (so the demo's
# slow-paced bots visibly hit them). A first flag limits, strips and shapes; only a flag that
# persists a day and 1,000 more queries blocks (beyond the demo's first day), and a hydra
# cluster is blocked at once.
[policy.limits]
requests_per_minute = 60

[[policy.rules]]
name = "cluster_flagged"
when = "cluster_flagged"
actions = ["block"]

[[policy.rules]]
name = "flagged_persistent"
when = "flagged"
sustained_s = 86400
sustained_queries = 1000
actions = ["block"]

[[policy.rules]]
name = "flagged_elicitation"
when = "flagged"
evidence = "elicitation"
actions = ["throttle", "strip_logprobs", "strip_reasoning", "cap_max_tokens", "cohort", "shape"]
shape = "summary"
tokens_per_minute = 100
max_tokens = 512
cohort = "watch"

[[policy.rules]]
name = "flagged_coverage"
when = "flagged"
actions = ["throttle", "strip_logprobs", "strip_reasoning", "cap_max_tokens", "cohort"]
tokens_per_minute = 100
max_tokens = 512
cohort = "watch"

[[policy.rules]]
name = "elevated"
when = "elevated"
actions = ["throttle", "strip_logprobs", "strip_reasoning", "cap_max_tokens", "cohort"]
tokens_per_minute = 300
max_tokens = 1024
cohort = "watch"
"""


def replay_live(work: Path, events: list[dict], config_text: str, console: Console, status: str, *,
                answer: str | None = None, admin_token: str | None = None, connections: int | None = None,
                while_up: Callable[[str], Any] | None = None) -> tuple[dict[str, list], Any]:
    """Serve ``events`` in time order through a real gateway over loopback HTTP, in front of a fixed
    upstream: configuration from ``config_text``, one key per account from the events, log and store
    under ``work``. Returns each account's decisions, and what ``while_up(gateway URL)`` returned
    while the gateway was still running."""
    import asyncio

    import httpx

    from distillguard.gateway.app import Gateway, build_app
    from distillguard.gateway.config import load_config
    from distillguard.gateway.replay import keys_for, replay
    from distillguard.gateway.server import ServerThread
    from distillguard.serve.fixed import DEFAULT_TEXT, FixedCompletionServer

    work.mkdir(parents=True, exist_ok=True)
    (work / "keys.json").write_bytes(orjson.dumps(keys_for(events)))
    (work / "gateway.toml").write_text(config_text)
    cfg = load_config(work / "gateway.toml", keys=work / "keys.json", db=work / "events.duckdb",
                      upstream="http://127.0.0.1:1", trust_client_timestamps=True, trust_forwarded_for=True)
    cfg.log.dir = work / "log"
    cfg.admin_token = admin_token
    with ServerThread(FixedCompletionServer(text=answer or DEFAULT_TEXT)) as upstream:
        cfg.upstream = upstream.url
        with ServerThread(build_app(Gateway(cfg))) as server:
            async def go():
                limits = httpx.Limits(max_connections=connections) if connections else httpx.Limits()
                async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
                    return await replay(client, events)
            with console.status(status, spinner="dots"):
                decisions = asyncio.run(go())
            return decisions, (while_up(server.url) if while_up else None)


def run_gateway_demo(out: Path, events_path: Path, truth: dict, console: Console, hours: float = 24.0) -> dict:
    """Replay the first ``hours`` of lab traffic over loopback HTTP: lab → gateway → fixed upstream."""
    from collections import Counter

    from distillguard.gateway.replay import load_events
    from distillguard.serve.fixed import DEFAULT_TEXT

    events = load_events(events_path)
    events = [e for e in events if e["ts_epoch"] < events[0]["ts_epoch"] + hours * 3600]
    work = out / "gateway"
    long_answer = " ".join([DEFAULT_TEXT] * 12)      # ~600 tokens: a full answer, as a model would give
    decisions, _ = replay_live(work, events, DEMO_POLICY, console,
                               f"replaying {len(events):,} requests through the gateway…", answer=long_answer,
                               connections=4)
    rows: dict[str, Counter] = {}
    first_block: dict[str, list[int]] = {}
    first_flag: dict[str, list[int]] = {}     # the first decision on an extraction flag (any action)
    for account, decs in decisions.items():
        strategy = truth.get(account, {}).get("strategy", "organic")
        c = rows.setdefault(strategy, Counter())
        c["accounts"] += 1
        c["requests"] += len(decs)
        flagged_at = next((i + 1 for i, (_, codes) in enumerate(decs)
                           if "extraction_flagged" in codes or "cluster_flagged" in codes), None)
        if flagged_at is not None:
            first_flag.setdefault(strategy, []).append(flagged_at)
            c["flagged_accounts"] += 1
        for i, (action, _) in enumerate(decs):
            c[action] += 1
            if action == "block" and (i == 0 or decs[i - 1][0] != "block"):
                first_block.setdefault(strategy, []).append(i + 1)
    table = Table(title="what the gateway did, by ground-truth strategy (live, in time order)", box=box.SIMPLE_HEAD)
    for col in ("strategy", "accts", "req", "allow", "modify", "throttle", "block", "1st flag", "1st block"):
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
    for strategy, c in sorted(rows.items(), key=lambda kv: (truth_kind(kv[0]), kv[0])):
        blocks = sorted(first_block.get(strategy, []))
        flags = sorted(first_flag.get(strategy, []))
        table.add_row(strategy, f"{c['accounts']:,}", f"{c['requests']:,}", f"{c['allow']:,}", f"{c['modify']:,}",
                      f"{c['throttle']:,}", f"{c['block']:,}", f"#{flags[0]}" if flags else "",
                      f"#{blocks[0]}" if blocks else "")
    console.print(table)
    codes = Counter(code for decs in decisions.values() for _, reason in decs for code in reason.split(",") if code)
    console.print("reason codes: " + ", ".join(f"{code} ×{n:,}" for code, n in codes.most_common()))
    from distillguard.store import EventStore

    with EventStore(work / "events.duckdb", read_only=True) as store:
        stored = store.count()
        sample = store.run("SELECT account, json_extract_string(extra, '$.decision.explanation') FROM events "
                           "WHERE json_extract_string(extra, '$.decision.action') = 'block' ORDER BY ts LIMIT 1")
        limited = store.run("SELECT account, json_extract_string(extra, '$.decision.explanation') FROM events "
                            "WHERE json_extract_string(extra, '$.decision.rule') = 'flagged_elicitation' "
                            "ORDER BY ts LIMIT 1")
    if limited:
        console.print(f"example of a first flag, limited and stripped rather than blocked: "
                      f"[italic]{escape(limited[0][1])}[/italic]")
    if sample:
        console.print(f"example block explanation (sent to the client in x-distillguard-explanation and the JSON "
                      f"error): [italic]{escape(sample[0][1])}[/italic]")
    console.print(f"{stored:,} exchanges logged durably (fsynced) and loaded into {work / 'events.duckdb'}; "
                  f"every decision carries a reason code")
    return {"requests": len(events), "stored": stored, "codes": dict(codes),
            "blocked_accounts": {s: len(v) for s, v in first_block.items()},
            "flagged_accounts": {s: len(v) for s, v in first_flag.items()},
            "by_strategy": {s: dict(c) for s, c in rows.items()}}


def truth_kind(strategy: str) -> int:
    return 0 if strategy in ("organic", "power_user", "batch_app", "eval_run", "researcher") else 1
