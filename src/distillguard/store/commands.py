"""`distillguard ingest | export | stats`: load event logs into the DuckDB store and read it back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from distillguard.console import console, err_console
from distillguard.errors import BadInputError, DistillguardError, UsageError


def ingest(
    logs: List[Path] = typer.Argument(..., help="Event logs: JSON Lines (plain or .gz), Parquet, or a DuckDB store."),
    db: Path = typer.Option(Path("events.duckdb"), "--db", help="DuckDB file to load into (created if missing)."),
    skip_bad: bool = typer.Option(False, "--skip-bad",
                                  help="Quarantine bad lines to a side file and go on, instead of stopping."),
    quarantine: Optional[Path] = typer.Option(None, "--quarantine",
                                              help="Side file for bad lines (default: DB path + .quarantine.jsonl)."),
    parquet: Optional[Path] = typer.Option(None, "--parquet", help="Also export the store as Parquet partitioned by day."),
    evidence_key: Optional[Path] = typer.Option(
        None, "--evidence-key", help="Ed25519 signing key (PEM, e.g. intel/signing.pem): also append the stored events "
                                     "no evidence tree holds yet to the store's tree and sign a checkpoint "
                                     "(as `evidence build`; docs/evidence.md)."),
    log_id: str = typer.Option("distillguard/store", "--log-id", help="With --evidence-key: the store's tree (checkpoint origin)."),
) -> None:
    """Load events into a DuckDB store (idempotent on event id)."""
    from distillguard.events.jsonl import Quarantine
    from distillguard.store import EventStore
    from distillguard.store.ingest import FileReport, ingest_paths

    quarantine_path = quarantine or Path(str(db) + ".quarantine.jsonl")
    signing = None
    if evidence_key is not None:            # load (and check) the key before ingesting anything
        from distillguard.evidence.logid import check_log_id
        from distillguard.intel.keys import SigningKey

        check_log_id(log_id)
        signing = SigningKey.load(evidence_key)
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
            tree = None
            if signing is not None:
                from distillguard.evidence.commands import _salt_key
                from distillguard.evidence.treestore import build, sign_current

                tree = build(store, _salt_key(signing), log_id)
                if tree.appended:
                    sign_current(store, log_id, signing.private)
            files = store.export_parquet(parquet) if parquet else []
    finally:
        if sink is not None:
            sink.close()
    console.print(table)
    console.print(f"store holds {total:,} events")
    if tree is not None:
        console.print(f"evidence tree {tree.log_id}: {tree.appended:,} leaves appended ({tree.size:,} in the tree, "
                      f"{tree.seconds:.1f} s){', checkpoint signed' if tree.appended else ''}")
    if report.bad:
        console.print(f"[yellow]{report.bad:,} bad line(s) quarantined → {quarantine_path}[/yellow]")
    if parquet:
        console.print(f"exported {len(files)} Parquet file(s) partitioned by day → {parquet}")


def export(
    db: Path = typer.Option(..., "--db", help="DuckDB store."),
    out: Path = typer.Option(..., "--out", help="Output directory (day=YYYY-MM-DD/ partitions)."),
) -> None:
    """Export the store as Parquet files partitioned by UTC day."""
    from distillguard.store import EventStore

    with EventStore(db, read_only=True) as store:
        files = store.export_parquet(out)
    console.print(f"{len(files)} Parquet file(s) → {out}")


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
