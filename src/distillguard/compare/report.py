"""The evidence report of ``compare``: JSON (``CompareResult.to_dict``) and a self-contained HTML
page (inline SVG, no JavaScript, no external assets) in the style of the scan report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

from distillguard.report.scan_html import _CSS, _e

_EXTRA_CSS = """
.verdict{border:2px solid #2e7d32;border-radius:10px;padding:1rem 1.2rem;margin:1rem 0}
.verdict.hit{border-color:#b3261e}.pair{display:grid;grid-template-columns:1fr 1fr 1fr;gap:.8rem}
.pair pre{white-space:pre-wrap;background:#f7f7fb;padding:.5rem;border-radius:6px;margin:0;font-size:12px}
.skip{color:#888}
"""


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "&lt; 1e-300" if p <= 0 else f"{p:.2g}"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def _pvalue_bars(tests: list[dict[str, Any]], alpha: float, width: int = 520) -> str:
    """−log10 p per test, with the alpha line: how far past the threshold each test is."""
    rows = [t for t in tests if t["p_value"] is not None]
    if not rows:
        return ""
    values = [min(12.0, -math.log10(max(t["p_value"], 1e-300))) for t in rows]
    top = max(max(values), -math.log10(alpha)) * 1.1
    height = 22 * len(rows) + 30
    label_w = 130
    scale = (width - label_w - 60) / top
    bars = []
    for i, (t, v) in enumerate(zip(rows, values)):
        y = 10 + 22 * i
        colour = "#b3261e" if t["p_value"] <= alpha else "#5472d3"
        bars.append(f'<text x="0" y="{y + 13}" font-size="11">{_e(t["name"])}</text>'
                    f'<rect x="{label_w}" y="{y}" width="{max(1.0, v * scale):.1f}" height="16" fill="{colour}">'
                    f'<title>{_e(t["title"])}: p = {t["p_value"]:.2g}</title></rect>'
                    f'<text x="{label_w + max(1.0, v * scale) + 4:.1f}" y="{y + 13}" font-size="10">'
                    f'{_p(t["p_value"])}</text>')
    ax = label_w + -math.log10(alpha) * scale
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="p-values">{"".join(bars)}'
            f'<line x1="{ax:.1f}" x2="{ax:.1f}" y1="4" y2="{height - 14}" stroke="#b3261e" stroke-dasharray="4 3"/>'
            f'<text x="{ax + 3:.1f}" y="{height - 2}" font-size="10">alpha = {alpha:g} (−log10 p →, unadjusted)'
            f'</text></svg>')


def _margin_bars(per_probe: list[dict[str, Any]], width: int = 520, height: int = 120) -> str:
    """Per-probe margin of the suspect over the references (embedding cosine), sorted."""
    rows = sorted((r for r in per_probe if r.get("embedding_margin") is not None),
                  key=lambda r: -r["embedding_margin"])
    if not rows:
        return ""
    peak = max(abs(r["embedding_margin"]) for r in rows) or 1.0
    mid = height / 2
    bw = width / len(rows)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{min(mid, mid - r["embedding_margin"] / peak * (mid - 12)):.1f}" '
        f'width="{max(1.0, bw - 1):.1f}" height="{abs(r["embedding_margin"]) / peak * (mid - 12):.1f}" '
        f'fill="{"#b3261e" if r["embedding_margin"] > 0 else "#9aa5c9"}"><title>{_e(r["probe"])} ({_e(r["suite"])}): '
        f'{r["embedding_margin"]:+.3f}</title></rect>' for i, r in enumerate(rows))
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="per-probe margins">{bars}'
            f'<line x1="0" x2="{width}" y1="{mid}" y2="{mid}" stroke="#999"/>'
            f'<text x="0" y="10" font-size="10">suspect closer to the protected model than the references ↑ '
            f'(embedding cosine, per probe, sorted)</text></svg>')


def render_compare_html(data: dict[str, Any]) -> str:
    v = data["verdict"]
    roles = {m["role"]: m for m in data["models"]}
    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><title>distillguard compare</title>"
             f"<style>{_CSS}{_EXTRA_CSS}</style>", "<h1>Does the suspect mirror the protected model?</h1>",
             f"<p><small>protected: {_e(roles['protected']['location'])} · suspect: "
             f"{_e(roles['suspect']['location'])} · references: "
             f"{_e(', '.join(m['location'] for m in data['models'] if m['role'] == 'reference') or 'none')} · "
             f"{data['probes']['count']} probes ({_e(', '.join(data['probes']['suites']))}) × "
             f"{data['settings']['samples']} samples, temperature {data['settings']['temperature']}, "
             f"embedder {_e(data['settings']['embedder'])}</small></p>",
             f"<div class='verdict{' hit' if v['distilled'] else ''}'><b>{_e(v['finding'])}</b><br>"
             f"confidence {_num(v['confidence'], 4)} (1 − p) · alpha {v['alpha']} · <small>{_e(v['method'])}"
             "</small></div><div>"]
    for label, value in (("p-value (Holm)", _p(v["p_value"])), ("queries to the suspect",
                                                                f"{data['queries'].get(roles['suspect']['label'], 0):,}"),
                         ("tests run", sum(t["skipped"] is None for t in data["tests"]))):
        parts.append(f"<div class=card><b>{value}</b>{_e(label)}</div>")
    parts.append("</div><h2>Tests</h2><table><tr><th>test<th>question<th class=num>statistic<th class=num>p<th "
                 "class=num>p (Holm)<th class=num>effect size<th>stands out</tr>")
    for t in data["tests"]:
        if t["skipped"]:
            parts.append(f"<tr class=skip><td>{_e(t['title'])}<td>{_e(t['question'])}<td colspan=5>skipped: "
                         f"{_e(t['skipped'])}</tr>")
            continue
        stands = {None: "–", True: "yes", False: "no"}[t["stands_out"]]
        parts.append(f"<tr><td>{_e(t['title'])}{'' if t['in_verdict'] else ' <small>(not in verdict)</small>'}"
                     f"<td>{_e(t['question'])}<td class=num title='{_e(t['statistic_name'])}'>{_num(t['statistic'])}"
                     f"<td class=num>{_p(t['p_value'])}<td class=num>{_p(t['p_value_holm'])}"
                     f"<td class=num title='{_e(t['effect_name'])}'>{_num(t['effect_size'])}<td>{stands}</tr>")
    parts.append("</table><div class=plots>" + _pvalue_bars(data["tests"], v["alpha"])
                 + _margin_bars(data.get("per_probe", [])) + "</div>")
    parts.append("<h2>Where the suspect agrees with the protected model most unusually</h2>")
    for ex in data["examples"]:
        parts.append(f"<div class=acct><b>{_e(ex['probe'])}</b> ({_e(ex['suite'])}): {_e(ex['prompt'])} "
                     f"<small>margin {ex['margin']:+.3f}, cosine {ex['cosine']:.3f}</small><div class=pair>"
                     f"<div><small>protected</small><pre>{_e(ex['protected'])}</pre></div>"
                     f"<div><small>suspect</small><pre>{_e(ex['suspect'])}</pre></div>"
                     f"<div><small>a reference</small><pre>{_e(ex['reference'] or '–')}</pre></div></div></div>")
    if data["shared_phrases"]:
        parts.append("<h2>Phrases only the suspect shares with the protected model</h2><p>"
                     + ", ".join(f"“{_e(p['phrase'])}” ({p['probes']})" for p in data["shared_phrases"]) + "</p>")
    parts.append("<h2>Caveats</h2><ul>" + "".join(f"<li>{_e(c)}" for c in data["caveats"]) + "</ul></html>")
    return "\n".join(parts)


def write_reports(data: dict[str, Any], *, json_path: str | Path | None = None,
                  html_path: str | Path | None = None) -> None:
    for path, body in ((json_path, lambda: orjson.dumps(data, option=orjson.OPT_INDENT_2)),
                       (html_path, lambda: render_compare_html(data).encode("utf-8"))):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(body())
