"""`distillguard scan` and `distillguard baseline …`: find extracting accounts, fit the organic baseline."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from distillguard.console import console, err_console, progress_bar
from distillguard.detect.allowlist import read_allowlist
from distillguard.errors import BadInputError, UsageError


baseline_app = typer.Typer(help="The organic baseline that scan scores are calibrated against.", no_args_is_help=True)


@baseline_app.command("build")
def baseline_build(
    sources: Optional[List[Path]] = typer.Argument(
        None, help="Organic traffic: logs or a DuckDB store. Default: the lab's organic traffic."),
    out: Path = typer.Option(Path("baseline.json"), "--out", help="Where to write the baseline."),
    labels: Optional[Path] = typer.Option(None, "--labels",
                                          help="labels.jsonl: keep only accounts labelled organic."),
    seed: int = typer.Option(1000, "--seed", help="Lab seed (when no sources are given)."),
    accounts: int = typer.Option(3000, "--accounts", min=50, help="Lab accounts (when no sources are given)."),
    days: int = typer.Option(14, "--days", min=1, help="Lab days (when no sources are given)."),
    max_tokens_cap: int = typer.Option(4096, "--max-tokens-cap", min=1, help="The model's output-token limit."),
    include_false_positives: Optional[Path] = typer.Option(
        None, "--include-false-positives", metavar="STATE",
        help="The dashboard's state file (DB.web.duckdb): the events of accounts analysts marked false positive "
             "are added to the organic traffic."),
    false_positives_db: Optional[Path] = typer.Option(
        None, "--false-positives-db", help="The store holding those accounts' events (default: the store the "
                                           "dashboard scanned, recorded in STATE)."),
) -> None:
    """Fit every signal on organic traffic and save the calibration."""
    from distillguard.detect.build import account_features_from, build_from_lab, build_from_paths

    if false_positives_db is not None and include_false_positives is None:
        raise UsageError("--false-positives-db needs --include-false-positives STATE")
    extra, note = None, ""
    if include_false_positives is not None:
        from distillguard.web.queries import ActionLog

        log = ActionLog(include_false_positives, read_only=True)
        try:
            marked = sorted(log.false_positives())
            recorded = log.meta("events_db")
        finally:
            log.close()
        events_db = false_positives_db or (Path(recorded) if recorded else None)
        if events_db is None:
            raise UsageError(f"{include_false_positives} does not name the store it scanned: pass "
                             f"--false-positives-db STORE")
        with err_console.status("reading the analysts' false positives…", spinner="dots"):
            extra = account_features_from(events_db, marked, max_tokens_cap=max_tokens_cap)
        missing = len(marked) - len(extra)
        note = (f" + {len(extra)} false positive(s) from {include_false_positives}"
                + (f" ({missing} marked account(s) have no events in {events_db})" if missing else ""))
        if not marked:
            err_console.print(f"note: no account is marked false positive in {include_false_positives}")
    with err_console.status("fitting the organic baseline…", spinner="dots"):
        if sources:
            exclude = _non_organic(labels) if labels else set()
            baseline = build_from_paths(sources, source=", ".join(str(s) for s in sources) + note,
                                        max_tokens_cap=max_tokens_cap, exclude=exclude, extra=extra)
        else:
            baseline = build_from_lab(seed=seed, accounts=accounts, days=days, max_tokens_cap=max_tokens_cap,
                                      extra=extra)
            baseline.source += note
    baseline.save(out)
    console.print(f"baseline of {baseline.accounts_:,} organic accounts ({baseline.source}) → {out}")


def _non_organic(labels: Path) -> set[str]:
    import orjson

    try:
        rows = [orjson.loads(line) for line in labels.read_bytes().splitlines() if line.strip()]
    except FileNotFoundError:
        raise BadInputError("no such labels file", source=str(labels)) from None
    except orjson.JSONDecodeError as exc:
        raise BadInputError(f"labels file is not JSON Lines ({exc})", source=str(labels)) from None
    return {r["account"] for r in rows if isinstance(r, dict) and r.get("kind") != "organic" and "account" in r}


def scan(
    sources: List[Path] = typer.Argument(..., help="Event logs (JSON Lines, Parquet) or a DuckDB store."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline file (default: the shipped one)."),
    fpr: float = typer.Option(0.001, "--fpr", help="Target false-positive rate on organic accounts."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON result here."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write an HTML report here."),
    engine: str = typer.Option("local", "--engine", help="local (DuckDB + numpy) or spark"),
    allowlist: Optional[Path] = typer.Option(None, "--allowlist",
                                             help="File of authorised account ids, one per line."),
    price: float = typer.Option(10.0, "--price-per-million", help="USD per million output tokens, for damage."),
    fail_on_findings: bool = typer.Option(False, "--fail-on-findings", help="Exit 1 when anything is flagged."),
    limit: int = typer.Option(25, "--limit", min=1, help="Rows in the table."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="Processes for feature extraction (default: every core)."),
    intel: Optional[Path] = typer.Option(None, "--intel", metavar="HOME",
                                         help="An intel home: peers' live indicators as one more signal "
                                              "(only ever adds; see docs/intel.md)."),
) -> None:
    """Find extracting accounts and hydra clusters, calibrated against organic traffic."""
    import orjson

    from distillguard.detect.baseline import Baseline
    from distillguard.detect.scan import ScanOptions, scan_paths

    if fmt not in ("table", "json"):
        raise UsageError("--format must be 'table' or 'json'")
    allowed = read_allowlist(allowlist) if allowlist else frozenset()
    signal = None
    if intel is not None:
        from distillguard.intel.match import IntelSignal

        signal = IntelSignal.from_home(intel)
    options = ScanOptions(baseline=Baseline.load(baseline) if baseline else None, fpr=fpr, allowlist=allowed,
                          engine=engine, price_per_million=price, workers=workers or (os.cpu_count() or 1),
                          intel=signal)
    options.check()
    with progress_bar() as progress:
        task = progress.add_task("scanning", total=None)
        result = scan_paths(sources, options,
                            progress=lambda stage, done, total: progress.update(task, completed=done, total=total))
    data = result.to_dict()
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    if html:
        from distillguard.report.scan_html import write_scan_html

        write_scan_html(result, html)
    if fmt == "json":
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_scan(data, limit)
        if signal is not None:
            print_intel(data, signal)
        if out:
            console.print(f"JSON → {out}")
        if html:
            console.print(f"HTML report → {html}")
    if fail_on_findings and data["summary"]["accounts_flagged"]:
        raise typer.Exit(1)


def print_intel(data: dict, signal) -> None:
    stats = signal.stats_
    by_intel = sum(1 for a in data["accounts"] if a.get("intel", {}).get("flagged"))
    console.print(f"intel: {stats.get('indicators', 0):,} active indicators from {len(signal.home.peers)} "
                  f"peer(s), {stats.get('matches', 0):,} matches, {by_intel} account(s) flagged by intel")


def print_scan(data: dict, limit: int) -> None:
    summary = data["summary"]
    if not summary["accounts_scanned"]:
        console.print("No events in the input: nothing to scan.")
        return
    flagged = [a for a in data["accounts"] if a["flagged"]]
    table = Table(title=f"flagged accounts ({len(flagged)} of {summary['accounts_scanned']:,})")
    for col in ("account", "score", "p-value", "queries", "cluster"):
        table.add_column(col, justify="right" if col in ("score", "p-value", "queries") else "left", no_wrap=True)
    table.add_column("strongest reason", no_wrap=True, overflow="ellipsis", max_width=60)
    for a in flagged[:limit]:
        reasons = a["reasons"][0]["detail"] if a["reasons"] else ""
        table.add_row(a["account"], f"{a['score']:.2f}", f"{a['p_value']:.1e}", f"{a['queries']:,}",
                      a["cluster"] or "", escape(reasons))
    console.print(table)
    if data["clusters"]:
        ctable = Table(title="clusters (linked accounts scored as one actor)")
        for col in ("cluster", "accounts", "flagged", "p-value", "queries", "confidence"):
            ctable.add_column(col, no_wrap=True)
        ctable.add_column("links", overflow="fold", ratio=1)
        for c in data["clusters"][:limit]:
            ctable.add_row(c["cluster"], str(len(c["accounts"])), "yes" if c["flagged"] else "no",
                           f"{c['p_value']:.1e}", f"{c['queries']:,}", f"{c['attribution_confidence']:.2f}",
                           ", ".join(f"{k}:{v}" for k, v in c["links"].items()))
        console.print(ctable)
    console.print(
        f"[bold]{summary['campaigns']}[/bold] campaign(s), {summary['accounts_flagged']} account(s), "
        f"{summary['queries_extracted']:,} queries, {summary['tokens_extracted']:,} output tokens extracted "
        f"(≈ ${summary['estimated_cost_usd']:,.2f} at ${summary['price_per_million_tokens']}/M tokens); "
        f"calibrated at FPR {data['calibration']['target_fpr']}")
