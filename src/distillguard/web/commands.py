"""`distillguard web`: the analyst dashboard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from distillguard.console import err_console
from distillguard.errors import BadInputError, UsageError


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
