"""`distillguard report`: the incident report (HTML or PDF) in numbers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from distillguard.console import console
from distillguard.detect.allowlist import read_allowlist
from distillguard.errors import UsageError


def report(
    db: Path = typer.Option(..., "--db", help="DuckDB event store (opened read-only)."),
    out: Path = typer.Option(..., "--out", help="Incident report to write: .html, or .pdf (printed by headless "
                                                "Chromium)."),
    period: str = typer.Option("30d", "--period",
                               help="Window ending at the newest event: e.g. 30d, 12h, 2w, or all."),
    price: float = typer.Option(10.0, "--price-per-mtok", help="USD per million output tokens, for the value."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline file (default: the shipped one)."),
    fpr: float = typer.Option(0.001, "--fpr", help="Target false-positive rate on organic accounts."),
    allowlist: Optional[Path] = typer.Option(None, "--allowlist",
                                             help="File of authorised account ids, one per line."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report's numbers as JSON here."),
    state: Optional[Path] = typer.Option(None, "--state",
                                         help="The dashboard's state file: its false positives are scanned as "
                                              "authorised and its actions reported."),
    gateway: Optional[str] = typer.Option(None, "--gateway", metavar="URL",
                                          help="A running gateway: its appeals (open, upheld, lifted) are reported."),
    gateway_token_file: Optional[Path] = typer.Option(
        None, "--gateway-token-file", help="File whose first line is the gateway's admin token "
                                           "(else DISTILLGUARD_ADMIN_TOKEN)."),
) -> None:
    """Incident report in numbers: campaigns, tokens extracted, value, areas, attribution, outcomes, plots."""
    import orjson

    from distillguard.detect.baseline import Baseline
    from distillguard.detect.scan import ScanOptions
    from distillguard.report.incident import appeal_counts, build_report, check_out, parse_period, write_report

    check_out(out)
    parse_period(period)
    if gateway_token_file is not None and gateway is None:
        raise UsageError("--gateway-token-file needs --gateway URL")
    link = None
    if gateway is not None:
        from distillguard.web.gateway import GatewayLink, check_url, read_admin_token

        link = GatewayLink(check_url(gateway), read_admin_token(gateway_token_file))
    if price < 0:
        raise UsageError("--price-per-mtok must be >= 0")
    options = ScanOptions(baseline=Baseline.load(baseline) if baseline else None, fpr=fpr, price_per_million=price,
                          allowlist=read_allowlist(allowlist) if allowlist else frozenset(),
                          workers=os.cpu_count() or 1)
    options.check()
    false_positives: frozenset[str] = frozenset()
    outcomes: dict[str, int] = {}
    decided: dict[str, int] = {}
    if state is not None:
        from distillguard.web.queries import ActionLog

        log = ActionLog(state, read_only=True)
        try:
            current = log.current("account")
            false_positives = log.false_positives(current)
            for act in [*current.values(), *log.current("cluster").values()]:
                outcomes[act] = outcomes.get(act, 0) + 1
            decided = log.appeal_decisions()
        finally:
            log.close()
    appeals = None
    if link is not None:
        import asyncio

        from distillguard.web.gateway import GatewayError

        try:
            appeals = asyncio.run(link.appeals(limit=10_000))["appeals"]
        except (GatewayError, KeyError, TypeError) as exc:
            raise UsageError(f"cannot read the appeals from the gateway: {exc}") from None
    result = build_report(db, period=period, options=options, false_positives=false_positives)
    result.outcomes = outcomes
    if appeals is not None:
        result.appeals = appeal_counts(appeals, None if period.strip().lower() == "all" else result.window[0])
        result.appeals_source = f"the gateway at {link.url}, filed in this period"
    elif decided:
        result.appeals = {"upheld": decided.get("upheld", 0), "lifted": decided.get("lifted", 0)}
        result.appeals_source = "decided from the dashboard; connect --gateway for open ones"
    write_report(result, out)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2))
    s = result.summary
    if not result.campaigns:
        console.print(f"No incidents found in {result.events:,} events ({period}). Report → {out}")
    else:
        console.print(f"{s['campaigns']} campaign(s), {s['accounts_flagged']} account(s), {s['queries_extracted']:,} "
                      f"queries, {s['tokens_extracted']:,} output tokens extracted (≈ ${s['estimated_cost_usd']:,.2f} "
                      f"at ${s['price_per_million_tokens']:g}/M tokens). Report → {out}")
