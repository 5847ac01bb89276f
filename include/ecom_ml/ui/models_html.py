"""HTML of the Models view: the page, its trend chart and the report pages, rendered on the server.

No JavaScript and no external assets: the machine may be offline and Airflow's UI shows the page in
a sandboxed iframe. Everything here is a pure function of what ``ecom_ml.ui.models_data`` gathered
and of the app's :class:`Links`, so the routes in ``ecom_ml.ui.models_app`` stay thin.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from ecom_ml.gate import format_number as fmt
from ecom_ml.ui import models_data as data
from ecom_ml.ui.models_data import ModelSection, ModelView, Overview, QualitySection




@dataclass(frozen=True)
class Links:
    """Paths of the app's pages for this request (under whatever prefix Airflow mounted it at)."""

    url_for: Callable[..., Any]

    def page(self) -> str:
        return self.url_for("models_page").path

    def gate(self, model: str, version: int) -> str:
        return self.url_for("gate_report_page", model=model, version=str(version)).path

    def gate_json(self, model: str, version: int) -> str:
        return self.url_for("gate_report_api", model=model, version=str(version)).path

    def quality(self, day: str, zone: str | None = None) -> str:
        path = self.url_for("quality_report_page", day=day).path
        return f"{path}?zone={zone}" if zone else path

    def quality_json(self, day: str) -> str:
        return self.url_for("quality_report_api", day=day).path

    def api(self) -> str:
        return self.url_for("models_api").path


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


CSS = """
:root { color-scheme: light; --fg:#1f2328; --muted:#59636e; --border:#d1d9e0; --panel:#f6f8fa;
  --pass:#1a7f37; --fail:#cf222e; --warn:#9a6700; --accent:#0969da; }
* { box-sizing: border-box; }
body { margin:0; padding:16px 20px 40px; background:#fff; color:var(--fg);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
h1 { font-size:20px; margin:0 0 2px; } h2 { font-size:17px; margin:28px 0 10px; padding-bottom:4px;
  border-bottom:1px solid var(--border); } h3 { font-size:14px; margin:18px 0 6px; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
.muted { color:var(--muted); } .small { font-size:12px; } code { font-size:12px; background:var(--panel);
  padding:0 4px; border-radius:4px; }
nav.toc a { margin-right:14px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--border); vertical-align:top; }
th { background:var(--panel); font-weight:600; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.day { white-space:nowrap; }
tr.is-champion td { background:#fff8e1; }
.badge { display:inline-block; padding:0 8px; border-radius:10px; font-size:12px; font-weight:600;
  line-height:18px; border:1px solid currentColor; white-space:nowrap; }
.badge.passed, .badge.pass { color:var(--pass); background:#dafbe1; }
.badge.failed, .badge.error { color:var(--fail); background:#ffebe9; }
.badge.warning { color:var(--warn); background:#fff8c5; }
.badge.unknown, .badge.unreadable { color:var(--muted); background:var(--panel); }
.badge.champion { color:#7d4e00; background:#fff1c2; }
.cards { display:flex; flex-wrap:wrap; gap:16px; align-items:stretch; }
.card { border:1px solid var(--border); border-radius:6px; padding:12px 14px; flex:1 1 300px; min-width:0; }
.card.chart { flex:2 1 520px; }
.label { font-size:12px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
.big { font-size:26px; font-weight:700; }
dl { display:grid; grid-template-columns:max-content 1fr; gap:2px 12px; margin:8px 0; }
dt { color:var(--muted); } dd { margin:0; overflow-wrap:anywhere; }
.msg { padding:6px 10px; border-radius:6px; background:var(--panel); border:1px solid var(--border); margin:6px 0; }
.msg.err { background:#ffebe9; border-color:#ffcecb; color:#82071e; }
svg { max-width:100%; height:auto; display:block; }
svg text { font:11px system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; fill:#59636e; }
.report table { width:auto; } .report h1 { font-size:18px; } .report h2 { font-size:16px; }
footer { margin-top:28px; }
"""


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _badge(text: str, kind: str | None = None, testid: str | None = None) -> str:
    attr = f' data-testid="{e(testid)}"' if testid else ""
    return f'<span class="badge {e(kind or text)}"{attr}>{e(text)}</span>'


def _msg(text: str, *, error: bool = False, testid: str = "message") -> str:
    return f'<p class="msg{" err" if error else ""}" data-testid="{e(testid)}">{e(text)}</p>'


def _external(url: str | None, text: str = "MLflow") -> str:
    # The UI's iframe is sandboxed without popups: the link works when the page is opened on its own.
    return f'<a href="{e(url)}" target="_blank" rel="noopener" title="{e(url)}">{e(text)}</a>' if url else ""


def render_overview(overview: Overview, links: Links) -> str:
    parts = [
        "<header><h1>Models</h1>",
        '<p class="muted small">Read-only: promotion happens in the training DAGs, rollback with '
        "<code>ecom-ml rollback --model … --reason …</code>. MLflow: "
        f'<code>{e(overview.mlflow_uri)}</code> · generated {e(overview.generated_at)} UTC · '
        f'<a href="{e(links.api())}">JSON</a></p></header>',
    ]
    toc = [f'<a href="#model-{e(m.name)}">{e(m.name)}</a>' for m in overview.models]
    toc.append('<a href="#data-quality">Data quality</a>')
    parts.append(f'<nav class="toc small">{"".join(toc)}</nav>')
    if overview.mlflow_error:
        parts.append(_msg(f"MLflow: {overview.mlflow_error}", error=True, testid="mlflow-error"))
    for section in overview.models:
        parts.append(_model_section(section, links))
    parts.append(_quality_section(overview.quality, links))
    parts.append('<footer class="muted small">Gate verdicts and thresholds: <code>ecom_ml/gates/&lt;model&gt;.yaml</code>; '
                 "history of promotions and rollbacks: <code>ecom-ml history --model …</code>.</footer>")
    return _document("Models · ecom-ml", "\n".join(parts))


def _model_section(section: ModelSection, links: Links) -> str:
    head = (f'<section class="model" id="model-{e(section.name)}" data-testid="model" data-model="{e(section.name)}">'
            f'<h2>{e(section.name)} <span class="muted small">training DAG <code>{e(section.dag_id)}</code></span></h2>')
    if not section.readable:
        return head + _msg(f"hidden: you may not read DAG {section.dag_id}", testid="model-hidden") + "</section>"
    if section.view is None:
        return head + _msg(f"cannot show {section.name}: {section.error}", error=True, testid="model-error") + "</section>"
    view = section.view
    gate = f" (gate <code>{e(view.gate_config)}</code>)" if view.gate_config else " (no gate config: default)"
    best = ""
    if view.best_baseline:
        best = (f' · best baseline <b>{e(view.best_baseline)}</b> {e(view.primary_metric)} '
                f'<span data-testid="best-baseline-value">{e(fmt(view.best_baseline_value))}</span>')
    direction = "higher" if view.higher_is_better else "lower"
    parts = [head, f'<p class="muted small">primary metric <b>{e(view.primary_metric)}</b> '
                   f'(<span data-testid="metric-direction">{direction} is better</span>){gate} · '
                   f"{view.total_versions} version(s) registered{best}</p>"]
    parts.append('<div class="cards">')
    parts.append(_champion_card(view, links))
    parts.append(f'<div class="card chart"><div class="label">Metric trend by training day '
                 f'({e(view.primary_metric)}: {direction} is better)</div>{trend_chart(view)}</div>')
    parts.append("</div>")
    parts.append(f"<h3>Recent candidates</h3>{_candidates_table(view, links)}")
    return "\n".join(parts) + "</section>"


#: Bookkeeping fields of an evaluation result (as in the gate report's metrics table): not metrics.
NOT_METRICS = frozenset({"recommender", "ks", "cutoff", "test_end", "seconds", "history_len", "protocol",
                         "version", "day", "holdout_days", "params", "per_unit", "tables", "undefined"})


def _flat_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        if not prefix and key in NOT_METRICS:
            continue
        if isinstance(value, Mapping):
            out.update(_flat_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def _champion_card(view: ModelView, links: Links) -> str:
    champ = view.champion
    if champ is None:
        why = "no candidate yet" if not view.candidates else "no champion yet: no candidate has been promoted"
        return ('<div class="card" data-testid="champion"><div class="label">Champion</div>'
                f'<div class="big"><span data-testid="champion-version" id="champion-version-{e(view.name)}">none</span></div>'
                f"{_msg(why, testid='no-champion')}</div>")
    flat = _flat_metrics(champ.metrics)
    order = {name: i for i, name in enumerate(view.metrics)}
    keys = sorted(flat, key=lambda k: (k not in order, k.startswith("cost."), k.startswith("slices."), order.get(k, 0), k))
    rows = "".join(f'<tr><td>{e(k)}</td><td class="num">{e(fmt(flat[k]))}</td></tr>' for k in keys)
    links_html = " · ".join(filter(None, [
        f'<a href="{e(links.gate(view.name, champ.version))}">gate report</a>',
        _external(champ.mlflow_url),
    ]))
    flag = "" if champ.verified else (
        f'{_badge("not verified", "failed", testid="champion-unverified")}'
        + _msg("this champion must not be served: " + "; ".join(champ.problems), error=True,
               testid="champion-problems"))
    return (
        f'<div class="card" data-testid="champion" data-version="{champ.version}" '
        f'data-verified="{str(champ.verified).lower()}"><div class="label">Champion</div>'
        f'<div class="big"><span data-testid="champion-version" id="champion-version-{e(view.name)}">v{champ.version}</span></div>'
        f"{flag}<dl>"
        f'<dt>since</dt><dd data-testid="champion-since">{e(champ.since or "unknown (alias set outside ecom-ml)")}</dd>'
        f"<dt>trained for</dt><dd>{e(champ.day or '—')}</dd>"
        f"<dt>promoted by</dt><dd>{e(champ.promoted_by or '—')}</dd>"
        f"<dt>reason</dt><dd>{e(champ.reason or '—')}</dd>"
        f"<dt>links</dt><dd>{links_html}</dd>"
        "</dl>"
        f'<table data-testid="champion-metrics"><thead><tr><th>metric (holdout at training)</th><th class="num">value</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>{_champion_tables(champ.tables)}</div>"
    )


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{e(fmt(value))}</td>'
    return f"<td>{e(value)}</td>"


def _champion_tables(tables: Mapping[str, Any]) -> str:
    """Each table of the champion's evaluation (``tables``), as it was written: title, columns, rows."""
    out = []
    for name, table in tables.items():
        head = "".join(f"<th>{e(c)}</th>" for c in table["columns"])
        body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table["rows"])
        out.append(f'<h3>{e(table["title"])}</h3><table data-testid="champion-table" data-table="{e(name)}">'
                   f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "".join(out)


def _candidates_table(view: ModelView, links: Links) -> str:
    if not view.candidates:
        return _msg("no candidate yet", testid="no-candidates")
    metric_heads = "".join(f'<th class="num">{e(m)}</th>' for m in view.metrics)
    rows = []
    for c in view.candidates:
        status_html = _badge("champion", testid="is-champion") if c.is_champion else (
            '<span class="muted small">was champion</span>' if c.was_champion else "")
        report = f'<a data-testid="gate-report-link" href="{e(links.gate(view.name, c.version))}">report</a>' \
            if c.gate != "unknown" else '<span class="muted small">none</span>'
        cells = "".join(f'<td class="num">{e(fmt(c.metrics.get(m)))}</td>' for m in view.metrics)
        summary = f'<div class="muted small">{e(c.gate_summary)}</div>' if c.gate_summary else ""
        if c.decision:
            summary += f'<div class="small" data-testid="decision">{e(c.decision)}</div>'
        row_class = ' class="is-champion"' if c.is_champion else ""
        rows.append(
            f'<tr data-testid="candidate-row" data-version="{c.version}" data-gate="{e(c.gate)}"{row_class}>'
            f'<td><b>v{c.version}</b></td><td class="day">{e(c.day or "—")}</td>'
            f'<td>{_badge(c.gate, testid="gate-verdict")}{summary}</td>{cells}<td>{status_html}</td>'
            f'<td>{report}</td><td class="small">{e(c.registered_at or "—")}<br><span class="muted">'
            f'{e(c.airflow_run_id or "")}</span></td><td>{_external(c.mlflow_url)}</td></tr>'
        )
    return (
        f'<table data-testid="candidates" id="candidates-{e(view.name)}"><thead><tr><th>version</th><th>day</th>'
        f"<th>gate</th>{metric_heads}<th>champion</th><th>gate report</th><th>registered (UTC) · Airflow run</th>"
        f"<th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _quality_section(section: QualitySection, links: Links) -> str:
    head = ('<section id="data-quality" data-testid="data-quality"><h2>Data quality '
            f'<span class="muted small">orders, DAG <code>{e(section.dag_id)}</code></span></h2>')
    if not section.readable:
        return head + _msg(f"hidden: you may not read DAG {section.dag_id}", testid="quality-hidden") + "</section>"
    where = f'<p class="muted small">lake <code>{e(section.lake_root)}</code></p>' if section.lake_root else ""
    if section.error:
        return head + where + _msg(f"cannot read the quality reports: {section.error}", error=True,
                                   testid="quality-error") + "</section>"
    if not section.days:
        return head + where + _msg(f"no quality reports yet under {section.lake_root}: run {section.dag_id}",
                                   testid="quality-empty") + "</section>"
    rows = []
    for d in section.days:
        counts = ", ".join(f"{name} {n:,}" for name, n in d.row_counts.items())
        rows.append(
            f'<tr data-testid="dq-row" data-day="{e(d.day)}" data-status="{e(d.status)}"><td class="day">{e(d.day)}</td>'
            f"<td>{_badge(d.status, testid='dq-status')}</td><td>{e(d.published)}</td><td>{e(d.summary)}</td>"
            f'<td class="small">{e(counts)}</td><td class="small" data-testid="dq-drift">{e(d.drift)}</td>'
            f'<td><a data-testid="dq-report-link" href="{e(links.quality(d.day))}">report</a></td></tr>'
        )
    return (head + where + '<table data-testid="dq-table"><thead><tr><th>day</th><th>status</th><th>published</th>'
            "<th>summary</th><th>rows</th><th>drift</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>")


# ---- the chart ------------------------------------------------------------------------------------

SERIES_COLORS = ("#0969da", "#8250df", "#bc4c00", "#1a7f37")
BASELINE_COLOR = "#6e7781"
CHAMPION_COLOR = "#bf8700"
FAIL_COLOR = "#cf222e"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.1
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def _day_ordinal(text: str, index: int) -> float:
    try:
        return float(date.fromisoformat(text).toordinal())
    except ValueError:
        return float(index)


def trend_chart(view: ModelView, width: int = 720, height: int = 280) -> str:
    """An SVG line chart: each metric per training day, the gate's best baseline dashed, failed
    gates as red points, and a gold diamond where a version of that day became champion."""
    points = view.trend
    if not points:
        return _msg("no candidate trained for a day yet", testid="no-trend")
    primary = view.primary_metric
    series: list[tuple[str, str, list[float | None], bool]] = [
        (m, SERIES_COLORS[i % len(SERIES_COLORS)], [p.values.get(m) for p in points], False)
        for i, m in enumerate(view.metrics)
    ]
    baseline_values = [p.baseline_values.get(primary) for p in points]
    if any(v is not None for v in baseline_values):
        names = sorted({p.baseline for p in points if p.baseline})
        series.append((f"best baseline {primary} ({', '.join(names)})", BASELINE_COLOR, baseline_values, True))
    numbers = [v for _, _, values, _ in series for v in values if v is not None]
    if not numbers:
        return _msg(f"the candidates logged no {', '.join(view.metrics)}", testid="no-trend")
    left, right, bottom = 58, 16, 46
    legend, legend_rows = _legend(series, left, width - right)
    top = 30 + 16 * legend_rows  # room for the legend and the champion markers above the plot
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = min(numbers), max(numbers)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.01
    ticks = _nice_ticks(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)
    y_lo, y_hi = ticks[0], ticks[-1]
    xs_raw = [_day_ordinal(p.day, i) for i, p in enumerate(points)]
    x_lo, x_hi = min(xs_raw), max(xs_raw)

    def x(i: int) -> float:
        if x_hi == x_lo:
            return left + plot_w / 2
        return left + (xs_raw[i] - x_lo) / (x_hi - x_lo) * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h

    out = [f'<svg data-testid="trend-chart" id="trend-{e(view.name)}" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" xmlns="http://www.w3.org/2000/svg" '
           f'aria-label="{e(view.name)}: {e(", ".join(view.metrics))} by training day">']
    for t in ticks:  # grid and y labels
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eaeef2"/>'
                   f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{e(fmt(t))}</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#8c959f"/>'
               f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#8c959f"/>')
    step = max(1, math.ceil(len(points) / 10))  # at most ~10 day labels
    for i, p in enumerate(points):
        if i % step == 0 or i == len(points) - 1:
            label = p.day[5:] if len(p.day) == 10 else p.day
            out.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" stroke="#8c959f"/>'
                       f'<text x="{x(i):.1f}" y="{top + plot_h + 17}" text-anchor="middle">{e(label)}</text>')
    first, last = points[0].day, points[-1].day
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">training day '
               f'({e(first)}{" – " + e(last) if last != first else ""})</text>')
    for i, p in enumerate(points):  # champion markers under the lines
        if p.became_champion:
            cx = x(i)
            versions = ", ".join(f"v{v}" for v in p.champion_versions)
            out.append(f'<g data-testid="champion-marker" data-day="{e(p.day)}"><title>{e(p.day)}: {e(versions)} became champion</title>'
                       f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{top}" y2="{top + plot_h}" stroke="{CHAMPION_COLOR}" '
                       f'stroke-dasharray="2 3" stroke-opacity=".7"/>'
                       f'<path d="M{cx:.1f} {top - 9} l5 5 l-5 5 l-5 -5 z" fill="{CHAMPION_COLOR}"/></g>')
    for name, color, values, dashed in series:
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, v in enumerate(values):
            if v is None:
                if segment:
                    segments.append(segment)
                segment = []
            else:
                segment.append(f"{x(i):.1f},{y(v):.1f}")
        if segment:
            segments.append(segment)
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        for seg in segments:
            if len(seg) > 1:
                out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        if dashed:
            continue
        for i, (p, v) in enumerate(zip(points, values)):
            if v is None:
                continue
            failed = p.gate == "failed"
            fill = FAIL_COLOR if failed else color
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="{4 if failed else 3}" fill="{fill}" stroke="#fff">'
                       f'<title>{e(p.day)} v{p.version}: {e(name)} {e(fmt(v))} (gate {e(p.gate)})</title></circle>')
    out.append(legend)
    out.append("</svg>")
    return "".join(out)


def _legend(series: list[tuple[str, str, list[float | None], bool]], left: int, right: int) -> tuple[str, int]:
    """The legend as SVG rows from ``left`` to ``right`` (wrapping), and how many rows it took."""
    items = []
    for name, color, _, dashed in series:
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        items.append((name, f'<line x1="0" x2="18" y1="-4" y2="-4" stroke="{color}" stroke-width="2"{dash}/>', 22))
    items.append(("gate failed", f'<circle cx="5" cy="-4" r="4" fill="{FAIL_COLOR}"/>', 13))
    items.append(("became champion", f'<path d="M5 -9 l5 5 l-5 5 l-5 -5 z" fill="{CHAMPION_COLOR}"/>', 14))
    out, x, row = [], left, 0
    for name, mark, indent in items:
        span = indent + round(6.2 * len(name)) + 16  # ~6.2 px per character of the 11 px font
        if x > left and x + span > right:
            x, row = left, row + 1
        y = 16 + 16 * row
        out.append(f'<g transform="translate({x} {y})">{mark}<text x="{indent}" y="0">{e(name)}</text></g>')
        x += span
    return f'<g data-testid="legend">{"".join(out)}</g>', row + 1


# ---- report pages ---------------------------------------------------------------------------------


def markdown_html(text: str) -> str:
    """Markdown as HTML with raw HTML disabled (report text is data); a <pre> without markdown-it."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # a transitive dependency (rich); the report stays readable without it
        return f"<pre>{e(text)}</pre>"
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def render_gate_report(doc: data.GateDoc, links: Links) -> str:
    verdict = "unknown" if doc.passed is None else ("passed" if doc.passed else "failed")
    failed = ""
    if doc.failed_checks:
        failed = ('<p>failed checks: ' + ", ".join(f'<code data-testid="failed-check">{e(c)}</code>'
                                                  for c in doc.failed_checks) + "</p>")
    head = (
        f'<p class="small"><a href="{e(links.page())}#model-{e(doc.model)}">← Models</a> · '
        f'<a href="{e(links.gate_json(doc.model, doc.version))}">JSON</a> · run <code>{e(doc.run_id)}</code></p>'
        f'<h1>{e(doc.model)} v{doc.version}: gate {_badge(verdict, testid="gate-verdict")}</h1>{failed}'
    )
    return _document(f"{doc.model} v{doc.version} gate report",
                     f'{head}<article class="report" data-testid="gate-report">{markdown_html(doc.markdown)}</article>')


def render_quality_report(doc: data.QualityDoc, links: Links) -> str:
    head = (
        f'<p class="small"><a href="{e(links.page())}#data-quality">← Models</a> · '
        f'<a href="{e(links.quality_json(doc.day))}">JSON</a> · from the <code>{e(doc.zone)}</code> zone · '
        f'status {_badge(doc.status, testid="dq-status")}</p>'
    )
    return _document(f"data quality {doc.day}",
                     f'{head}<article class="report" data-testid="quality-report">{markdown_html(doc.markdown)}</article>')


def error_page(links: Links, title: str, detail: str) -> str:
    body = (f'<p class="small"><a href="{e(links.page())}">← Models</a></p><h1>{e(title)}</h1>'
            + _msg(detail, error=True, testid="error"))
    return _document(title, body)
