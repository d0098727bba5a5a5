"""Demo step: the incident report in numbers, and the analyst dashboard over the same store."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def run_report_demo(out: Path, db: Path, console: Console) -> dict[str, Any]:
    from distillguard.report.incident import build_report, write_report

    report = build_report(db, period="all")
    path = write_report(report, out / "incident-report.html")
    s = report.summary
    table = Table(title=f"incident report: {report.events:,} events, {report.window[0]} to {report.window[1]}",
                  box=box.SIMPLE_HEAD)
    for col in ("campaign", "kind", "accounts", "queries", "output tokens", "value", "attribution"):
        table.add_column(col, justify="left" if col in ("campaign", "kind") else "right")
    for c in report.campaigns[:8]:
        table.add_row(escape(str(c.campaign)), c.kind, f"{len(c.accounts):,}", f"{c.queries:,}", f"{c.tokens:,}",
                      f"${c.value_usd:,.2f}", f"{c.confidence:.2f}")
    console.print(table)
    console.print(f"{s['campaigns']} campaign(s), {s['accounts_flagged']} account(s), {s['queries_extracted']:,} "
                  f"queries and {s['tokens_extracted']:,} output tokens extracted (≈ ${s['estimated_cost_usd']:,.2f} "
                  f"at ${s['price_per_million_tokens']:g}/M tokens) → {path}")
    return {"campaigns": s["campaigns"], "tokens": s["tokens_extracted"], "path": path}


def run_dashboard_demo(out: Path, db: Path, console: Console) -> dict[str, Any]:
    """Serve the dashboard on loopback, sign in as an analyst and read the ranked accounts."""
    from distillguard.gateway.server import ServerThread
    from distillguard.web.app import WebConfig, build_app

    password = secrets.token_urlsafe(12)
    secret_file = out / "dashboard-password.txt"
    secret_file.write_text(password + "\n")
    secret_file.chmod(0o600)
    config = WebConfig(db=db, state=out / "dashboard.duckdb", password=password)
    with ServerThread(build_app(config)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        form = client.get("/login")
        token = re.search(r"name=csrf value='([^']+)'", form.text)
        signed_in = client.post("/login", data={"csrf": token.group(1) if token else "", "user": "analyst",
                                                "password": password}, follow_redirects=True)
        accounts = client.get("/accounts")
        ok = signed_in.status_code == 200 and accounts.status_code == 200
        console.print(f"dashboard served at {server.url} during the demo: signed in as 'analyst' "
                      f"({'ranked accounts page read' if ok else 'sign-in FAILED'}, HTTP {accounts.status_code})")
    console.print(f"to open it yourself: [bold]distillguard web --db {db} --password-file {secret_file}[/bold] "
                  f"then http://127.0.0.1:8080 (user: any name, password: the file's first line)")
    return {"signed_in": ok, "password_file": secret_file}
