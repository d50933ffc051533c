"""python -m edgecsp.nightly report --db URL --html DIR [--nights N]

The fleet dashboard, a static site CI can publish: index.html holds the latest result of every
device x model x target x precision x scenario (FPS, p99 latency, AP50, achieved bandwidth,
status), regressions and failures highlighted, and a trend of the last N nights per row; one page
per device says when it was last seen, which night it missed, and its versions. Every number is
the database's, formatted once here; data.json holds the same rows unformatted.

The trend charts are small inline SVG polylines written here: a site of thousands of rows
renders in seconds and needs no script or network.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecsp.bench.history import History, aggregate
from edgecsp.bench.regression import CHECKS, Thresholds, judge

# (column, heading, format): the dashboard's numbers; the browser test formats the database's the same way.
COLUMNS = (("fps", "FPS", ".1f"), ("latency_p99_ms", "p99 ms", ".2f"), ("ap50", "AP50", ".4f"),
           ("achieved_gbs", "GB/s", ".2f"))
BAD = ("failed", "no-device")
NO_DEVICE = "(no live device)"  # edgecsp.fleet.dispatch's device for a target nobody serves: no device page


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(float(value), spec)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "device"


@dataclass
class Row:
    device: str
    job: str
    night: str
    result: dict
    trend: list[tuple[str, float]] = field(default_factory=list)  # (night, fps), oldest first
    regressions: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.result["status"] == "ok" and self.regressions:
            return "regression"
        return str(self.result["status"])


def _night_of(run: dict) -> str:
    return run["night"] or f"run-{run['id']}"


def _thresholds(info: dict) -> Thresholds:
    th = ((info.get("suite") or {}).get("thresholds")) or {}
    try:
        return Thresholds(**th)
    except (TypeError, ValueError, Exception):  # noqa: BLE001 - an older suite's thresholds: the defaults
        return Thresholds()


def collect(h: History, nights: int = 14) -> dict[str, Any]:
    """Everything the site shows, from the database."""
    from sqlalchemy import select

    runs_t, res_t = h.t["runs"], h.t["results"]
    with h.engine.connect() as conn:
        runs = {r["id"]: dict(r) for r in (row._mapping for row in conn.execute(select(runs_t).order_by(runs_t.c.id)))}
        results = [dict(row._mapping) for row in conn.execute(select(res_t).order_by(res_t.c.id))]
    order: list[str] = []
    for run in runs.values():
        n = _night_of(run)
        if n not in order:
            order.append(n)
    recent = order[-nights:]
    latest: dict[tuple[str, str], dict] = {}
    series: dict[tuple[str, str], dict[str, float]] = {}
    oks: dict[tuple[str, str], list[dict]] = {}  # successful results, oldest first: the baselines
    for r in results:
        key = (r["device"], r["job"])
        latest[key] = r  # ordered by id: the last one wins
        if r["status"] == "ok":
            oks.setdefault(key, []).append(r)
        night = _night_of(runs[r["run_id"]])
        if r["status"] == "ok" and r["fps"] is not None and night in recent:
            series.setdefault(key, {})[night] = float(r["fps"])
    rows = []
    for (device, job), r in sorted(latest.items()):
        run = runs[r["run_id"]]
        info = json.loads(run["info"] or "{}")
        row = Row(device, job, _night_of(run), r,
                  [(n, series[(device, job)][n]) for n in recent if n in series.get((device, job), {})])
        if r["status"] == "ok":
            row.regressions = regressions(r, oks.get((device, job), []), _thresholds(info))
        rows.append(row)
    devices: dict[str, dict] = {}
    for run in runs.values():
        if run["device"] == NO_DEVICE:
            continue
        info = json.loads(run["info"] or "{}")
        d = devices.setdefault(run["device"], {"nights": [], "info": {}, "hostname": run["hostname"]})
        d["nights"].append({"night": _night_of(run), "status": run["status"], "started": run["started_at"],
                            "edgecsp": run["edgecsp_version"]})
        d["info"] = info.get("device") or info.get("machine") or d["info"]
        d["hostname"] = run["hostname"] or d["hostname"]
    last_night = order[-1] if order else None
    for d in devices.values():
        d["last_seen"] = d["nights"][-1]["night"]
        d["alive_last_night"] = d["last_seen"] == last_night
    return {"nights": order, "recent": recent, "last_night": last_night, "rows": rows, "devices": devices}


def regressions(r: dict, history: list[dict], th: Thresholds) -> list[str]:
    """The regressions of result ``r`` against the earlier successful results of its device and job
    (oldest first): the nightly's rules (edgecsp.bench.regression), on rows already loaded, so a
    dashboard of thousands of rows does not ask the database four questions per row."""
    earlier = [x for x in reversed(history) if x["run_id"] < r["run_id"]]  # newest first
    out = []
    for metric, (column, *_rest) in CHECKS.items():
        vals = [float(x[column]) for x in earlier if x[column] is not None][:th.baseline_runs]
        base, runs = aggregate(vals, column, th.baseline)
        f = judge(f"{r['device']}/{r['job']}", metric, r[column], base, runs, th)
        if f is not None and f.regressed:
            out.append(f.describe())
    return out


def sparkline(points: list[tuple[str, float]], width: int = 160, height: int = 36) -> str:
    """FPS over the recent nights as an inline SVG polyline (each point's night and value in its title)."""
    if not points:
        return '<span class="muted">no data</span>'
    vals = [v for _, v in points]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or max(abs(hi), 1.0)
    pad = 4
    step = (width - 2 * pad) / max(len(points) - 1, 1)
    xy = [(pad + i * step, pad + (height - 2 * pad) * (1 - (v - lo) / span)) for i, (_, v) in enumerate(points)]
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5"><title>{html.escape(n)}: {v:.1f} FPS</title></circle>'
                   for (x, y), (n, v) in zip(xy, points))
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    return (f'<svg class="trend" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="FPS over {len(points)} nights"><polyline points="{line}" fill="none" stroke="#2563eb" '
            f'stroke-width="1.5"/>{dots}</svg>')


CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#111}
table{border-collapse:collapse;font-size:.85rem}th,td{padding:.25rem .5rem;border-bottom:1px solid #ddd;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.regression{background:#fde68a}tr.failed,tr.no-device{background:#fecaca}
.muted{color:#888}.badge{padding:0 .4rem;border-radius:.3rem;font-size:.75rem}
.ok .badge{background:#bbf7d0}.regression .badge{background:#f59e0b}.failed .badge,.no-device .badge{background:#f87171}
svg.trend circle{fill:#2563eb}h1{font-size:1.4rem}
"""


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{body}</body></html>\n")


def _table(rows: list[Row], link: str | None = "devices/") -> str:
    head = "".join(f"<th>{h}</th>" for h in ("device", "job", "night", "status", *[c[1] for c in COLUMNS],
                                              "FPS trend", "note"))
    out = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for r in rows:
        res = r.result
        cells = "".join(f'<td class="num" data-metric="{c}">{fmt(res[c], spec)}</td>' for c, spec, in
                        ((c, s) for c, _, s in COLUMNS))
        note = "; ".join(r.regressions) or (res["error"] or "")
        device = (f'<a href="{link}{slug(r.device)}.html">{html.escape(r.device)}</a>'
                  if link is not None and r.device != NO_DEVICE else html.escape(r.device))
        out.append(f'<tr class="{r.status}" data-device="{html.escape(r.device)}" data-job="{html.escape(r.job)}">'
                   f"<td>{device}</td><td>{html.escape(r.job)}</td><td>{html.escape(r.night)}</td>"
                   f'<td><span class="badge">{r.status}</span></td>{cells}<td>{sparkline(r.trend)}</td>'
                   f"<td>{html.escape(note[:300])}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _versions(info: dict) -> str:
    backends = info.get("backends") or {}
    jetson = info.get("jetson") or {}
    parts = [f"{k} {v}" for k, v in backends.items()]
    if jetson.get("jetpack"):
        parts.insert(0, f"JetPack {jetson['jetpack']}")
    if info.get("python"):
        parts.append(f"Python {info['python']}")
    return ", ".join(parts) or "-"


def write_site(data: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "devices").mkdir(exist_ok=True)
    rows: list[Row] = data["rows"]
    bad = [r for r in rows if r.status in ("regression", *BAD)]
    dev_rows = []
    for name, d in sorted(data["devices"].items()):
        state = "seen in the latest night" if d["alive_last_night"] else f"<b>not seen since {html.escape(d['last_seen'])}</b>"
        dev_rows.append(f'<tr class="{"ok" if d["alive_last_night"] else "failed"}" data-device-row="{html.escape(name)}">'
                        f'<td><a href="devices/{slug(name)}.html">{html.escape(name)}</a></td>'
                        f"<td>{html.escape(str(d['info'].get('model', '-')))}</td><td>{state}</td>"
                        f"<td>{html.escape(_versions(d['info']))}</td></tr>")
    body = (f"<h1>edgecsp fleet nightly</h1><p>Latest night: <b>{html.escape(data['last_night'] or '-')}</b>; "
            f"{len(data['nights'])} night(s) in the database; trends over the last {len(data['recent'])}. "
            f"{len(bad)} row(s) need attention (regression, failure, or no live device).</p>"
            "<h2>Latest result per device, job and scenario</h2>" + _table(rows)
            + "<h2>Devices</h2><table><thead><tr><th>device</th><th>model</th><th>state</th><th>versions</th></tr>"
            "</thead><tbody>" + "".join(dev_rows) + "</tbody></table>")
    files = [out / "index.html"]
    (out / "index.html").write_text(_page("edgecsp fleet nightly", body))
    for name, d in data["devices"].items():
        mine = [r for r in rows if r.device == name]
        nights = "".join(f"<tr><td>{html.escape(n['night'])}</td><td>{html.escape(str(n['status']))}</td>"
                         f"<td>{html.escape(str(n['started']))}</td><td>{html.escape(str(n['edgecsp']))}</td></tr>"
                         for n in reversed(d["nights"]))
        info = d["info"]
        body = (f'<p><a href="../index.html">all devices</a></p><h1>{html.escape(name)}</h1>'
                f"<p>{html.escape(str(info.get('model', '-')))} ({html.escape(str(info.get('arch', '-')))}), host "
                f"{html.escape(str(d['hostname'] or '-'))}; targets {html.escape(', '.join(info.get('targets') or []) or '-')}"
                f"; {html.escape(_versions(info))}. Last seen: {html.escape(d['last_seen'])}"
                f"{'' if d['alive_last_night'] else ' (<b>missing from the latest night</b>)'}.</p>"
                + _table(mine, link=None)
                + "<h2>Nights</h2><table><thead><tr><th>night</th><th>status</th><th>started</th><th>edgecsp</th>"
                "</tr></thead><tbody>" + nights + "</tbody></table>")
        path = out / "devices" / f"{slug(name)}.html"
        path.write_text(_page(f"{name}: edgecsp fleet nightly", body))
        files.append(path)
    plain = {"last_night": data["last_night"], "nights": data["nights"],
             "rows": [{"device": r.device, "job": r.job, "night": r.night, "status": r.status,
                       **{c: r.result[c] for c, _, _ in COLUMNS}, "regressions": r.regressions,
                       "trend": r.trend} for r in rows],
             "devices": data["devices"]}
    (out / "data.json").write_text(json.dumps(plain, indent=1, default=str) + "\n")
    files.append(out / "data.json")
    return files


def main(argv: list[str] | None = None) -> int:
    from edgecsp import options as opt

    parser = opt.Parser(prog="python -m edgecsp.nightly report", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="history: SQLite file path or SQLAlchemy URL (default: the nightly's)")
    parser.add_argument("--html", type=opt.OutPath(), required=True, help="folder to write the site into")
    parser.add_argument("--nights", type=opt.positive_int(3650), default=14, help="nights in the trend charts (default 14)")
    args = parser.parse_args(argv)
    with History(args.db) as h:
        data = collect(h, max(args.nights, 1))
    files = write_site(data, args.html)
    print(f"dashboard: {args.html / 'index.html'} ({len(data['rows'])} rows, {len(data['devices'])} devices, "
          f"{len(files)} files)")
    return 0
