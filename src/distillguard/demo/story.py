"""`distillguard demo`: the whole story on embedded defaults, everything on 127.0.0.1.

Provider A's lab traffic is stored, scanned and served live through A's gateway; A shares what
it caught with provider B (signed STIX over TAXII); the actor opens a new account at B and B's
gateway acts on it from its first requests; then the incident report, the dashboard,
watermarks, output correlation, and the later steps each capability adds. Every step prints
what it proves and how long it took.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from distillguard.demo.compare_step import run_compare_demo
from distillguard.demo.gateway_step import run_gateway_demo
from distillguard.demo.provider_a import run_provider_a
from distillguard.demo.report_step import run_dashboard_demo, run_report_demo
from distillguard.demo.sharing import run_sharing_demo
from distillguard.demo.watermark_step import run_watermark_demo


class _Steps:
    """Numbered step headings, each closed with the time it took."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.current: str | None = None

    def __call__(self, title: str) -> None:
        self.close()
        self.current = title
        self.t0 = time.perf_counter()
        self.console.rule(title)

    def close(self) -> None:
        if self.current is not None:
            took = time.perf_counter() - self.t0
            self.seconds[self.current] = took
            self.console.print(f"[dim]({took:.0f} s)[/dim]")
            self.current = None

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


def run_demo(out: Path, *, seed: int = 7, console: Console | None = None,
             skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Run every step; ``skip``: names of optional steps to leave out (``compare``)."""
    console = console or Console()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    step = _Steps(console)
    summary: dict[str, Any] = run_provider_a(out, console, seed=seed, step=step)

    step("[bold]5. Gateway at A[/bold]: day one of the same traffic, live, through the enforcing proxy")
    summary["gateway"] = run_gateway_demo(out, summary["events_path"], summary["truth"], console)

    step("[bold]6. Two providers[/bold]: A shares what it caught; the actor moves to B and B acts at once")
    summary["sharing"] = run_sharing_demo(out, summary["db"], summary["events_path"], summary["scan"],
                                          summary["truth"], console, seed=seed)

    step("[bold]7. Incident report and dashboard[/bold]: campaigns, tokens, value, attribution; the analysts' view")
    summary["report"] = run_report_demo(out, summary["db"], console)
    summary["dashboard"] = run_dashboard_demo(out, summary["db"], console)

    step("[bold]8. Watermarks[/bold]: each account's answers carry its cohort's key; detection names it")
    summary["watermark"] = run_watermark_demo(out, console, seed=seed)

    if "compare" not in skip:
        step("[bold]9. Output correlation[/bold]: does a suspect model mirror ours more than independent ones do?")
        summary["compare"] = run_compare_demo(out, console, seed=seed)

    step("[bold]10. Evidence[/bold]: a signed, witnessed package for the biggest campaign, verified offline")
    from distillguard.evidence.demo import export_and_verify_biggest

    summary["evidence"] = export_and_verify_biggest(summary["db"], summary["scan"], out, console=console)
    step.close()
    summary["seconds"] = {"total": step.total, **step.seconds}
    console.rule(f"[bold]done[/bold] in {step.total:.0f} s; everything is under {out}")
    return summary
