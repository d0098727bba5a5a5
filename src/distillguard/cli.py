"""The one entry point: ``distillguard``.

Errors the user can fix (bad input, bad options) print one line and exit 2; never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from distillguard import __version__
from distillguard.errors import BadInputError, DistillguardError, UsageError

app = typer.Typer(help="Detect and deter adversarial distillation of language models served through an API.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
lab_app = typer.Typer(help="The traffic lab: simulated organic and extraction traffic.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")
baseline_app = typer.Typer(help="The organic baseline that scan scores are calibrated against.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")
watermark_app = typer.Typer(help="Watermarks: keys, detection in text, radioactivity of suspect models.",
                            no_args_is_help=True)
app.add_typer(watermark_app, name="watermark")
from distillguard.intel.cli import intel_app  # noqa: E402
app.add_typer(intel_app, name="intel")

console = Console(stderr=False)
err_console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    TextColumn("{task.completed:,} events"), TimeElapsedColumn(), console=err_console,
                    transient=True, disable=not err_console.is_terminal)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"distillguard {__version__}")


@lab_app.command("traffic")
def lab_traffic(
    out: Path = typer.Option(..., "--out", help="Directory for events.jsonl.gz, labels.jsonl and manifest.json."),
    seed: int = typer.Option(1, "--seed", help="Random seed; the same seed gives the same traffic."),
    accounts: int = typer.Option(150, "--accounts", min=0, help="Organic (casual) pseudo-user accounts."),
    days: int = typer.Option(7, "--days", min=1, max=366, help="Days of traffic."),
    start: str = typer.Option("2026-10-05", "--start", help="UTC start date, YYYY-MM-DD."),
    campaigns: Optional[str] = typer.Option(
        None, "--campaigns",
        help="Comma-separated strategies (sweep,cot,rubric,agentic,replay,low_and_slow,hydra,mixed) and/or evasive "
             "families (see README; 'evasive' = all of them); default: the eight strategies. 'none' runs no campaign."),
    batch_per_day: int = typer.Option(1500, "--batch-per-day", min=0, help="Requests/day of each batch-app hard negative."),
    family_accounts: int = typer.Option(1, "--family-accounts", min=0,
                                        help="Instances of each evasive family (a swarm or a library group counts once)."),
    hard_negatives: int = typer.Option(0, "--hard-negatives", min=0,
                                       help="Accounts of each hard legitimate family (vuln_scanner, eval_harness, ...)."),
    legit_families: Optional[str] = typer.Option(None, "--legit-families",
                                                 help="Comma-separated legitimate families for --hard-negatives (default: all)."),
) -> None:
    """Simulate organic traffic (real ShareGPT conversations) and extraction campaigns."""
    from distillguard.lab.campaigns import default_campaigns
    from distillguard.lab.evasive import ATTACK_FAMILIES
    from distillguard.lab.legit import LEGIT_FAMILIES
    from distillguard.lab.traffic import TrafficConfig, generate

    specs, families = default_campaigns(), []
    if campaigns is not None:
        wanted = [c.strip() for c in campaigns.split(",") if c.strip()]
        if wanted == ["none"]:
            specs = []
        else:
            known = {s.strategy for s in specs}
            wanted = [f for w in wanted for f in (ATTACK_FAMILIES if w == "evasive" else (w,))]
            unknown = [w for w in wanted if w not in known and w not in ATTACK_FAMILIES]
            if unknown:
                raise UsageError(f"--campaigns: unknown strategy or family '{unknown[0]}' (choose from "
                                 f"{', '.join(sorted(known))}, evasive, {', '.join(ATTACK_FAMILIES)})")
            specs = [s for s in specs if s.strategy in wanted]
            families = [w for w in wanted if w in ATTACK_FAMILIES]
    legit = ([c.strip() for c in legit_families.split(",") if c.strip()] if legit_families
             else list(LEGIT_FAMILIES)) if hard_negatives else []
    config = TrafficConfig(seed=seed, accounts=accounts, days=days, start=start, campaigns=tuple(specs),
                           batch_per_day=batch_per_day, families=tuple(families), family_instances=family_accounts,
                           legit_families=tuple(legit), legit_accounts=hard_negatives)
    with _progress() as progress:
        task = progress.add_task("generating traffic", total=None)
        summary = generate(config, out, progress=lambda n: progress.update(task, completed=n))
    table = Table(title=f"lab traffic → {out}")
    table.add_column("family")
    table.add_column("accounts", justify="right")
    for strategy, n in sorted(summary.by_kind.items()):
        table.add_row(strategy, str(n))
    console.print(table)
    console.print(f"{summary.events:,} events from {summary.accounts:,} accounts → {summary.events_path}; "
                  f"labels → {summary.labels_path}")


@lab_app.command("build-model")
def lab_build_model(
    out: Optional[Path] = typer.Option(None, "--out", help="Model directory (default: the embedded default's cache)."),
    seconds: float = typer.Option(180.0, "--seconds", min=1.0, help="Wall-clock training budget."),
    vocab_size: int = typer.Option(4096, "--vocab-size", min=300, max=65536, help="BPE vocabulary size."),
    seed: int = typer.Option(0, "--seed"),
    rival: bool = typer.Option(False, "--rival", help="Build the rival base model instead: the default model's "
                               "tokenizer, pretrained on ShareGPT text the default model never saw (a student "
                               "base for 'lab distill --base rival')."),
) -> None:
    """Train the embedded default model (tiny GPT-2 + BPE tokenizer on ShareGPT), in Hugging Face layout."""
    from distillguard.lab.tinylm import RIVAL_SKIP, build_model, default_model_dir, rival_model_dir

    if rival and not default_model_dir().exists():
        raise UsageError("the rival base shares the default model's tokenizer: run 'distillguard lab build-model' first")
    target = out or (rival_model_dir() if rival else default_model_dir())
    extra = {"skip": RIVAL_SKIP, "tokenizer_dir": default_model_dir()} if rival else {}
    with err_console.status("training the tiny language model…", spinner="dots") as status:
        meta = build_model(target, seconds=seconds, vocab_size=vocab_size, seed=seed + (1 if rival else 0), **extra,
                           progress=lambda step, loss: status.update(f"training: step {step:,}, loss {loss:.3f}"))
    console.print(f"{meta['parameters']:,} parameters, {meta['steps']:,} steps in {meta['seconds']} s; held-out "
                  f"perplexity {meta['heldout_perplexity']:,} → {target}")


@app.command()
def ingest(
    logs: List[Path] = typer.Argument(..., help="Event logs: JSON Lines (plain or .gz), Parquet, or a DuckDB store."),
    db: Path = typer.Option(Path("events.duckdb"), "--db", help="DuckDB file to load into (created if missing)."),
    skip_bad: bool = typer.Option(False, "--skip-bad",
                                  help="Quarantine bad lines to a side file and go on, instead of stopping."),
    quarantine: Optional[Path] = typer.Option(None, "--quarantine",
                                              help="Side file for bad lines (default: DB path + .quarantine.jsonl)."),
    parquet: Optional[Path] = typer.Option(None, "--parquet", help="Also export the store as Parquet partitioned by day."),
) -> None:
    """Load events into a DuckDB store (idempotent on event id)."""
    from distillguard.events.jsonl import Quarantine
    from distillguard.store import EventStore
    from distillguard.store.ingest import FileReport, ingest_paths

    quarantine_path = quarantine or Path(str(db) + ".quarantine.jsonl")
    sink = Quarantine(quarantine_path) if skip_bad else None
    table = Table(title=f"ingest → {db}")
    for col in ("source", "read", "new", "duplicates", "quarantined"):
        table.add_column(col, justify="left" if col == "source" else "right")

    def on_file(report: FileReport) -> None:
        table.add_row(report.path, f"{report.read:,}", f"{report.inserted:,}", f"{report.duplicates:,}", f"{report.bad:,}")

    try:
        with EventStore(db) as store, err_console.status("ingesting…", spinner="dots"):
            try:
                report = ingest_paths(store, logs, quarantine=sink, on_file=on_file)
            except BadInputError as exc:
                if exc.line is not None and not skip_bad:
                    raise DistillguardError(f"{exc} (nothing from this file was stored; --skip-bad quarantines "
                                            f"bad lines and goes on)") from None
                raise
            total = store.count()
            files = store.export_parquet(parquet) if parquet else []
    finally:
        if sink is not None:
            sink.close()
    console.print(table)
    console.print(f"store holds {total:,} events")
    if report.bad:
        console.print(f"[yellow]{report.bad:,} bad line(s) quarantined → {quarantine_path}[/yellow]")
    if parquet:
        console.print(f"exported {len(files)} Parquet file(s) partitioned by day → {parquet}")


@app.command()
def export(
    db: Path = typer.Option(..., "--db", help="DuckDB store."),
    out: Path = typer.Option(..., "--out", help="Output directory (day=YYYY-MM-DD/ partitions)."),
) -> None:
    """Export the store as Parquet files partitioned by UTC day."""
    from distillguard.store import EventStore

    with EventStore(db, read_only=True) as store:
        files = store.export_parquet(out)
    console.print(f"{len(files)} Parquet file(s) → {out}")


@app.command()
def stats(
    sources: List[Path] = typer.Argument(..., help="Event logs or a DuckDB store."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Summarise event sources: events, accounts, time range, tokens, endpoints."""
    import orjson

    from distillguard.store import EventStore, SourceKind, source_kind
    from distillguard.store.ingest import ingest_paths

    if fmt not in ("table", "json"):
        raise UsageError("--format must be 'table' or 'json'")
    if len(sources) == 1 and source_kind(sources[0]) is SourceKind.DUCKDB:
        store = EventStore(sources[0], read_only=True)
    else:
        store = EventStore(":memory:")
        with err_console.status("reading…", spinner="dots"):
            ingest_paths(store, sources)
    with store:
        summary = store.summary()
        summary["endpoints"] = dict(store.run("SELECT endpoint, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC"))
    if fmt == "json":
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table(title="events")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in summary.items():
        table.add_row(name, ", ".join(f"{k}: {v:,}" for k, v in value.items()) if isinstance(value, dict)
                      else (f"{value:,}" if isinstance(value, int) else str(value)))
    console.print(table)


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


@app.command()
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
    allowed = _read_allowlist(allowlist) if allowlist else frozenset()
    signal = None
    if intel is not None:
        from distillguard.intel.match import IntelSignal

        signal = IntelSignal.from_home(intel)
    options = ScanOptions(baseline=Baseline.load(baseline) if baseline else None, fpr=fpr, allowlist=allowed,
                          engine=engine, price_per_million=price, workers=workers or (os.cpu_count() or 1),
                          intel=signal)
    options.check()
    with _progress() as progress:
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
        _print_scan(data, limit)
        if signal is not None:
            _print_intel(data, signal)
        if out:
            console.print(f"JSON → {out}")
        if html:
            console.print(f"HTML report → {html}")
    if fail_on_findings and data["summary"]["accounts_flagged"]:
        raise typer.Exit(1)


def _read_allowlist(path: Path) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError("no such allowlist file", source=str(path)) from None
    except UnicodeDecodeError:
        raise BadInputError("allowlist is not UTF-8 text", source=str(path)) from None
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _print_intel(data: dict, signal) -> None:
    stats = signal.stats_
    by_intel = sum(1 for a in data["accounts"] if a.get("intel", {}).get("flagged"))
    console.print(f"intel: {stats.get('indicators', 0):,} active indicators from {len(signal.home.peers)} "
                  f"peer(s), {stats.get('matches', 0):,} matches, {by_intel} account(s) flagged by intel")


def _print_scan(data: dict, limit: int) -> None:
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


@app.command()
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
                          allowlist=_read_allowlist(allowlist) if allowlist else frozenset(),
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


@app.command()
def web(
    db: Path = typer.Option(Path("events.duckdb"), "--db", help="DuckDB event store (read-only, at start and on re-scan)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to listen on."),
    password_file: Optional[Path] = typer.Option(
        None, "--password-file", help="File whose first line is the analyst password (else DISTILLGUARD_WEB_PASSWORD)."),
    state: Optional[Path] = typer.Option(None, "--state",
                                         help="The dashboard's own DuckDB file: audit log (default DB.web.duckdb)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline file (default: the shipped one)."),
    fpr: float = typer.Option(0.001, "--fpr", help="Target false-positive rate on organic accounts."),
    price: float = typer.Option(10.0, "--price-per-mtok", help="USD per million output tokens, for the value."),
    intel: Optional[Path] = typer.Option(None, "--intel", metavar="HOME",
                                         help="An intel home: peers' matches shown and scored (see docs/intel.md)."),
    gateway: Optional[str] = typer.Option(None, "--gateway", metavar="URL",
                                          help="A running gateway: actions are applied there too, and its appeals "
                                               "queue is shown and decided."),
    gateway_token_file: Optional[Path] = typer.Option(
        None, "--gateway-token-file", help="File whose first line is the gateway's admin token "
                                           "(else DISTILLGUARD_ADMIN_TOKEN)."),
) -> None:
    """The analyst dashboard: ranked accounts and clusters, evidence, actions, appeals and an audit log."""
    import uvicorn

    from distillguard.detect.baseline import Baseline
    from distillguard.detect.scan import ScanOptions
    from distillguard.gateway.server import uvicorn_config
    from distillguard.store.duckdb_store import is_duckdb_file
    from distillguard.web.app import WebConfig, build_app
    from distillguard.web.auth import read_password
    from distillguard.web.gateway import GatewayLink, check_url, read_admin_token

    if price < 0:
        raise UsageError("--price-per-mtok must be >= 0")
    if gateway_token_file is not None and gateway is None:
        raise UsageError("--gateway-token-file needs --gateway URL")
    link = GatewayLink(check_url(gateway), read_admin_token(gateway_token_file)) if gateway else None
    password = read_password(password_file)
    if not db.exists():
        raise BadInputError("no such DuckDB file", source=str(db))
    if not is_duckdb_file(db):
        raise BadInputError("not a DuckDB database file", source=str(db))
    signal = None
    if intel is not None:
        from distillguard.intel.match import IntelSignal

        signal = IntelSignal.from_home(intel)
    options = ScanOptions(baseline=Baseline.load(baseline) if baseline else None, fpr=fpr, price_per_million=price,
                          workers=os.cpu_count() or 1, intel=signal)
    options.check()
    config = WebConfig(db=db, state=state or db.with_name(db.name + ".web.duckdb"), password=password, options=options,
                       gateway=link)
    err_console.print(f"scanning {db} …")
    app = build_app(config)
    err_console.print(f"distillguard dashboard on http://{host}:{port} (audit log {config.state}"
                      + (f"; gateway {link.url})" if link else "; no gateway: actions stay in the audit log)"))
    uvicorn.Server(uvicorn_config(app, host, port, log_level="warning")).run()


@app.command()
def gateway(
    upstream: Optional[str] = typer.Option(None, "--upstream", help="Base URL of the OpenAI-compatible model server."),
    config: Optional[Path] = typer.Option(None, "--config", help="gateway.toml (see docs/gateway.md)."),
    db: Optional[Path] = typer.Option(None, "--db", help="DuckDB store the log is loaded into (default events.duckdb)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port to listen on (default 8080)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="JSON object mapping API keys to accounts."),
    admin_token: Optional[str] = typer.Option(None, "--admin-token", envvar="DISTILLGUARD_ADMIN_TOKEN",
                                              help="Bearer token for /admin/... (else the admin API is off)."),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Directory of the durable event log."),
    mode: Optional[str] = typer.Option(None, "--mode", help="enforce, or shadow (decide and log, never act)."),
    fail: Optional[str] = typer.Option(None, "--fail", help="open or closed: what an internal policy error does."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline file (default: the shipped one)."),
    fpr: Optional[float] = typer.Option(None, "--fpr", help="Target false-positive rate of the live flag."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error (JSON lines on stderr)."),
    intel: Optional[Path] = typer.Option(None, "--intel", metavar="HOME",
                                         help="An intel home: peers' live indicators feed the policy "
                                              "(overrides [intel] home; see docs/gateway.md)."),
) -> None:
    """The enforcing gateway: an OpenAI-compatible proxy that logs, scores and acts with reasons."""
    import uvicorn

    from distillguard.gateway.app import Gateway, build_app
    from distillguard.gateway.config import load_config
    from distillguard.gateway.logs import configure as configure_logs
    from distillguard.gateway.server import uvicorn_config

    cfg = load_config(config, upstream=upstream, db=db, port=port, host=host, keys=keys, admin_token=admin_token,
                      baseline=baseline, fpr=fpr)
    if log_dir is not None:
        cfg.log.dir = log_dir
    if mode is not None:
        cfg.policy.mode = mode
    if fail is not None:
        cfg.policy.fail = fail
    if intel is not None:
        cfg.intel.home = intel
    cfg.validate()
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise UsageError(f"--log-level: expected debug, info, warning or error, got {log_level!r}")
    configure_logs(log_level)
    gw = Gateway(cfg)
    err_console.print(f"distillguard gateway on http://{cfg.host}:{cfg.port} → {cfg.upstream} "
                      f"(mode {cfg.policy.mode}, fail-{cfg.policy.fail}, {len(gw.keys)} keys, log {cfg.log.dir}, "
                      f"sink {cfg.log.sink}{'' if not gw.recovered else f', recovered {gw.recovered:,} events'})")
    if gw.intel is not None:
        st = gw.intel.status()
        err_console.print(f"intel from {st['home']}: {st['indicators']:,} live indicators of {len(st['peers'])} trusted "
                          f"peer(s), {st['accounts_matched']:,} account(s) matched"
                          + (f"; re-read every {cfg.intel.reload_s:g} s when it changes" if cfg.intel.reload_s else ""))
    if gw.admin_token is None:
        err_console.print("admin API off (no --admin-token / DISTILLGUARD_ADMIN_TOKEN)")
    uvicorn.Server(uvicorn_config(build_app(gw), cfg.host, cfg.port, log_level="warning")).run()


@app.command()
def serve(
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    model: Optional[Path] = typer.Option(None, "--model",
                                         help="Hugging Face causal LM directory ('default': the embedded tiny model). "
                                              "Without it: a fixed-completion backend."),
    watermark: Optional[str] = typer.Option(None, "--watermark", help="kgw, synthid or none (with --model; default: "
                                            "the key file's scheme, or none without --keys)."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="Watermark key file (needed to watermark)."),
    cohorts: Optional[int] = typer.Option(None, "--cohorts", min=1, max=4096, help="With --keys naming a file that "
                                          "does not exist yet: create it with this many cohorts."),
    delay_ms: float = typer.Option(0.0, "--delay-ms", min=0.0, help="Fixed backend: wait this long before answering."),
    text: Optional[str] = typer.Option(None, "--text", help="Fixed backend: the completion text."),
) -> None:
    """Reference OpenAI-compatible model server: a watermarked Hugging Face model, or a fixed completion."""
    import uvicorn

    from distillguard.gateway.server import uvicorn_config

    if model is None:
        from distillguard.serve.fixed import DEFAULT_TEXT, FixedCompletionServer

        app_ = FixedCompletionServer(text=text or DEFAULT_TEXT, delay_s=delay_ms / 1000.0)
        err_console.print(f"fixed-completion model server on http://{host}:{port} (delay {delay_ms:g} ms)")
    else:
        from distillguard.lab.tinylm import default_model_dir
        from distillguard.serve.hf import HFModelServer
        from distillguard.watermark.keys import KeySet

        if watermark not in (None, "kgw", "synthid", "none"):
            raise UsageError(f"--watermark: expected kgw, synthid or none, got {watermark!r}")
        if watermark in ("kgw", "synthid") and keys is None:
            raise UsageError(f"--watermark {watermark} needs --keys (create one with 'distillguard watermark keygen', "
                             "or name a new file and give --cohorts)")
        key_set = None
        if keys is not None and watermark != "none":
            if not keys.exists() and cohorts is not None:
                KeySet.generate(cohorts=cohorts, scheme=watermark or "kgw").save(keys)
                err_console.print(f"created {keys} with {cohorts} cohort keys (keep it secret)")
            key_set = KeySet.load(keys)
            if cohorts is not None and cohorts != key_set.cohorts:
                raise UsageError(f"--cohorts {cohorts} but {keys} has {key_set.cohorts} cohorts (keys in use are "
                                 "not changed by accident)")
            key_set = key_set.with_scheme(watermark or key_set.scheme)
        watermark = key_set.scheme if key_set else "none"
        model_dir = default_model_dir() if str(model) == "default" else model
        if str(model) == "default" and not model_dir.exists():
            raise UsageError("the embedded default model is not built yet: run 'distillguard lab build-model'")
        app_ = HFModelServer(model_dir, keys=key_set)
        err_console.print(f"model server for {model_dir} on http://{host}:{port} "
                          f"(watermark {watermark}{f', {key_set.cohorts} cohorts' if key_set else ''})")
    uvicorn.Server(uvicorn_config(app_, host, port, log_level="warning")).run()


@watermark_app.command("keygen")
def watermark_keygen(
    out: Path = typer.Option(..., "--out", help="Where to write the key file (owner-only permissions)."),
    cohorts: int = typer.Option(8, "--cohorts", min=1, max=4096, help="Account cohorts, one watermark key each."),
    greenlist_ratio: float = typer.Option(0.25, "--greenlist-ratio", help="KGW green-list share of the vocabulary."),
    bias: float = typer.Option(2.0, "--bias", help="KGW logit bias added to green tokens."),
    scheme: str = typer.Option("kgw", "--scheme", help="Default scheme for serving and detection: kgw or synthid "
                               "(keys for both derive from the one secret)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing key file."),
) -> None:
    """Create a watermark key set (one secret; per cohort a KGW key and SynthID keys)."""
    from distillguard.watermark.keys import KeySet

    if out.exists() and not force:
        raise UsageError(f"{out} exists; keys in use must not be replaced by accident (--force overwrites)")
    keys = KeySet.generate(cohorts=cohorts, greenlist_ratio=greenlist_ratio, bias=bias, scheme=scheme)
    keys.save(out)
    console.print(f"wrote {cohorts} cohort keys ({scheme}) → {out} (keep it secret)")


@watermark_app.command("detect")
def watermark_detect(
    source: str = typer.Argument("-", help="JSON Lines of texts ('token_ids', 'text' or event records), or - for stdin."),
    keys: Path = typer.Option(..., "--keys", help="Watermark key file (from 'watermark keygen')."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer",
                                             help="Model or tokenizer directory (needed for 'text' records)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", min=2,
                                             help="The model's vocabulary size (default: from --tokenizer)."),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="kgw or synthid (default: the key file's)."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
    limit: int = typer.Option(20, "--limit", min=1, help="Rows in the table."),
) -> None:
    """Score texts for our watermark: z-score and exact p-value per text and per cohort."""
    from distillguard.watermark.detect import detect, load_tokenizer, read_records
    from distillguard.watermark.keys import SCHEMES, KeySet

    if fmt not in ("table", "json"):
        raise UsageError(f"--format: expected table or json, got {fmt!r}")
    if scheme is not None and scheme not in SCHEMES:
        raise UsageError(f"--scheme: expected kgw or synthid, got {scheme!r}")
    key_set = KeySet.load(keys)
    key_set = key_set.with_scheme(scheme or key_set.scheme)
    tok = None
    if tokenizer is not None:
        tok, vocab = load_tokenizer(tokenizer)
        vocab_size = vocab_size or vocab
    if vocab_size is None:
        raise UsageError("give --tokenizer (or --vocab-size for records that carry token_ids)")
    records = list(read_records(source))
    if not records:
        raise BadInputError("no texts to score", source=source)
    result = detect(records, key_set, vocab_size, tok)
    if fmt == "json":
        sys.stdout.write(json.dumps(result) + "\n")
        return
    table = Table(title=f"watermark scores ({len(records):,} texts, best of {key_set.cohorts} cohort keys, "
                        f"p-values Bonferroni-corrected)")
    for col in ("text", "tokens", "cohort", "green / scored" if key_set.scheme == "kgw" else "g=1 / scored", "z", "p"):
        table.add_column(col, justify="left" if col == "text" else "right")
    for t in sorted(result["texts"], key=lambda r: r["p_value"])[:limit]:
        table.add_row(escape(t["id"][:40]), f"{t['tokens']:,}", str(t["cohort"]), f"{t['green']:,} / {t['scored']:,}",
                      f"{t['z']:.2f}", f"{t['p_value']:.1e}")
    console.print(table)
    top = result["cohorts"][0]
    console.print(f"whole corpus: most likely cohort {top['cohort']} (z = {top['z']:.2f}, "
                  f"p = {top['p_value_corrected']:.1e} after correcting for {key_set.cohorts} cohorts)")


@watermark_app.command("radioactivity")
def watermark_radioactivity(
    keys: Path = typer.Option(..., "--keys", help="Watermark key file."),
    suspect_model: Optional[Path] = typer.Option(None, "--suspect-model",
                                                 help="Open weights: the suspect's Hugging Face model directory."),
    suspect_url: Optional[str] = typer.Option(None, "--suspect-url",
                                              help="Black box: the suspect's OpenAI-compatible base URL."),
    texts: Path = typer.Option(..., "--texts",
                               help="JSON Lines: our watermarked outputs (open weights) or the prompts (black box)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer",
                                             help="Our model's directory (tokenizer; default: the suspect's)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="DISTILLGUARD_SUSPECT_API_KEY",
                                          help="Black box: bearer token for the suspect endpoint."),
    suspect_name: str = typer.Option("suspect", "--suspect-name", help="Black box: the model name to ask for."),
    controls: int = typer.Option(20, "--controls", min=0, max=1000, help="Control keys (never used) to test too."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Open weights, distribution: our own model's "
                                             "directory ('default': the embedded model); its probabilities are "
                                             "subtracted from the suspect's, which removes most of the noise."),
    method: str = typer.Option("distribution", "--method", help="Open weights: 'distribution' (the suspect's "
                               "next-token probabilities; most power) or 'greedy' (its greedy predictions, exact "
                               "binomial test, as Sander et al.)."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Was a suspect model trained on our watermarked outputs? Names the leaking cohort."""
    import asyncio

    from distillguard.serve.hf import load_model
    from distillguard.watermark.detect import load_tokenizer, read_records
    from distillguard.watermark.keys import KeySet
    from distillguard.watermark.radioactivity import black_box, query_suspect, reading_mode

    if (suspect_model is None) == (suspect_url is None):
        raise UsageError("give exactly one of --suspect-model (open weights) or --suspect-url (black box)")
    if fmt not in ("table", "json"):
        raise UsageError(f"--format: expected table or json, got {fmt!r}")
    if method not in ("distribution", "greedy"):
        raise UsageError(f"--method: expected distribution or greedy, got {method!r}")
    key_set = KeySet.load(keys).with_scheme("kgw")   # radioactivity tests the KGW keys (see docs/watermarks.md)
    records = [r for r in read_records(texts) if r.text]
    if not records:
        raise BadInputError("no texts (records with 'text') to use", source=str(texts))
    if suspect_model is not None:
        tok, model = load_model(suspect_model)
        if tokenizer is not None:
            tok, _ = load_tokenizer(tokenizer)
        ref_model = None
        if reference is not None:
            from distillguard.lab.tinylm import default_model_dir

            ref_model = load_model(default_model_dir() if str(reference) == "default" else reference)[1]
        with err_console.status("reading our texts through the suspect…", spinner="dots") as status:
            result = reading_mode(model, tok, [r.text for r in records], key_set, controls=controls, method=method,
                                  reference=ref_model,
                                  progress=lambda n: status.update(f"reading our texts through the suspect: "
                                                                   f"{n:,} / {len(records):,}"))
    else:
        if tokenizer is None:
            raise UsageError("black box needs --tokenizer (our model's directory) to tokenise the answers")
        tok, vocab = load_tokenizer(tokenizer)
        prompts = [r.text for r in records]
        with err_console.status(f"asking the suspect {len(prompts):,} prompts…", spinner="dots"):
            answers = asyncio.run(query_suspect(suspect_url, prompts, model=suspect_name, api_key=api_key))
        result = black_box(answers, prompts, tok, vocab, key_set, controls=controls)
    data = result.to_dict()
    if fmt == "json":
        sys.stdout.write(json.dumps(data) + "\n")
        return
    table = Table(title=f"radioactivity ({data['mode']}, {data['method']}: {data['pairs_scored']:,} distinct token "
                        f"pairs scored)")
    mass = data["method"] == "distribution"
    for col in ("cohort", "green mass / mass" if mass else "green / scored", "z", "p", "p (corrected)"):
        table.add_column(col, justify="right")
    for c in data["cohorts"][:10]:
        share = (f"{c['green_mass']:,.1f} / {data['mass_scored']:,.1f}" if mass
                 else f"{c['green']:,} / {c['scored']:,}")
        table.add_row(str(c["cohort"]), share, f"{c['z']:.2f}", f"{c['p_value']:.1e}", f"{c['p_value_corrected']:.1e}")
    console.print(table)
    ctl = data["controls"]
    console.print(f"verdict: [bold]{data['verdict']}[/bold]"
                  + (f" (cohort {data['cohorts'][0]['cohort']})" if data["verdict"] == "radioactive" else "")
                  + (f"; control keys: {ctl['share_below_0.01']:.0%} of {ctl['keys']} below p = 0.01 (expect ~1%)"
                     if ctl["keys"] else ""))


@lab_app.command("distill")
def lab_distill(
    out: Path = typer.Option(..., "--out", help="Directory for the student (Hugging Face layout) and its data."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="Watermark key file the teacher serves with."),
    teacher: Path = typer.Option(Path("default"), "--teacher", help="Teacher model directory ('default': tiny model)."),
    share: float = typer.Option(0.05, "--share", min=0.0, max=1.0,
                                help="Share of the student's training tokens that are watermarked teacher answers."),
    tokens: int = typer.Option(200_000, "--tokens", min=1000, help="Student training tokens in all."),
    seconds: float = typer.Option(120.0, "--seconds", min=1.0, help="Student training budget (wall clock)."),
    account: str = typer.Option("student-farm", "--account", help="The extracting account (decides the cohort)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Fine-tune this model instead of training from scratch "
                                        "('rival': the rival base from 'lab build-model --rival')."),
    through_gateway: bool = typer.Option(False, "--through-gateway", help="Collect the teacher's answers over "
                                         "loopback HTTP through a shadow-mode gateway, as a real farm would (slower; "
                                         "also reports the gateway's verdict on the farm)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a student on watermarked teacher answers mixed into other text (share 0: a control)."""
    from distillguard.lab.distill import distill
    from distillguard.lab.tinylm import default_model_dir, rival_model_dir
    from distillguard.watermark.keys import KeySet

    if share > 0 and keys is None:
        raise UsageError("--share > 0 needs --keys (the teacher's watermark keys)")
    teacher_dir = default_model_dir() if str(teacher) == "default" else teacher
    if not teacher_dir.exists():
        raise UsageError(f"no teacher model at {teacher_dir} (run 'distillguard lab build-model')")
    if base is not None and str(base) == "rival":
        base = rival_model_dir()
        if not base.exists():
            raise UsageError(f"no rival base model at {base} (run 'distillguard lab build-model --rival')")
    key_set = KeySet.load(keys) if keys else None
    with err_console.status("distilling…", spinner="dots") as status:
        meta = distill(teacher_dir, key_set, out, share=share, total_tokens=tokens, seconds=seconds,
                       account=account, seed=seed, base=base, through_gateway=through_gateway,
                       progress=lambda m: status.update(m))
    console.print(f"student → {out}: {meta['train_tokens']:,} tokens ({meta['watermarked_share']:.1%} watermarked, "
                  f"cohort {meta['cohort']}), {meta['steps']:,} steps; teacher answers → {out / 'teacher_answers.jsonl'}")
    verdict = meta.get("gateway_verdict")
    if verdict:
        console.print(f"the gateway (shadow mode) saw {verdict['queries']:,} queries from {account}: "
                      + (f"flagged ({', '.join(verdict['reasons']) or verdict['status']}); it would have acted from "
                         f"request #{verdict['first_non_allow_decision_at']}" if verdict["flagged"] else "not flagged"))


@app.command()
def compare(
    protected: str = typer.Option(..., "--protected", help="Our model: an OpenAI-compatible base URL (http…), a "
                                  "Hugging Face directory, or 'default' (the embedded tiny model)."),
    suspect: str = typer.Option(..., "--suspect", help="The suspect model: URL or directory."),
    reference: Optional[List[str]] = typer.Option(None, "--reference", help="An independent model of the same kind "
                                                  "as the suspect (URL or directory); repeat for several."),
    probes: str = typer.Option("builtin", "--probes", help="'builtin', 'builtin:identity,reasoning' (named suites), "
                               "or a JSON Lines file with one 'prompt' per line."),
    samples: int = typer.Option(5, "--samples", help="Completions per probe and model (at least 2)."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens per completion."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (above 0)."),
    embedder: str = typer.Option("minilm", "--embedder", help="minilm (all-MiniLM-L6-v2, ~60 texts/s on 2 cores) "
                                 "or hashing (bag of words, instant)."),
    name: Optional[List[str]] = typer.Option(None, "--name", help="A name of the protected model or its maker, for "
                                              "the identity-leakage test; repeat for several."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="Watermark key file our model serves with: adds the "
                                        "radioactivity test."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Our model's directory, when --protected is "
                                             "an endpoint and --keys is given (the watermark is on its token ids)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="DISTILLGUARD_COMPARE_API_KEY",
                                          help="Bearer token sent to every endpoint."),
    alpha: float = typer.Option(0.01, "--alpha", help="Significance level of the verdict."),
    permutations: int = typer.Option(10_000, "--permutations", help="Permutations per test."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON evidence report here."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write the HTML evidence report here."),
    fmt: str = typer.Option("table", "--format", help="table or json"),
    fail_on_findings: bool = typer.Option(False, "--fail-on-findings", help="Exit 1 when the suspect is found to "
                                          "mirror the protected model."),
) -> None:
    """Does a suspect model mirror our model more than independent models do? (output correlation)"""
    from distillguard.compare.battery import CompareSettings, run_compare
    from distillguard.compare.models import open_model
    from distillguard.compare.probes import load_probes
    from distillguard.compare.report import write_reports

    if fmt not in ("table", "json"):
        raise UsageError(f"--format: expected table or json, got {fmt!r}")
    settings = CompareSettings(samples=samples, max_tokens=max_tokens, temperature=temperature, embedder=embedder,
                               permutations=permutations, alpha=alpha, seed=seed, names=tuple(name or ()))
    settings.check()
    probe_list = load_probes(probes)
    key_set = None
    if keys is not None:
        from distillguard.watermark.keys import KeySet

        key_set = KeySet.load(keys)
    with err_console.status("loading models…", spinner="dots") as status:
        models = [open_model(spec, label, api_key=api_key) for spec, label in
                  [(protected, "protected"), (suspect, "suspect")]
                  + [(r, f"reference {i + 1}") for i, r in enumerate(reference or [])]]
        result = run_compare(models[0], models[1], models[2:], probe_list, settings, keys=key_set,
                             tokenizer_dir=str(tokenizer) if tokenizer else None,
                             progress=lambda message: status.update(message + "…"))
    data = result.to_dict()
    write_reports(data, json_path=out, html_path=html)
    if fmt == "json":
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        table = Table(title=f"compare: {len(probe_list)} probes × {samples} samples, {len(reference or [])} "
                            f"reference(s)")
        for col in ("test", "statistic", "p", "p (Holm)", "effect size", "stands out"):
            table.add_column(col, justify="left" if col == "test" else "right")
        for t in data["tests"]:
            if t["skipped"]:
                table.add_row(t["name"], f"[dim]skipped: {escape(t['skipped'])}[/dim]", "", "", "", "")
                continue
            holm_p = "" if t["p_value_holm"] is None else f"{t['p_value_holm']:.1e}"
            table.add_row(t["name"] + ("" if t["in_verdict"] else " (info)"), f"{t['statistic']:.4g}",
                          f"{t['p_value']:.1e}", holm_p, f"{t['effect_size']:.3g}",
                          {None: "–", True: "yes", False: "no"}[t["stands_out"]])
        console.print(table)
        console.print(f"verdict: [bold]{escape(data['verdict']['finding'])}[/bold]")
        for path, what in ((out, "JSON"), (html, "HTML report")):
            if path:
                console.print(f"{what} → {path}")
    if fail_on_findings and data["verdict"]["distilled"]:
        raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", help="Working directory for the demo's files."),
    seed: int = typer.Option(7, "--seed"),
) -> None:
    """The whole story end to end on embedded defaults."""
    from distillguard.demo import run_demo

    run_demo(out, seed=seed, console=console)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: turns our errors into one line and exit code 2."""
    try:
        app(args=argv, prog_name="distillguard")
    except DistillguardError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
