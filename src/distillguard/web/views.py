"""HTML of the dashboard's pages: plain strings, every value through ``html.escape``, inline SVG
plots (the scan report's helpers), no JavaScript."""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any, Sequence
from urllib.parse import quote

from distillguard.detect.text import AREA_LIST
from distillguard.report.scan_html import _CSS, _bars, _p
from distillguard.web.queries import ACTIONS, CADENCE_LABELS

_EXTRA_CSS = """
nav{display:flex;gap:1.2rem;align-items:center;border-bottom:1px solid #dde;padding-bottom:.6rem}
nav form{display:inline;margin:0}nav .right{margin-left:auto;display:flex;gap:.6rem;align-items:center}
button{cursor:pointer}.pill{padding:.05rem .45rem;border-radius:9px;background:#eef;font-size:12px}
.pill.block{background:#fbe0de}.pill.throttle{background:#fff1cc}.pill.allowlist,.pill.false_positive{background:#dff3e2}
pre{white-space:pre-wrap;background:#f7f7fa;padding:.4rem .6rem;border-radius:6px;margin:.3rem 0;font-size:12px}
.num{white-space:nowrap}.error{color:#b3261e}form.actions{display:flex;gap:.5rem;flex-wrap:wrap;align-items:center}
.notice{padding:.5rem .8rem;border-radius:6px;margin:.6rem 0;background:#dff3e2}.notice.error{background:#fbe0de}
.pill.open{background:#fff1cc}.pill.upheld{background:#fbe0de}.pill.lifted{background:#dff3e2}
"""


def e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def url(kind: str, name: str) -> str:
    return f"/{kind}/{quote(name, safe='')}"


def page(title: str, body: str, *, user: str | None = None, csrf: str | None = None, banner: str = "",
         notice: tuple[str, bool] | None = None) -> str:
    nav = ""
    if user is not None:
        nav = (f"<nav><b>distillguard</b><a href='/accounts'>Accounts</a><a href='/clusters'>Clusters</a>"
               f"<a href='/appeals'>Appeals</a><a href='/audit'>Audit log</a><span class=right><small>{e(banner)}</small>"
               f"<form method=post action='/refresh'>{hidden_csrf(csrf)}<button>Re-scan</button></form>"
               f"<form method=post action='/logout'>{hidden_csrf(csrf)}<button>Log out {e(user)}</button></form>"
               f"</span></nav>")
    if notice is not None:
        text, failed = notice
        nav += f"<p id=notice class='notice{' error' if failed else ''}' role={'alert' if failed else 'status'}>" \
               f"{e(text)}</p>"
    return (f"<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>{e(title)} · distillguard</title><style>{_CSS}{_EXTRA_CSS}</style>{nav}{body}</html>")


def hidden_csrf(token: str | None) -> str:
    return f"<input type=hidden name=csrf value='{e(token)}'>"


def login_page(token: str, error: str = "", next_path: str = "/accounts") -> str:
    err = f"<p class=error role=alert>{e(error)}</p>" if error else ""
    action = "/login" + ("" if next_path == "/accounts" else f"?next={quote(next_path, safe='')}")
    return page("Log in", f"<h1>distillguard dashboard</h1>{err}<form method=post action='{e(action)}'>"
                          f"{hidden_csrf(token)}<p><label>Analyst name <input name=user value='analyst' "
                          f"autocomplete=username></label></p><p><label>Password <input type=password name=password "
                          f"autocomplete=current-password autofocus></label></p><p><button>Log in</button></p></form>")


def error_page(code: int, title: str, detail: str, **chrome: Any) -> str:
    return page(title, f"<h1>{code} · {e(title)}</h1><p>{e(detail)}</p><p><a href='/accounts'>Back to the "
                       f"ranked accounts</a></p>", **chrome)


def push_notice(entry: dict[str, Any]) -> tuple[str, bool]:
    """(text, failed) about one audit row just written: recorded, and whether the gateway took it."""
    what = f"{entry['action'].replace('_', ' ')} on {entry['target_kind']} {entry['target']}"
    pushed = entry.get("pushed")
    if pushed is None:
        return f"Recorded {what} as audit entry #{entry['id']}.", False
    if pushed == "sent":
        return f"Recorded {what} as audit entry #{entry['id']}; the gateway applied it.", False
    if pushed == "pending":
        return f"Recorded {what} as audit entry #{entry['id']}; the gateway has not answered yet.", True
    return (f"Recorded {what} as audit entry #{entry['id']}, but the gateway did not apply it "
            f"({pushed.removeprefix('failed: ')}). Try again when it is back.", True)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(float(epoch), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _state(action: str | None) -> str:
    return f"<span class='pill {e(action)}'>{e(action.replace('_', ' '))}</span>" if action else ""


def _cards(summary: dict[str, Any], events: int) -> str:
    items = (("events", f"{events:,}"), ("accounts", f"{summary['accounts_scanned']:,}"),
             ("campaigns", summary["campaigns"]), ("accounts flagged", summary["accounts_flagged"]),
             ("clusters flagged", summary["clusters_flagged"]),
             ("output tokens extracted", f"{summary['tokens_extracted']:,}"),
             ("estimated value", f"${summary['estimated_cost_usd']:,.2f}"))
    return "<div>" + "".join(f"<div class=card><b>{e(v)}</b>{e(k)}</div>" for k, v in items) + "</div>"


def accounts_page(rows: Sequence[dict[str, Any]], summary: dict[str, Any], events: int, states: dict[str, str],
                  *, total: int, **chrome: Any) -> str:
    out = [f"<h1>Accounts by risk</h1>{_cards(summary, events)}",
           f"<p><small>{len(rows):,} of {total:,} accounts, flagged first, then by p-value.</small></p>",
           "<table id=accounts><tr><th>account<th>status<th class=num>risk<th class=num>p-value<th class=num>queries"
           "<th class=num>output tokens<th>cluster<th>action<th>strongest reasons</tr>"]
    for a in rows:
        status = "<span class=flag>flagged</span>" if a["flagged"] else e(a["status"])
        cluster = f"<a href='{url('clusters', a['cluster'])}'>{e(a['cluster'])}</a>" if a["cluster"] else ""
        reasons = "<br>".join(e(r["detail"]) for r in a["reasons"][:2])
        out.append(f"<tr><td><a href='{url('accounts', a['account'])}'>{e(a['account'])}</a><td>{status}"
                   f"<td class=num>{a['score']:.2f}<td class=num>{_p(a['p_value'])}<td class=num>{a['queries']:,}"
                   f"<td class=num>{a['completion_tokens']:,}<td>{cluster}<td>{_state(states.get(a['account']))}"
                   f"<td>{reasons}</tr>")
    out.append("</table>")
    return page("Accounts", "".join(out), **chrome)


def clusters_page(rows: Sequence[dict[str, Any]], states: dict[str, str], **chrome: Any) -> str:
    out = ["<h1>Clusters of linked accounts</h1>"]
    if not rows:
        out.append("<p>No linked account clusters.</p>")
    else:
        out.append("<table id=clusters><tr><th>cluster<th>verdict<th class=num>accounts<th class=num>risk"
                   "<th class=num>p-value<th class=num>queries<th class=num>attribution confidence<th>action"
                   "<th>evidence</tr>")
        for c in rows:
            verdict = "<span class=flag>flagged</span>" if c["flagged"] else "<span class=ok>clear</span>"
            out.append(f"<tr><td><a href='{url('clusters', c['cluster'])}'>{e(c['cluster'])}</a><td>{verdict}"
                       f"<td class=num>{len(c['accounts'])}<td class=num>{c['score']:.2f}<td class=num>"
                       f"{_p(c['p_value'])}<td class=num>{c['queries']:,}<td class=num>"
                       f"{c['attribution_confidence']:.2f}<td>{_state(states.get(c['cluster']))}<td>"
                       + "<br>".join(e(r["detail"]) for r in c["reasons"][:3]) + "</tr>")
        out.append("</table>")
    return page("Clusters", "".join(out), **chrome)


def _series(values: Sequence[int], labels: Sequence[str], *, label: str, width: int = 640, height: int = 110,
            color: str = "#5472d3") -> str:
    """Bars with a first and last axis label; a title on each bar."""
    if not values:
        return ""
    peak = max(values) or 1
    bw = (width - 10) / len(values)
    bars = "".join(f'<rect x="{5 + i * bw:.1f}" y="{height - 16 - v / peak * (height - 30):.1f}" '
                   f'width="{max(bw - 1, 0.5):.1f}" height="{v / peak * (height - 30):.1f}" fill="{color}">'
                   f'<title>{e(labels[i])}: {v:,}</title></rect>' for i, v in enumerate(values))
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{e(label)}"><text x="0" y="10" '
            f'font-size="10">{e(label)} (max {peak:,})</text>{bars}<text x="5" y="{height - 3}" font-size="10">'
            f'{e(labels[0])}</text><text x="{width - 5}" y="{height - 3}" font-size="10" text-anchor="end">'
            f'{e(labels[-1])}</text></svg>')


def _action_form(kind: str, target: str, csrf: str | None) -> str:
    buttons = "".join(f"<button name=action value='{a}'>{e(a.replace('_', ' '))}</button>" for a in ACTIONS)
    return (f"<form method=post action='/actions' class=actions>{hidden_csrf(csrf)}"
            f"<input type=hidden name=target_kind value='{e(kind)}'><input type=hidden name=target value='{e(target)}'>"
            f"<input name=note placeholder='note (why)' size=40 maxlength=500>{buttons}</form>")


def _pushed(pushed: str | None) -> str:
    if pushed is None:
        return ""
    if pushed == "sent":
        return "<span class=ok>sent</span>"
    return f"<span class=error>{e(pushed)}</span>"


def _target_link(kind: str, target: str) -> str:
    href = "/appeals#" + quote(target, safe="") if kind == "appeal" else url(
        "accounts" if kind == "account" else "clusters", target)
    return f"<a href='{e(href)}'>{e(kind)} {e(target)}</a>"


def _history(entries: Sequence[dict[str, Any]], *, with_target: bool = False, gateway: bool = False) -> str:
    if not entries:
        return "<p>No actions yet.</p>"
    head = "<th>target" if with_target else ""
    gateway = gateway or any(x.get("pushed") is not None for x in entries)
    rows = []
    for x in entries:
        target = f"<td>{_target_link(x['target_kind'], x['target'])}" if with_target else ""
        ts = x["ts"].strftime("%Y-%m-%d %H:%M:%S") if isinstance(x["ts"], datetime) else x["ts"]
        pushed = f"<td>{_pushed(x.get('pushed'))}" if gateway else ""
        rows.append(f"<tr><td class=num>{x['id']}<td>{e(ts)}Z<td>{e(x['analyst'])}{target}<td>{_state(x['action'])}"
                    f"<td>{e(x['note'])}{pushed}<td><small>{e(x['client'])}</small></tr>")
    return (f"<table class=audit><tr><th class=num>#<th>when (UTC)<th>analyst{head}<th>action<th>note"
            f"{'<th>gateway' if gateway else ''}<th>from</tr>" + "".join(rows) + "</table>")


def _intel(intel: dict[str, Any] | None) -> str:
    """Peers' indicators this account matched (scan with --intel)."""
    if not intel:
        return ""
    rows = "".join(f"<tr><td>{e(m['peer'])}<td>{e(m['kind'])}<td>{e(m['campaign'] or m['campaign_id'] or '')}"
                   f"<td class=num>{e(m['confidence'])}<td class=num>{m['weight']:.2f}<td>{e(m['tlp'])}</tr>"
                   for m in intel["matches"])
    return (f"<h2>Peer intel</h2><p id=intel>Score {intel['score']:.2f}"
            f"{' — flagged by intel' if intel['flagged'] else ''}</p><table><tr><th>peer<th>indicator kind<th>campaign"
            f"<th class=num>confidence<th class=num>weight<th>TLP</tr>{rows}</table>")


def _decisions(rows: Sequence[tuple[str, bool, int, datetime]]) -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><td>{_state(action)}<td>{'enforced' if enforced else 'shadow'}<td class=num>{n:,}"
                   f"<td>{e(last.strftime('%Y-%m-%d %H:%M:%S'))}Z</tr>" for action, enforced, n, last in rows)
    return ("<h2>Gateway decisions</h2><table id=decisions><tr><th>action<th>mode<th class=num>requests"
            f"<th>last</tr>{body}</table>")


def coverage_svg(points: Sequence[tuple[int, int]], band: Sequence[tuple[int, float, float, float, int]],
                 *, width: int = 560, height: int = 190) -> str:
    """The account's capability areas vs queries (red) over organic accounts' 10–90 % band (grey)
    and median (dashed); queries on a log scale."""
    if not points:
        return ""
    areas = len(AREA_LIST)
    xmax = max([p[0] for p in points] + [b[0] for b in band] + [10])
    left, right, top, bottom = 26, 10, 32, 30

    def x(n: float) -> float:
        return left + math.log10(max(n, 1)) / math.log10(xmax) * (width - left - right)

    def y(v: float) -> float:
        return height - bottom - v / areas * (height - top - bottom)

    parts = []
    if len(band) >= 2:
        upper = " ".join(f"{x(n):.1f},{y(p90):.1f}" for n, _, _, p90, _ in band)
        lower = " ".join(f"{x(n):.1f},{y(p10):.1f}" for n, p10, _, _, _ in reversed(band))
        parts.append(f'<polygon points="{upper} {lower}" fill="#dfe3ee"><title>organic accounts (unflagged): '
                     f'10–90 % of areas covered</title></polygon>')
        median = " ".join(f"{x(n):.1f},{y(p50):.1f}" for n, _, p50, _, _ in band)
        parts.append(f'<polyline class=median points="{median}" fill="none" stroke="#5c6784" stroke-dasharray="4 3"/>')
    line = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in points)
    parts.append(f'<polyline class=account points="{line}" fill="none" stroke="#b3261e" stroke-width="2"/>')
    parts += [f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="2.5" fill="#b3261e"><title>{v} areas in the first '
              f'{n:,} queries</title></circle>' for n, v in points]
    ticks = [t for t in (1, 10, 100, 1000) if t <= xmax]
    parts += [f'<text x="{x(t):.1f}" y="{height - bottom + 12}" font-size="9" text-anchor="middle">{t}</text>'
              for t in ticks]
    parts.append(f'<text x="{left - 4}" y="{y(areas) + 4:.1f}" font-size="9" text-anchor="end">{areas}</text>'
                 f'<text x="{left - 4}" y="{y(0):.1f}" font-size="9" text-anchor="end">0</text>')
    return (f'<svg id=coverage width="{width}" height="{height}" role="img" aria-label="coverage growth">'
            f'<text x="0" y="10" font-size="10">coverage growth: capability areas (of {areas}) among the first n '
            f'queries</text><text x="0" y="23" font-size="10"><tspan fill="#b3261e">red: this account</tspan>; grey '
            f'band: organic accounts 10–90 %; dashed: their median</text>{"".join(parts)}<text x="{width - right}" y="{height - 4}" '
            f'font-size="9" text-anchor="end">queries (log)</text></svg>')


def account_page(a: dict[str, Any], *, unit: str, timeline: Sequence[tuple[datetime, int, int]],
                 cadence: Sequence[int], samples: Sequence[tuple[datetime, str]], plots: dict[str, list],
                 state: str | None, history: Sequence[dict[str, Any]], csrf: str | None,
                 decisions: Sequence[tuple[str, bool, int, datetime]] = (),
                 coverage: Sequence[tuple[int, int]] = (),
                 band: Sequence[tuple[int, float, float, float, int]] = (), **chrome: Any) -> str:
    fmt = "%Y-%m-%d" if unit == "day" else "%m-%d %H:00"
    labels = [t.strftime(fmt) for t, _, _ in timeline]
    verdict = "<span class=flag>flagged</span>" if a["flagged"] else e(a["status"])
    cluster = f", cluster <a href='{url('clusters', a['cluster'])}'>{e(a['cluster'])}</a>" if a["cluster"] else ""
    out = [f"<h1>Account {e(a['account'])} {_state(state)}</h1>",
           f"<p>{verdict} — risk {a['score']:.2f}, p-value {_p(a['p_value'])}, {a['queries']:,} queries, "
           f"{a['completion_tokens']:,} output tokens, top area {e(a['top_area'])}, {e(a['first_seen'])} → "
           f"{e(a['last_seen'])}{cluster}</p>",
           "<h2>Reasons</h2>" + ("<ul id=reasons>" + "".join(f"<li>{e(r['detail'])}" for r in a["reasons"]) + "</ul>"
                                 if a["reasons"] else "<p>No signal stands out.</p>"),
           _intel(a.get("intel")), _decisions(decisions),
           f"<h2>Act</h2>{_action_form('account', a['account'], csrf)}",
           f"<h2>Timeline (per {unit})</h2><div class=plots>",
           _series([r for _, r, _ in timeline], labels, label=f"requests per {unit}"),
           _series([t for _, _, t in timeline], labels, label=f"output tokens per {unit}", color="#b3261e"),
           "</div><h2>Cadence</h2><div class=plots>",
           _series(list(cadence), CADENCE_LABELS, label="gaps between consecutive requests", width=420,
                   color="#6a4fb3")]
    if plots:
        out.append(_bars(plots["hour_histogram"], label="requests by hour of day (UTC)"))
    out.append("</div>")
    if coverage:
        out.append(f"<h2>Coverage growth</h2><div class=plots>{coverage_svg(coverage, band)}</div>")
    out.append("<h2>Sample prompts (earliest)</h2>")
    out += [f"<p><small>{e(ts.strftime('%Y-%m-%d %H:%M:%S'))}Z</small><pre>{e(text)}</pre>" for ts, text in samples]
    out.append(f"<h2>Actions on this account</h2>{_history(history)}")
    return page(f"Account {a['account']}", "".join(out), csrf=csrf, **chrome)


def link_graph_svg(members: Sequence[dict[str, Any]], edges: Sequence[tuple[str, str, list[str]]],
                   size: int = 460) -> str:
    """Members on a circle (red: flagged), a line per link titled with its kinds; nodes link to accounts."""
    if not members:
        return ""
    import math

    n = len(members)
    r = size / 2 - 40
    pos = {m["account"]: (size / 2 + r * math.cos(2 * math.pi * i / n - math.pi / 2),
                          size / 2 + r * math.sin(2 * math.pi * i / n - math.pi / 2)) for i, m in enumerate(members)}
    lines = "".join(
        f'<line x1="{pos[a][0]:.1f}" y1="{pos[a][1]:.1f}" x2="{pos[b][0]:.1f}" y2="{pos[b][1]:.1f}" '
        f'stroke="#8892b0" stroke-opacity=".45" stroke-width="{1 + len(kinds) / 3:.1f}"><title>{e(a)} – {e(b)}: '
        f'{e(", ".join(kinds))}</title></line>' for a, b, kinds in edges if a in pos and b in pos)
    nodes = []
    for m in members:
        x, y = pos[m["account"]]
        label = (f'<text x="{x:.1f}" y="{y - 9:.1f}" font-size="9" text-anchor="middle">{e(m["account"][-6:])}</text>'
                 if n <= 24 else "")
        nodes.append(f'<a href="{url("accounts", m["account"])}"><circle cx="{x:.1f}" cy="{y:.1f}" r="6" '
                     f'fill="{"#b3261e" if m["flagged"] else "#2e7d32"}"><title>{e(m["account"])}: '
                     f'{m["queries"]:,} queries</title></circle>{label}</a>')
    return (f'<svg id=link-graph width="{size}" height="{size}" role="img" aria-label="linked accounts">'
            f'<text x="0" y="10" font-size="10">{n} accounts, {len(edges)} links (hover a line for its '
            f'evidence)</text>{lines}{"".join(nodes)}</svg>')


def cluster_page(c: dict[str, Any], members: Sequence[dict[str, Any]], *, state: str | None,
                 member_states: dict[str, str], history: Sequence[dict[str, Any]], csrf: str | None,
                 edges: Sequence[tuple[str, str, list[str]]] = (), **chrome: Any) -> str:
    verdict = "<span class=flag>flagged</span>" if c["flagged"] else "<span class=ok>clear</span>"
    links = ", ".join(f"{e(k)}: {v}" for k, v in c["links"].items())
    out = [f"<h1>Cluster {e(c['cluster'])} {_state(state)}</h1>",
           f"<p>{verdict} — {len(c['accounts'])} accounts, risk {c['score']:.2f}, p-value {_p(c['p_value'])}, "
           f"{c['queries']:,} queries, {c['completion_tokens']:,} output tokens, attribution confidence "
           f"{c['attribution_confidence']:.2f} (links: {links})</p>",
           "<h2>Evidence</h2><ul>" + "".join(f"<li>{e(r['detail'])}" for r in c["reasons"]) + "</ul>",
           f"<h2>Act on the cluster</h2>{_action_form('cluster', c['cluster'], csrf)}",
           f"<h2>Link graph</h2>{link_graph_svg(members, edges)}",
           "<h2>Member accounts</h2><table><tr><th>account<th>status<th class=num>queries<th class=num>output tokens"
           "<th>action</tr>"]
    for m in members:
        out.append(f"<tr><td><a href='{url('accounts', m['account'])}'>{e(m['account'])}</a><td>"
                   f"{'<span class=flag>flagged</span>' if m['flagged'] else e(m['status'])}<td class=num>"
                   f"{m['queries']:,}<td class=num>{m['completion_tokens']:,}<td>{_state(member_states.get(m['account']))}"
                   f"</tr>")
    out.append(f"</table><h2>Actions on this cluster</h2>{_history(history)}")
    return page(f"Cluster {c['cluster']}", "".join(out), csrf=csrf, **chrome)


def audit_page(entries: Sequence[dict[str, Any]], gateway: bool = False, **chrome: Any) -> str:
    return page("Audit log", "<h1>Audit log</h1><p><small>Every action taken in the dashboard, newest first. "
                             "Allowlisted accounts and false positives are scanned as authorised on the next "
                             "re-scan." + (" The gateway column says whether the gateway applied the action."
                                           if gateway else "") + "</small></p>"
                + _history(entries, with_target=True, gateway=gateway), **chrome)


_NO_GATEWAY = ("<p id=no-gateway>Appeals are filed by blocked users at the gateway "
               "(<code>POST /v1/appeals</code> with their own API key) and kept there. Connect the dashboard to it "
               "to see and decide them:</p><pre>distillguard web --db events.duckdb --gateway http://127.0.0.1:8080 "
               "--gateway-token-file admin-token.txt</pre><p><small>The token file holds the gateway's admin token "
               "(its <code>--admin-token</code>); actions taken here are then applied at the gateway too.</small></p>")


def appeals_page(data: dict[str, Any] | None, accounts: dict[str, dict[str, Any]], states: dict[str, str],
                 *, error: str | None, csrf: str | None, **chrome: Any) -> str:
    out = ["<h1>Appeals</h1>"]
    if error is not None:
        out.append(f"<p class='notice error' role=alert>The gateway could not be read: {e(error)}</p>")
        return page("Appeals", "".join(out), csrf=csrf, **chrome)
    if data is None:
        return page("Appeals", "".join(out) + _NO_GATEWAY, csrf=csrf, **chrome)
    counts = data.get("counts", {})
    out.append("<div>" + "".join(f"<div class=card><b>{int(counts.get(k, 0)):,}</b>{k}</div>"
                                 for k in ("open", "upheld", "lifted")) + "</div>")
    rows = data.get("appeals", [])
    if not rows:
        out.append("<p>No appeals yet.</p>")
        return page("Appeals", "".join(out), csrf=csrf, **chrome)
    out.append("<p><small>Open appeals first, oldest first; risk and reasons are from the dashboard's scan. "
               "<b>Lift</b> removes the block at the gateway (an operator allow) and marks the account a false "
               "positive here; <b>uphold</b> keeps it (the user may appeal again after 24 h).</small></p>"
               "<table id=appeals><tr><th>appeal<th>account<th>status<th class=num>risk<th>why the gateway refused"
               "<th>message<th>decision</tr>")
    for x in rows:
        name = str(x.get("account", ""))
        a = accounts.get(name)
        account = (f"<a href='{url('accounts', name)}'>{e(name)}</a> {_state(states.get(name))}" if a is not None
                   else f"{e(name)} <small>(not in the scanned store)</small>")
        risk = (f"{'<span class=flag>flagged</span> ' if a['flagged'] else ''}{a['score']:.2f}<br><small>p "
                f"{_p(a['p_value'])}</small>" if a is not None else "")
        reasons = "<br>".join(f"<small>{e(r['detail'])}</small>" for r in (a or {}).get("reasons", [])[:2])
        standing = x.get("standing") or {}
        grounds = []
        if standing.get("manual"):
            grounds.append(f"operator {e(standing['manual'].get('action'))}: {e(standing['manual'].get('reason'))}")
        if standing.get("refusal"):
            grounds.append(f"{e(standing['refusal'].get('action'))} ({e(', '.join(standing['refusal'].get('codes', [])))})")
        status = str(x.get("status", ""))
        if status == "open":
            decision = (f"<form method=post action='/appeals/{e(quote(str(x['id']), safe=''))}/decision' "
                        f"class=actions>{hidden_csrf(csrf)}<input name=note placeholder='answer to the user' size=24 "
                        f"maxlength=500><button name=decision value=uphold>uphold</button>"
                        f"<button name=decision value=lift>lift</button></form>")
        else:
            decision = (f"{_when(x.get('decided_at'))} by {e(x.get('analyst') or '—')}"
                        + (f"<br><small>{e(x.get('note'))}</small>" if x.get("note") else ""))
        out.append(f"<tr id='{e(x['id'])}'><td>{e(x['id'])}<br><small>{_when(x.get('created_at'))}</small><td>{account}"
                   f"<td><span class='pill {e(status)}'>{e(status)}</span><td class=num>{risk}"
                   f"<td>{'<br>'.join(grounds)}{'<br>' if grounds and reasons else ''}{reasons}"
                   f"<td><pre>{e(x.get('message'))}</pre><td>{decision}</tr>")
    out.append("</table>")
    return page("Appeals", "".join(out), csrf=csrf, **chrome)
