"""The admin's dashboard: server-rendered HTML of the project reports (``ls_backend.report``).

Self-contained so it works offline: inline CSS, inline SVG plots, a few lines of inline JS
that poll ``/status`` for job progress and post a rollback. No external asset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from ls_backend.core.kinds import ModelKind
from ls_backend.core.report import CurvePoint, StopSignal
from ls_backend.server.report import ProjectReport, SuspectItem

#: How often the page asks /status for job progress.
POLL_MS = 3000
ISSUE = '<span class="tag issue">issue</span>'

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f4f5f8}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:baseline}
header a{color:#cfd6e6}
main{max-width:1280px;margin:0 auto;padding:16px 24px}
h1{font-size:20px;margin:0}h2{font-size:16px;margin:0 0 8px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
section{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 2px #0002}
table{border-collapse:collapse;width:100%}td,th{padding:4px 6px;text-align:left;
border-bottom:1px solid #e6e8ee;vertical-align:top}th{font-weight:600;color:#4a5266}
.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#6b7386}
.state-running{color:#0a64c8}.state-failed{color:#c8290a}.state-queued{color:#a86b00}
.state-done{color:#1e7d32}.bar{background:#dfe6f5;height:8px;border-radius:4px;min-width:2px}
.bar>span{display:block;height:8px;border-radius:4px;background:#3b6fd4}
.tag{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;background:#e6e8ee}
.tag.explore{background:#e3f1e0}.tag.near_duplicate{background:#fbe9d0}
.tag.issue{background:#f9d7d0}.tag.pinned{background:#fbe9d0}.stop{font-weight:600}.stop.yes{color:#1e7d32}
.stop.no{color:#a86b00}button{font:inherit;padding:4px 12px}
.warning{background:#fdecea;border-left:4px solid #c8290a;padding:8px 12px;margin:0 0 8px}
svg text{font-size:11px;fill:#4a5266}
"""

JS = """
const POLL_MS = %(poll)d, PROJECT = %(project)s;
function fmt(job){
  const pct = Math.round(100 * job.progress);
  if(job.state==='running') return `running ${pct}%% ${job.stage || ''}`;
  if(job.state==='failed') return 'failed: ' + (job.last_error||'');
  return job.state;
}
let finished = null;
async function poll(){
  try{
    const r = await fetch('/status', {credentials:'same-origin'});
    if(r.ok){
      const body = await r.json();
      let stamp = '';
      for(const [key, p] of Object.entries(body.projects)){
        if(PROJECT !== null && key !== PROJECT) continue;
        for(const [lane, job] of Object.entries(p.jobs)){
          const el = document.querySelector(`[data-project="${key}"][data-lane="${lane}"]`);
          if(el){ el.textContent = fmt(job); el.className = 'state-' + job.state; }
          stamp += key + lane + job.finished;
        }
        const v = document.querySelector(`[data-project="${key}"][data-serving]`);
        if(v) v.textContent = p.model_version || '-';
      }
      if(finished !== null && stamp !== finished){
        document.getElementById('fresh').hidden = false;
      }
      finished = stamp;
    }
  }catch(e){}
  setTimeout(poll, POLL_MS);
}
async function rollback(){
  const version = document.getElementById('rollback-version').value;
  if(!confirm(`Serve ${version} instead of the current version for project ${PROJECT}?`)) return;
  const r = await fetch(`/projects/${PROJECT}/rollback`, {method:'POST', credentials:'same-origin',
    headers:{'Content-Type':'application/json'}, body: JSON.stringify({version})});
  const body = await r.json();
  if(!r.ok){ alert(body.error || r.statusText); return; }
  location.reload();
}
async function unpin(){
  if(!confirm(`Lift the pin of project ${PROJECT}? The next training round that beats the `
    + 'serving version serves again.')) return;
  const r = await fetch(`/projects/${PROJECT}/rollback`, {method:'POST', credentials:'same-origin',
    headers:{'Content-Type':'application/json'}, body: JSON.stringify({pin: false})});
  const body = await r.json();
  if(!r.ok){ alert(body.error || r.statusText); return; }
  location.reload();
}
poll();
"""


def _page(title: str, body: str, project: str | None) -> str:
    script = JS % {"poll": POLL_MS, "project": json.dumps(project)}
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<link rel=icon href="data:,">'  # no /favicon.ico request, so no 404 in the console
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>ls-backend</h1><a href="/ui">projects</a>'
        '<a id=fresh href="" hidden>new results: reload</a></header>'
        f"<main>{body}</main><script>{script}</script></body></html>"
    )


def _job_cell(project: str, lane: str, job: dict[str, Any]) -> str:
    state = job.get("state", "idle")
    text = state
    if state == "running":
        text = f"running {round(100 * float(job.get('progress') or 0))}% {job.get('stage') or ''}"
    elif state == "failed":
        text = f"failed: {job.get('last_error') or ''}"
    return (
        f'<td data-project="{escape(project)}" data-lane="{escape(lane)}" '
        f'class="state-{escape(state)}">{escape(text)}</td>'
    )


def overview(projects: dict[str, dict[str, Any]], sync: dict[str, Any]) -> str:
    """Every project with its serving version, labels and lanes (the /status data)."""
    lanes = sorted({lane for p in projects.values() for lane in p["jobs"]})
    head = "".join(f"<th>{escape(lane)} lane</th>" for lane in lanes)
    rows = []
    for key, p in projects.items():
        cells = "".join(_job_cell(key, lane, p["jobs"].get(lane, {})) for lane in lanes)
        rows.append(
            f'<tr><td><a href="/ui/projects/{escape(key)}">project {escape(key)}</a></td>'
            f'<td data-project="{escape(key)}" data-serving>{escape(p["model_version"] or "-")}'
            f"</td><td class=num>{p['annotations']}</td><td class=num>{p['tasks']}</td>"
            f"{cells}<td>{escape(_verdict(p.get('stopping') or {}))}</td></tr>"
        )
    table = (
        "<table><tr><th>project</th><th>serving version</th><th class=num>annotations</th>"
        f"<th class=num>tasks</th>{head}<th>stopping</th></tr>{''.join(rows)}</table>"
        if rows
        else "<p class=muted>No project yet: connect this backend in a Label Studio project "
        "(Settings -> Model).</p>"
    )
    note = "" if sync.get("configured") else f"<p class=muted>{escape(sync['message'])}</p>"
    warnings = "".join(
        _warning(f"Project {key}: {text}", key)
        for key, p in projects.items()
        for text in p.get("warnings", [])
    )
    body = f"<section><h2>Projects</h2>{warnings}{table}{note}</section>"
    return _page("ls-backend: projects", body, None)


def _verdict(stopping: dict[str, Any]) -> str:
    if stopping.get("verdict") is None:
        return "-"
    gain = stopping["gain_per_100_labels"]
    return f"{stopping['verdict']} ({100 * gain:+.1f} points per 100 labels expected)"


def _axis(x0: int, y0: int, w: int, h: int, xmax: float, ymin: float, ymax: float) -> str:
    ticks = []
    for i in range(5):
        y = ymin + (ymax - ymin) * i / 4
        py = y0 + h - h * i / 4
        ticks.append(
            f'<line x1={x0} x2={x0 + w} y1={py:.1f} y2={py:.1f} stroke="#eceef3"/>'
            f"<text x={x0 - 6} y={py + 4:.1f} text-anchor=end>{y:.2f}</text>"
        )
        px = x0 + w * i / 4
        ticks.append(
            f"<text x={px:.1f} y={y0 + h + 14} text-anchor=middle>{xmax * i / 4:.0f}</text>"
        )
    return "".join(ticks) + (
        f'<line x1={x0} x2={x0} y1={y0} y2={y0 + h} stroke="#9aa2b5"/>'
        f'<line x1={x0} x2={x0 + w} y1={y0 + h} y2={y0 + h} stroke="#9aa2b5"/>'
    )


def learning_curve_svg(points: Sequence[CurvePoint], metric: str = "accuracy") -> str:
    """The task's metric (blue: accuracy, or entity F1 for spans) and macro-F1 (orange) of
    every scored version against its labels: circles heads, squares adapters, hollow when
    not promoted, a ring on the serving one."""
    scored = [p for p in points if p.accuracy is not None]
    if not scored:
        return "<p class=muted>No version has been evaluated yet (zero-shot serves).</p>"
    w, h, x0, y0 = 560, 220, 44, 10
    xmax = max(max(p.labels for p in scored), 1) * 1.05
    ys = [v for p in scored for v in (p.accuracy, p.macro_f1) if v is not None]
    ymin = max(0.0, min(ys) - 0.05)
    ymin = min(ymin, 0.9)

    def at(labels: int, value: float) -> tuple[float, float]:
        return x0 + w * labels / xmax, y0 + h - h * (value - ymin) / (1.0 - ymin)

    marks = []
    names = {"accuracy": metric, "macro_f1": "macro-F1"}
    for field, colour, css in (("accuracy", "#3b6fd4", "acc"), ("macro_f1", "#e07b1f", "f1")):
        line = [(p, getattr(p, field)) for p in scored if getattr(p, field) is not None]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(p.labels, v) for p, v in line))
        marks.append(f'<polyline points="{path}" fill=none stroke="{colour}" opacity=".35"/>')
        for p, value in line:
            x, y = at(p.labels, value)
            fill = colour if p.promoted else "#fff"
            tip = (
                f"{p.version}: {names[field]} {value:.3f} at {p.labels} labels "
                f"({p.evaluation}; {'promoted' if p.promoted else 'not promoted'}"
                f"{'; serving' if p.serving else ''})"
            )
            attrs = (
                f'class="{css}-point" data-version="{escape(p.version)}" fill="{fill}" '
                f'stroke="{colour}" stroke-width=1.5'
            )
            if p.kind == ModelKind.LORA:
                tag, where = "rect", f"x={x - 4:.1f} y={y - 4:.1f} width=8 height=8"
            else:
                tag, where = "circle", f"cx={x:.1f} cy={y:.1f} r=4"
            marks.append(f"<{tag} {where} {attrs}><title>{escape(tip)}</title></{tag}>")
            if p.serving and field == "accuracy":
                marks.append(
                    f'<circle cx={x:.1f} cy={y:.1f} r=9 fill=none stroke="#1e7d32" '
                    f'stroke-width=2 class=serving-mark data-version="{escape(p.version)}"/>'
                    f'<text x={x + 11:.1f} y={y - 8:.1f} fill="#1e7d32">serving</text>'
                )
    legend = (
        f"<text x={x0 + 8} y={y0 + h + 30}>● {escape(metric)} (blue), macro-F1 (orange) on "
        "held-out labels · ■ LoRA · hollow: not promoted · ring: serving</text>"
    )
    return (
        f'<svg id=learning-curve viewBox="0 0 {x0 + w + 60} {y0 + h + 40}" width="100%" '
        f'role=img aria-label="learning curve">{_axis(x0, y0, w, h, xmax, ymin, 1.0)}'
        f"{''.join(marks)}{legend}</svg>"
    )


def kappa_svg(signal: StopSignal) -> str:
    """Kappa of each light-head version against the one before it, with the rule's line."""
    w, h, x0, y0 = 560, 140, 44, 10
    xs = signal.labels[1:]
    xmax = max(max(xs), 1) * 1.05
    ymin = min(min(signal.kappas), signal.threshold) - 0.02
    ymin = max(-1.0, min(ymin, 0.95))

    def at(labels: int, value: float) -> tuple[float, float]:
        return x0 + w * labels / xmax, y0 + h - h * (value - ymin) / (1.0 - ymin)

    pts = [at(n, k) for n, k in zip(xs, signal.kappas, strict=True)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    dots = "".join(
        f'<circle cx={x:.1f} cy={y:.1f} r=2.5 fill="#3b6fd4"><title>{v} at {n} labels: '
        f"kappa {k:.4f}</title></circle>"
        for (x, y), v, n, k in zip(pts, signal.versions[1:], xs, signal.kappas, strict=True)
    )
    _, ty = at(0, signal.threshold)
    return (
        f'<svg id=stop-plot viewBox="0 0 {x0 + w + 60} {y0 + h + 24}" width="100%" role=img '
        f'aria-label="kappa between successive versions">{_axis(x0, y0, w, h, xmax, ymin, 1.0)}'
        f'<line x1={x0} x2={x0 + w} y1={ty:.1f} y2={ty:.1f} stroke="#1e7d32" '
        f'stroke-dasharray="4 3"/><text x={x0 + w + 4} y={ty + 4:.1f}>{signal.threshold}</text>'
        f'<polyline points="{path}" fill=none stroke="#3b6fd4"/>{dots}</svg>'
    )


def plateau_html(plateau: dict[str, Any]) -> str:
    """The stopping signal: its verdict, the expected gain of the next 100 labels and how sure,
    and each version's estimated accuracy with the fitted curve."""
    if plateau.get("verdict") is None:
        return f"<p id=plateau class=muted>{escape(plateau.get('note') or '')}</p>"
    metric = plateau.get("metric", "accuracy")
    low, high = plateau["gain_80_percent"]
    figures = (
        f"Expected gain of the next 100 labels: {100 * plateau['gain_per_100_labels']:.1f} "
        f"points of {metric} (80%: {100 * low:.1f}-{100 * high:.1f}); probability that they "
        f"buy more than a point: {100 * plateau['p_gain_over_a_point']:.0f}%."
    )
    verdict = "yes" if plateau.get("stop") else "no"
    return (
        f'<p id=plateau class="stop {verdict}">{escape(plateau["verdict"])}</p>'
        f"<p id=plateau-gain>{escape(figures)}</p>{plateau_svg(plateau)}"
        f"<p class=muted>{escape(plateau['note'])}. Rule: {escape(plateau['rule'])} "
        f"(a learning curve fitted to the versions' {escape(metric)} on the project's tasks, "
        "judged by the newest version: README, 'When to stop').</p>"
    )


def plateau_svg(plateau: dict[str, Any]) -> str:
    """Each light-head version's estimated accuracy (dots) and the fitted curve (line)."""
    xs, ys = plateau.get("curve_labels") or [], plateau.get("curve_accuracy") or []
    fx, fy = plateau.get("fit_labels") or [], plateau.get("fit_accuracy") or []
    if not xs:
        return ""
    w, h, x0, y0 = 560, 140, 44, 10
    xmax = max(max(xs + fx), 1) * 1.05
    values = ys + fy
    ymin = max(0.0, min(values) - 0.02)
    ymax = min(1.0, max(values) + 0.02)
    span = max(ymax - ymin, 1e-6)

    def at(labels: float, value: float) -> tuple[float, float]:
        return x0 + w * labels / xmax, y0 + h - h * (value - ymin) / span

    dots = "".join(
        f'<circle cx={x:.1f} cy={y:.1f} r=2.5 fill="#3b6fd4"><title>{n} labels: estimated '
        f"{a:.3f}</title></circle>"
        for n, a in zip(xs, ys, strict=True)
        for x, y in (at(n, a),)
    )
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(n, a) for n, a in zip(fx, fy, strict=True)))
    line = f'<polyline points="{path}" fill=none stroke="#1e7d32"/>' if path else ""
    return (
        f'<svg id=plateau-plot viewBox="0 0 {x0 + w + 60} {y0 + h + 24}" width="100%" role=img '
        f'aria-label="estimated {escape(plateau.get("metric", "accuracy"))} of each version '
        f'and the fitted curve">'
        f"{_axis(x0, y0, w, h, xmax, ymin, ymax)}{line}{dots}</svg>"
    )


def _warning(text: str, project: str) -> str:
    return f'<p class=warning data-project="{escape(project)}">{escape(text)}</p>'


def _link(url: str | None, text: str) -> str:
    return f'<a href="{escape(url)}" target=_blank>{escape(text)}</a>' if url else escape(text)


def _suspect_text(s: SuspectItem) -> str:
    """The suspect's text; a region's words in bold where the suspect is a region."""
    if s.region is None or not s.region or s.region not in s.text:
        return escape(s.text)
    at = s.text.find(s.region)
    if s.start is not None and s.text.startswith(s.region, max(0, s.start)):
        at = s.start  # the region where it is, not an earlier copy of its words
    end = at + len(s.region)
    return f"{escape(s.text[:at])}<b>{escape(s.region)}</b>{escape(s.text[end:])}"


def project_page(report: ProjectReport) -> str:
    key = report.project
    jobs = "".join(
        f"<tr><th>{escape(lane)} lane</th>{_job_cell(key, lane, job)}</tr>"
        for lane, job in report.jobs.items()
    )
    short = "acc" if report.metric == "accuracy" else report.metric
    versions = "".join(
        f'<option value="{escape(p.version)}"{" selected" if p.serving else ""}>'
        f"{escape(p.version)} ({p.labels} labels"
        f"{f', {short} {p.accuracy:.3f}' if p.accuracy is not None else ''}"
        f"{'' if p.promoted else ', not promoted'})</option>"
        for p in reversed(report.learning_curve)
    )
    gain = (
        f"{100 * report.gain_per_100_labels:+.1f} {report.metric} points per 100 labels lately"
        if report.gain_per_100_labels is not None
        else "a gain per 100 labels shows once versions of one kind are 50 labels apart"
    )
    pin = (
        '<p id=pinned class=pin><span class="tag pinned">pinned</span> by a rollback: new '
        "versions train and are saved, but this one serves until the pin is lifted. "
        '<button id=unpin onclick="unpin()">Lift the pin</button></p>'
        if report.pinned
        else ""
    )
    state = f"""<section><h2>Project {escape(key)}</h2><table>
<tr><th>serving version</th><td data-project="{escape(key)}" data-serving>
{escape(report.model_version or "-")}</td></tr>
<tr><th>labels</th><td>{report.labels} usable ({report.annotations} annotations stored,
skips included), {report.tasks} tasks mirrored</td></tr>{jobs}</table>
{pin}<p><label>Serve another version: <select id=rollback-version>{versions}</select></label>
<button id=rollback onclick="rollback()">Roll back</button>
<span class=muted>(pins it: new versions do not serve until the pin is lifted)</span></p>
</section>"""

    curve = f"""<section><h2>Is the model getting better?</h2>
{learning_curve_svg(report.learning_curve, report.metric)}<p class=muted>{escape(gain)}</p>
</section>"""

    if report.stopping is not None:
        verdict = "yes" if report.stopping.stop else "no"
        stop_plot = kappa_svg(report.stopping)
    else:
        verdict, stop_plot = "no", ""
    stopping = f"""<section><h2>Is more labeling still worth it?</h2>{plateau_html(report.plateau)}
<h3>Stabilizing predictions</h3>
<p id=stop-note class="stop {verdict}">{escape(report.stopping_note)}</p>{stop_plot}
<p class=muted>Rule: stabilizing predictions (Bloodgood &amp; Vijay-Shanker 2009).</p></section>"""

    total = max(sum(report.label_distribution.values()), 1)
    dist = "".join(
        f"<tr><td>{escape(name)}</td><td class=num>{n}</td><td style=width:60%>"
        f'<div class=bar><span style="width:{100 * n / total:.1f}%"></span></div></td></tr>'
        for name, n in sorted(report.label_distribution.items(), key=lambda kv: -kv[1])
    )
    conf = "".join(
        f"<tr><td>{escape(c.given)}</td><td>{escape(c.predicted)}</td>"
        f"<td class=num>{c.count}</td></tr>"
        for c in report.confusions
    )
    conf_table = (
        f"<table><tr><th>labeled</th><th>model says</th><th class=num>times</th></tr>{conf}</table>"
        if conf
        else "<p class=muted>nothing to show yet</p>"
    )
    conf_note = (
        f"<p id=confusions-note class=muted>{escape(report.confusions_note)}</p>"
        if report.confusions_note
        else ""
    )
    labels = f"""<section><h2>Labels</h2><table>{dist}</table>
<h2 style="margin-top:12px">Most confused (out-of-fold)</h2>{conf_table}{conf_note}</section>"""

    rows = "".join(
        f"<tr><td class=num>{q.position}</td><td>{_link(q.url, str(q.task_id))}</td>"
        f"<td>{escape(q.text)}</td><td>{escape(q.predicted)}</td>"
        f"<td class=num>{'' if q.uncertainty is None else f'{q.uncertainty:.3f}'}</td>"
        f'<td><span class="tag {escape(q.reason)}" title="{escape(q.why)}">'
        f"{escape(q.reason.replace('_', '-'))}</span></td></tr>"
        for q in report.queue
    )
    queue_table = (
        "<table id=queue><tr><th class=num>#</th><th>task</th><th>text</th>"
        "<th>pre-annotation</th><th class=num>uncertainty</th><th>why</th></tr>"
        f"{rows}</table>"
        if rows
        else ""
    )
    ranking = f" (ranking {escape(report.queue_version)})" if report.queue_version else ""
    queue = f"""<section><h2>What annotators get next</h2>{queue_table}
<p class=muted>{escape(report.queue_note)}{ranking}</p></section>"""

    srows = "".join(
        f"<tr><td>{_link(s.url, str(s.task_id))}</td><td>{_suspect_text(s)}</td>"
        f"<td>{escape(s.given)}</td><td>{escape(s.predicted)}</td>"
        f"<td class=num>{s.quality:.3f}</td>"
        f"<td class=num>{'' if s.confidence is None else f'{s.confidence:.3f}'}</td>"
        f"<td>{ISSUE if s.issue else ''}</td></tr>"
        for s in report.suspects
    )
    suspect_table = (
        "<table id=suspects><tr><th>task</th><th>text</th><th>labeled</th><th>model says</th>"
        "<th class=num>p(label)</th><th class=num>p(model's)</th><th></th></tr>"
        f"{srows}</table>"
        if srows
        else ""
    )
    suspects = f"""<section><h2>Probably wrong annotations</h2>{suspect_table}
<p class=muted>{escape(report.suspects_note)}</p></section>"""

    warnings = "".join(_warning(text, key) for text in report.warnings)
    body = (
        f"{warnings}<div class=grid>{state}{curve}{stopping}{labels}</div>"
        f'<div class=grid style="margin-top:16px">{queue}{suspects}</div>'
    )
    return _page(f"ls-backend: project {key}", body, key)
