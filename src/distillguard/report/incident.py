"""`distillguard report`: an incident report in numbers.

Campaigns (flagged hydra clusters, single flagged accounts, peer-intel groups), the accounts,
queries and output tokens they extracted, the estimated value at a configurable price, the
capability areas targeted, and per campaign an attribution confidence with the evidence behind
it. Self-contained HTML with inline SVG plots (the scan report's helpers), no JavaScript.

The numbers are the scan's own summary (`ScanResult.summary()`), so a report and a scan of the
same period can never disagree.
"""

from __future__ import annotations

import html
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from distillguard.detect.scan import AccountResult, ScanOptions, ScanResult, scan_store
from distillguard.errors import UsageError
from distillguard.report.scan_html import _CSS, _bars, _p_phrase
from distillguard.store import EventStore

_PERIOD = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_UNIT_HOURS = {"h": 1, "d": 24, "w": 24 * 7}


def parse_period(text: str | None) -> timedelta | None:
    """'30d', '12h', '2w' → a timedelta; None or 'all' → the whole store."""
    if text is None or text.strip().lower() == "all":
        return None
    m = _PERIOD.match(text)
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"--period: expected a positive number of hours, days or weeks such as 30d, 12h or 2w "
                         f"(or 'all'), got {text!r}")
    return timedelta(hours=int(m.group(1)) * _UNIT_HOURS[m.group(2)])


@dataclass
class Campaign:
    """One actor: a flagged cluster, a single flagged account, or a group flagged by peers' intel."""

    campaign: str
    kind: str                       # cluster | account | intel
    accounts: list[str]
    queries: int
    tokens: int
    value_usd: float
    areas: dict[str, int]
    confidence: float
    evidence: list[str]
    first_seen: str
    last_seen: str
    hour_histogram: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("campaign", "kind", "accounts", "queries", "tokens", "value_usd",
                                              "areas", "confidence", "evidence", "first_seen", "last_seen")}


@dataclass
class IncidentReport:
    period: str
    window: tuple[str | None, str | None]   # first and last event considered
    events: int
    summary: dict[str, Any]
    campaigns: list[Campaign]
    daily: list[tuple[str, int, int]]       # (day, all queries, queries of flagged accounts)
    false_positives: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)  # analysts' current actions: action -> targets
    appeals: dict[str, int] = field(default_factory=dict)   # open / upheld / lifted
    appeals_source: str = ""                                 # where the appeal counts come from
    shaped: dict[str, int] = field(default_factory=dict)     # answers shaped by the gateway, per account

    def to_dict(self) -> dict[str, Any]:
        return {"period": self.period, "window": list(self.window), "events": self.events, "summary": self.summary,
                "campaigns": [c.to_dict() for c in self.campaigns], "daily": [list(d) for d in self.daily],
                "false_positives": self.false_positives, "outcomes": self.outcomes, "appeals": self.appeals,
                "appeals_source": self.appeals_source, "shaped": self.shaped}


def appeal_counts(appeals: list[dict[str, Any]], since: str | None) -> dict[str, int]:
    """open / upheld / lifted among the gateway's appeals filed at or after ``since`` (RFC 3339 UTC)."""
    start = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp() if since else None
    counts = {"open": 0, "upheld": 0, "lifted": 0}
    for a in appeals:
        if start is not None and float(a.get("created_at") or 0.0) < start:
            continue
        if a.get("status") in counts:
            counts[a["status"]] += 1
    return counts


# ------------------------------------------------------------------ building

def _merge_areas(accounts: list[AccountResult]) -> dict[str, int]:
    areas: dict[str, int] = {}
    for a in accounts:
        areas[a.top_area] = areas.get(a.top_area, 0) + a.queries
    return dict(sorted(areas.items(), key=lambda kv: -kv[1]))


def _hours(store: EventStore, accounts: list[str]) -> list[int]:
    if not accounts:
        return [0] * 24
    rows = dict(store.run("SELECT hour(ts), count(*) FROM events WHERE account IN (SELECT unnest(?)) GROUP BY 1",
                          [accounts]))
    return [int(rows.get(h, 0)) for h in range(24)]


def campaigns_of(result: ScanResult, store: EventStore | None = None) -> list[Campaign]:
    """The scan's flagged findings grouped into campaigns, the way `ScanResult.summary()` counts them."""
    by_name = {a.account: a for a in result.accounts}
    price = result.price_per_million
    out: list[Campaign] = []

    def make(name: str, kind: str, members: list[AccountResult], confidence: float, evidence: list[str]) -> None:
        tokens = sum(a.completion_tokens for a in members)
        out.append(Campaign(
            campaign=name, kind=kind, accounts=sorted(a.account for a in members),
            queries=sum(a.queries for a in members), tokens=tokens, value_usd=round(tokens / 1e6 * price, 2),
            areas=_merge_areas(members), confidence=round(confidence, 3), evidence=evidence,
            first_seen=min(a.first_seen for a in members), last_seen=max(a.last_seen for a in members),
            hour_histogram=_hours(store, [a.account for a in members]) if store is not None else []))

    in_clusters: set[str] = set()
    for c in result.clusters:
        if not c.verdict.flagged:
            continue
        in_clusters.update(c.accounts)
        links = ", ".join(f"{k} ({v} links)" for k, v in sorted(c.link_counts.items(), key=lambda kv: -kv[1]))
        evidence = [f"{len(c.accounts)} accounts linked by {links}",
                    f"pooled traffic flagged ({_p_phrase(c.verdict.p_value).replace('&lt;', '<')})"]
        evidence += [r.detail for r in c.verdict.reasons[:4]]
        make(c.cluster, "cluster", [by_name[m] for m in c.accounts if m in by_name], c.confidence, evidence)
    flagged = sorted((a for a in result.accounts if a.flagged and a.account not in in_clusters),
                     key=lambda a: (a.verdict.p_value, a.account))
    from distillguard.detect.scan import intel_campaigns

    grouped: set[str] = set()
    for i, group in enumerate(intel_campaigns(flagged), 1):
        members = [by_name[m] for m in group["accounts"]]
        grouped.update(group["accounts"])
        peers = ", ".join(f"{p['peer']}: {p['campaign']}" for p in group["peer_campaigns"])
        make(f"intel-{i}", "intel", members, max(m.intel.score for m in members),
             [f"matched peers' indicators of {peers}"] + [r["detail"] for m in members for r in m.intel.reasons()][:4])
    for a in flagged:
        if a.account in grouped:
            continue
        # One billing account is one actor: attribution is direct; the evidence is why it was flagged.
        evidence = [f"one billing account, flagged on its own traffic ({_p_phrase(a.verdict.p_value).replace('&lt;', '<')})"]
        evidence += [r.detail for r in a.verdict.reasons[:4]]
        make(a.account, "account", [a], 1.0, evidence)
    return sorted(out, key=lambda c: (-c.tokens, c.campaign))


def _window(store: EventStore) -> tuple[datetime | None, datetime | None]:
    first, last = store.run("SELECT min(ts), max(ts) FROM events")[0]
    return first, last


def _daily(store: EventStore, flagged: list[str]) -> list[tuple[str, int, int]]:
    rows = store.run(
        "SELECT strftime(ts, '%Y-%m-%d') AS day, count(*), count(*) FILTER (WHERE account IN (SELECT unnest(?))) "
        "FROM events GROUP BY 1 ORDER BY 1", [flagged or [""]])
    return [(d, int(n), int(f)) for d, n, f in rows]


def build_report(db: str | Path, *, period: str | None = "30d", options: ScanOptions | None = None,
                 false_positives: frozenset[str] = frozenset(),
                 progress: Callable[[str, int, int], None] | None = None) -> IncidentReport:
    """Scan the last ``period`` of the store (ending at its newest event) and group the findings.

    ``false_positives`` (accounts an analyst marked) are scanned as authorised and listed apart.
    """
    span = parse_period(period)
    options = options or ScanOptions()
    options.allowlist = frozenset(options.allowlist) | frozenset(false_positives)
    options.check()
    with EventStore(db, read_only=True) as source:
        _, last = _window(source)
        if span is None or last is None:
            return _report_from(source, period or "all", options, false_positives, progress)
        cutoff = last - span
        with tempfile.TemporaryDirectory(prefix="distillguard-report-") as tmp:
            with EventStore(Path(tmp) / "period.duckdb") as scratch:
                cols = ", ".join(scratch.columns())
                present = set(source.columns())
                select = ", ".join(c if c in present else f"NULL AS {c}" for c in scratch.columns())
                table = source.con.sql(f"SELECT {select} FROM events WHERE ts > TIMESTAMP '{cutoff.isoformat(sep=' ')}'"
                                       ).to_arrow_table()
                scratch.con.register("_period", table)
                scratch.run(f"INSERT INTO events ({cols}) SELECT {cols} FROM _period")
                scratch.con.unregister("_period")
                return _report_from(scratch, period or "all", options, false_positives, progress)


def _shaped(store: EventStore) -> dict[str, int]:
    """Answers the gateway had the model server shape (an enforced decision with ``shape``), per
    account, most first."""
    rows = store.run("SELECT account, count(*) FROM events "
                     "WHERE json_extract_string(extra, '$.decision.shape') IS NOT NULL "
                     "AND coalesce(json_extract_string(extra, '$.decision.enforced'), 'true') = 'true' "
                     "AND coalesce(status, 200) = 200 GROUP BY 1 ORDER BY 2 DESC, 1")
    return {str(account): int(n) for account, n in rows}


def _report_from(store: EventStore, period: str, options: ScanOptions, false_positives: frozenset[str],
                 progress: Callable[[str, int, int], None] | None) -> IncidentReport:
    first, last = _window(store)
    events = store.count()
    result = scan_store(store, options, progress)
    campaigns = campaigns_of(result, store)
    flagged = sorted(a.account for a in result.accounts if a.flagged)
    iso = (lambda t: None if t is None else t.replace(tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return IncidentReport(period=period, window=(iso(first), iso(last)), events=events, summary=result.summary(),
                          campaigns=campaigns, daily=_daily(store, flagged) if events else [],
                          false_positives=sorted(a for a in false_positives
                                                 if a in {r.account for r in result.accounts}),
                          shaped=_shaped(store) if events else {})


# ------------------------------------------------------------------ rendering

def _e(x: Any) -> str:
    return html.escape(str(x))


def hbars(items: list[tuple[str, float]], *, width: int = 520, fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
          label: str = "", color: str = "#5472d3") -> str:
    """Labelled horizontal bars as inline SVG."""
    if not items:
        return ""
    row, left = 20, 170
    height = row * len(items) + 18
    peak = max(v for _, v in items) or 1
    bars = []
    for i, (name, v) in enumerate(items):
        y = 16 + i * row
        w = max(1.0, v / peak * (width - left - 90))
        bars.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">{_e(name[:28])}</text>'
                    f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{color}">'
                    f'<title>{_e(name)}: {_e(fmt(v))}</title></rect>'
                    f'<text x="{left + w + 4:.1f}" y="{y + 12}" font-size="11">{_e(fmt(v))}</text>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(label)}">'
            f'<text x="0" y="10" font-size="10">{_e(label)}</text>{"".join(bars)}</svg>')


def daily_plot(daily: list[tuple[str, int, int]], *, width: int = 640, height: int = 140) -> str:
    """Queries per day: all traffic (grey) and the flagged accounts' share (red)."""
    if not daily:
        return ""
    peak = max(n for _, n, _ in daily) or 1
    bw = (width - 10) / len(daily)
    scale = (height - 34) / peak
    parts = []
    for i, (day, n, f) in enumerate(daily):
        x = 5 + i * bw
        parts.append(f'<rect x="{x:.1f}" y="{height - 18 - n * scale:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{n * scale:.1f}" fill="#ccd"><title>{_e(day)}: {n:,} queries</title></rect>'
                     f'<rect x="{x:.1f}" y="{height - 18 - f * scale:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{f * scale:.1f}" fill="#b3261e"><title>{_e(day)}: {f:,} by flagged accounts</title></rect>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="queries per day">'
            f'<text x="0" y="10" font-size="10">queries per day (grey: all, red: flagged accounts)</text>'
            f'{"".join(parts)}<text x="5" y="{height - 4}" font-size="10">{_e(daily[0][0])}</text>'
            f'<text x="{width - 70}" y="{height - 4}" font-size="10">{_e(daily[-1][0])}</text></svg>')


def render_incident_html(report: IncidentReport) -> str:
    s = report.summary
    first, last = report.window
    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><title>distillguard incident report</title>"
             f"<style>{_CSS}@page{{size:A4;margin:12mm}}@media print{{body{{margin:0;max-width:none}}"
             f"tr,svg,.card{{break-inside:avoid}}}}</style>", "<h1>Distillation incident report</h1>",
             f"<p><small>Period: {_e(report.period)} ({_e(first or '—')} → {_e(last or '—')}), "
             f"{report.events:,} events, {s['accounts_scanned']:,} accounts scanned. Value estimated at "
             f"${s['price_per_million_tokens']:g} per million output tokens.</small></p>"]
    if not report.campaigns:
        parts.append("<p class=ok id=no-incidents><b>No incidents found</b>: no account or cluster was flagged "
                     "in this period.</p>")
    parts.append("<div>")
    for label, value in (("campaigns", s["campaigns"]), ("accounts", s["accounts_flagged"]),
                         ("queries extracted", f"{s['queries_extracted']:,}"),
                         ("output tokens extracted", f"{s['tokens_extracted']:,}"),
                         ("estimated value", f"${s['estimated_cost_usd']:,.2f}")):
        parts.append(f'<div class=card><b>{_e(value)}</b>{_e(label)}</div>')
    parts.append("</div>")
    if report.daily:
        parts.append(f"<h2>Timeline</h2>{daily_plot(report.daily)}")
    if report.campaigns:
        parts.append("<h2>Campaigns</h2>")
        parts.append(hbars([(c.campaign, c.tokens) for c in report.campaigns[:20]],
                           label="output tokens extracted per campaign"))
        parts.append(hbars([(c.campaign, c.value_usd) for c in report.campaigns[:20]], fmt=lambda v: f"${v:,.2f}",
                           label="estimated value per campaign (USD)", color="#b3261e"))
        parts.append("<table><tr><th>campaign<th>kind<th class=num>accounts<th class=num>queries"
                     "<th class=num>output tokens<th class=num>value<th>areas<th class=num>attribution confidence"
                     "<th>evidence</tr>")
        for c in report.campaigns:
            areas = ", ".join(f"{_e(k)} {v:,}" for k, v in list(c.areas.items())[:3])
            parts.append(f"<tr id='campaign-{_e(c.campaign)}'><td>{_e(c.campaign)}<td>{_e(c.kind)}"
                         f"<td class=num>{len(c.accounts)}<td class=num>{c.queries:,}<td class=num>{c.tokens:,}"
                         f"<td class=num>${c.value_usd:,.2f}<td>{areas}<td class=num>{c.confidence:.2f}"
                         f"<td>{'<br>'.join(_e(x) for x in c.evidence)}</tr>")
        parts.append("</table>")
        if s["capability_areas"]:
            parts.append("<h2>Capability areas targeted</h2>")
            parts.append(hbars(list(s["capability_areas"].items())[:12], label="queries of flagged accounts by area"))
        parts.append("<h2>When the campaigns ran</h2><div class=plots>")
        for c in report.campaigns[:6]:
            if c.hour_histogram:
                parts.append(_bars(c.hour_histogram, label=f"{c.campaign}: requests by hour (UTC)"))
        parts.append("</div>")
    if report.outcomes or report.appeals or report.false_positives:
        parts.append("<h2>False positives and appeals</h2>")
        if report.appeals:
            parts.append("<div id=appeals>" + "".join(
                f"<div class=card><b>{report.appeals.get(k, 0):,}</b>appeals {k}</div>"
                for k in ("open", "upheld", "lifted") if k in report.appeals) + "</div>"
                + f"<p><small>Appeals filed by blocked users ({_e(report.appeals_source)}). A lifted appeal is a "
                  f"false positive the gateway no longer acts on.</small></p>")
        if report.outcomes:
            parts.append(hbars([(k.replace("_", " "), v) for k, v in sorted(report.outcomes.items(),
                                                                            key=lambda kv: -kv[1])],
                               label="analysts' current actions (accounts and clusters)", color="#6a4fb3"))
            parts.append("<p id=outcomes>Current actions from the dashboard's audit log: "
                         + ", ".join(f"{_e(k.replace('_', ' '))} {v:,}" for k, v in sorted(report.outcomes.items()))
                         + ".</p>")
        if report.false_positives:
            parts.append(f"<p id=false-positives>{len(report.false_positives):,} account(s) marked false positive "
                         f"by analysts were scanned as authorised: "
                         + ", ".join(_e(a) for a in report.false_positives) + "</p>")
    if report.shaped:
        total = sum(report.shaped.values())
        parts.append(f"<h2>Shaped answers</h2><p id=shaped>{total:,} answer(s) to {len(report.shaped):,} account(s) "
                     "were shaped to teach a copier less (docs/shaping.md):</p>")
        parts.append(hbars(list(report.shaped.items())[:20], label="shaped answers per account", color="#8a6d00"))
    parts.append("</html>")
    return "\n".join(parts)


def check_out(path: str | Path) -> str:
    """'html' or 'pdf' by the file's suffix; a PDF needs Chromium, looked for now (before a scan)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix == ".pdf":
        from distillguard.report.pdf import find_chromium

        find_chromium()
        return "pdf"
    raise UsageError(f"{path}: --out must end in .html or .pdf")


def write_report(report: IncidentReport, path: str | Path) -> Path:
    """The report as self-contained HTML, or as PDF printed by headless Chromium."""
    path = Path(path)
    kind = check_out(path)
    if kind == "pdf":
        from distillguard.report.pdf import html_to_pdf

        return html_to_pdf(render_incident_html(report), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_incident_html(report), encoding="utf-8")
    return path


__all__ = ["Campaign", "IncidentReport", "appeal_counts", "build_report", "campaigns_of", "check_out", "parse_period",
           "render_incident_html", "write_report", "hbars", "daily_plot"]
