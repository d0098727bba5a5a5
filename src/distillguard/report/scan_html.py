"""A self-contained HTML report of a scan: summary in numbers, ranked accounts and clusters,
per-account evidence with inline SVG plots (no JavaScript, no external assets)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from distillguard.detect.scan import ScanResult

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d232a;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #dde}table{border-collapse:collapse;width:100%}
td,th{padding:.3rem .5rem;border-bottom:1px solid #eef;text-align:left;vertical-align:top}
th{background:#f5f6fa}.num{text-align:right;font-variant-numeric:tabular-nums}
.flag{color:#b3261e;font-weight:600}.ok{color:#2e7d32}.card{display:inline-block;margin:.3rem 1rem .3rem 0;
padding:.6rem 1rem;border:1px solid #dde;border-radius:8px}.card b{display:block;font-size:1.4rem}
.acct{border:1px solid #dde;border-radius:8px;padding:.8rem 1rem;margin:1rem 0}.plots svg{margin-right:1rem}
small{color:#666}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _p(p: float) -> str:
    """A p-value for people: below double precision it is just 'below 1e-300'."""
    return "&lt; 1e-300" if p <= 0 else f"{p:.1e}"


def _p_phrase(p: float) -> str:
    return "p &lt; 1e-300" if p <= 0 else f"p = {p:.1e}"


def _bars(values: list[int], width: int = 320, height: int = 90, label: str = "") -> str:
    peak = max(values) or 1
    bw = width / max(1, len(values))
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - 14 - v / peak * (height - 24):.1f}" width="{bw - 1:.1f}" '
        f'height="{v / peak * (height - 24):.1f}" fill="#5472d3"><title>{i}h: {v}</title></rect>'
        for i, v in enumerate(values))
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(label)}">{bars}'
            f'<text x="0" y="{height - 2}" font-size="10">0h</text><text x="{width - 24}" y="{height - 2}" '
            f'font-size="10">23h</text><text x="0" y="10" font-size="10">{_e(label)}</text></svg>')


def _line(points: list[list[int]], width: int = 320, height: int = 90, label: str = "") -> str:
    if not points:
        return ""
    xmax = max(p[0] for p in points) or 1
    ymax = max(p[1] for p in points) or 1
    path = " ".join(f"{p[0] / xmax * (width - 10) + 5:.1f},{height - 14 - p[1] / ymax * (height - 24):.1f}"
                    for p in points)
    diag = f"5,{height - 14} {width - 5:.1f},{height - 14 - (xmax / ymax if ymax >= xmax else 1) * (height - 24):.1f}"
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(label)}">'
            f'<polyline points="{diag}" fill="none" stroke="#ccc" stroke-dasharray="3 3"/>'
            f'<polyline points="{path}" fill="none" stroke="#b3261e" stroke-width="2"/>'
            f'<text x="0" y="10" font-size="10">{_e(label)}</text>'
            f'<text x="0" y="{height - 2}" font-size="10">queries → {xmax:,}; distinct prompts ↑ {ymax:,}</text></svg>')


def render_scan_html(result: ScanResult) -> str:
    data = result.to_dict()
    s = data["summary"]
    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><title>distillguard scan</title><style>{_CSS}</style>",
             "<h1>Distillation scan</h1>",
             f"<p><small>Calibrated against {_e(data['calibration']['baseline'])} "
             f"({data['calibration']['baseline_accounts']:,} organic accounts) at a target false-positive rate of "
             f"{data['calibration']['target_fpr']}. Accounts with fewer than {data['calibration']['min_queries']} "
             f"queries are reported as insufficient data.</small></p>",
             "<div>"]
    for label, value in (("campaigns", s["campaigns"]), ("accounts flagged", s["accounts_flagged"]),
                         ("clusters flagged", s["clusters_flagged"]), ("queries extracted", f"{s['queries_extracted']:,}"),
                         ("output tokens extracted", f"{s['tokens_extracted']:,}"),
                         ("estimated value", f"${s['estimated_cost_usd']:,.2f}")):
        parts.append(f'<div class=card><b>{_e(value)}</b>{_e(label)}</div>')
    parts.append("</div>")
    if s["capability_areas"]:
        parts.append("<p>Capability areas targeted (queries): " + ", ".join(
            f"{_e(k)} {v:,}" for k, v in list(s["capability_areas"].items())[:8]) + "</p>")
    parts.append("<h2>Clusters</h2>")
    if data["clusters"]:
        parts.append("<table><tr><th>cluster<th>accounts<th>verdict<th class=num>p-value<th class=num>queries"
                     "<th class=num>attribution confidence<th>evidence</tr>")
        for c in data["clusters"]:
            verdict = '<span class=flag>flagged</span>' if c["flagged"] else '<span class=ok>clear</span>'
            parts.append(f"<tr><td>{_e(c['cluster'])}<td>{len(c['accounts'])}<td>{verdict}<td class=num>"
                         f"{_p(c['p_value'])}<td class=num>{c['queries']:,}<td class=num>{c['attribution_confidence']:.2f}"
                         f"<td>{'<br>'.join(_e(r['detail']) for r in c['reasons'][:4])}</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No linked account clusters.</p>")
    flagged = [a for a in data["accounts"] if a["flagged"]]
    parts.append(f"<h2>Flagged accounts ({len(flagged)})</h2>")
    if not flagged:
        parts.append("<p>No account was flagged.</p>")
    plots = {a.account: a.plots for a in result.accounts if a.plots}
    for a in flagged:
        p = plots.get(a["account"], {})
        parts.append(f"<div class=acct id='{_e(a['account'])}'><b>{_e(a['account'])}</b> — score {a['score']:.2f}, "
                     f"{_p_phrase(a['p_value'])}, {a['queries']:,} queries, {a['completion_tokens']:,} output tokens, "
                     f"{_e(a['first_seen'])} → {_e(a['last_seen'])}"
                     + (f", cluster {_e(a['cluster'])}" if a["cluster"] else "") + "<ul>")
        parts += [f"<li>{_e(r['detail'])}" + (f" <small>({_p_phrase(r['p_value'])})</small>"
                                                 if r["p_value"] is not None and r["signal"] != "repeated_runs" else "")
                  for r in a["reasons"][:8]]
        parts.append("</ul><div class=plots>")
        if p:
            parts.append(_bars(p["hour_histogram"], label="requests by hour of day (UTC)"))
            parts.append(_line(p["coverage_growth"], label="coverage growth: distinct prompts vs queries"))
        parts.append("</div></div>")
    others = [a for a in data["accounts"] if not a["flagged"]][:50]
    parts.append("<h2>Highest-scoring accounts not flagged</h2><table><tr><th>account<th>status<th class=num>"
                 "p-value<th class=num>queries<th>strongest evidence</tr>")
    for a in others:
        detail = a["reasons"][0]["detail"] if a["reasons"] else ""
        parts.append(f"<tr><td>{_e(a['account'])}<td>{_e(a['status'])}<td class=num>{_p(a['p_value'])}"
                     f"<td class=num>{a['queries']:,}<td>{_e(detail)}</tr>")
    parts.append("</table></html>")
    return "\n".join(parts)


def write_scan_html(result: ScanResult, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(render_scan_html(result), encoding="utf-8")
