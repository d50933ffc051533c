"""The fleet dashboard in a real headless Chromium: it loads without console errors, and the
numbers on it are the database's (a planted history of several nights, devices and outcomes)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import browser
import pytest
from fleetenv import need
from testpaths import REPO

from edgecsp.bench.history import History, Record
from edgecsp.fleet.dashboard import COLUMNS, collect, write_site

DOCS_SHOT = REPO / "docs" / "fleet.png"


def plant(db: Path) -> None:
    """Five nights of two devices; night 5: a regression, a failure, a target with no device, a dark device."""
    jobs = {"jetson-orin-nano-01": ["demo/jetson-orin-nano/int8/latency", "demo/jetson-orin-nano/fp16/latency"],
            "x86-rack-02": ["demo/onnxruntime/int8/latency", "demo/intel-cpu/int8/latency"],
            "x86-rack-03": ["demo/onnxruntime/int8/latency"]}
    with History(db) as h:
        for n in range(1, 6):
            night = f"edge-nightly-2026-11-{n:02d}"
            for device, keys in jobs.items():
                if device == "x86-rack-03" and n == 5:
                    continue  # went dark
                info = {"device": {"name": device, "model": "Jetson Orin Nano" if "jetson" in device else "Xeon",
                                   "arch": "aarch64" if "jetson" in device else "x86_64",
                                   "backends": {"onnxruntime": "1.22.0", **({"tensorrt": "10.3.0"} if "jetson" in device
                                                                            else {"openvino": "2025.2.0"})},
                                   "jetson": {"jetpack": "6.2"} if "jetson" in device else None,
                                   "python": "3.10.12",
                                   "targets": sorted({k.split("/")[1] for k in keys})}}
                run = h.start_run(device, "edge-nightly", info, device, night=night)
                for i, key in enumerate(keys):
                    _, target, precision, scenario = key.split("/")
                    fps = 100.0 + 10 * i + n * 0.37
                    if device == "x86-rack-02" and i == 0 and n == 5:
                        fps = 70.0  # 30% slower: a regression
                    rec = Record(job=key, status="ok", model="demo", target=target, precision=precision,
                                 scenario=scenario, fps=fps, latency_p99_ms=12.0 + n * 0.013 + i,
                                 ap50=0.9 - 0.0011 * n, achieved_gbs=1.5 + 0.01 * n)
                    if device == "jetson-orin-nano-01" and i == 1 and n == 5:
                        rec = Record(job=key, status="failed", model="demo", target=target, precision=precision,
                                     scenario=scenario, error="device lost (NodeDiedError)")
                    h.record(run, device, rec)
                h.finish_run(run, "ok")
        run = h.start_run("(no live device)", "edge-nightly", {}, "", night="edge-nightly-2026-11-05")
        h.record(run, "(no live device)", Record(job="demo/jetson-agx-orin/int8/latency", status="no-device",
                                                 model="demo", target="jetson-agx-orin", precision="int8",
                                                 scenario="latency", error="no live device serves target jetson-agx-orin"))


def expected(db: Path) -> dict[tuple[str, str], dict]:
    """The latest row per (device, job), read from the database directly."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = {}
    for r in con.execute("select * from edgecsp_results order by id"):
        rows[(r["device"], r["job"])] = dict(r)
    con.close()
    return rows


def test_dashboard_in_chromium_shows_the_databases_numbers(tmp_path):
    need(browser.missing())
    db = tmp_path / "history.sqlite"
    plant(db)
    with History(db) as h:
        data = collect(h, nights=14)
    site = tmp_path / "site"
    write_site(data, site)
    want = expected(db)
    with browser.Browser() as b:
        b.load((site / "index.html").as_uri())
        assert b.errors() == []
        shown = b.evaluate("""JSON.stringify([...document.querySelectorAll('tr[data-job]')].map(tr => ({
            device: tr.dataset.device, job: tr.dataset.job, cls: tr.className,
            trend: tr.querySelectorAll('svg.trend circle').length,
            cells: Object.fromEntries([...tr.querySelectorAll('td[data-metric]')].map(td =>
                [td.dataset.metric, td.textContent]))})))""")
        shown = json.loads(shown)
        assert len(shown) == len(want) == 6
        for row in shown:
            db_row = want[(row["device"], row["job"])]
            for column, _, spec in COLUMNS:
                value = db_row[column]
                assert row["cells"][column] == ("-" if value is None else format(value, spec)), (row, column)
        cls = {(r["device"], r["job"]): r["cls"] for r in shown}
        assert cls[("x86-rack-02", "demo/onnxruntime/int8/latency")] == "regression"
        assert cls[("jetson-orin-nano-01", "demo/jetson-orin-nano/fp16/latency")] == "failed"
        assert cls[("(no live device)", "demo/jetson-agx-orin/int8/latency")] == "no-device"
        assert cls[("x86-rack-02", "demo/intel-cpu/int8/latency")] == "ok"
        trend = {(r["device"], r["job"]): r["trend"] for r in shown}
        assert trend[("x86-rack-02", "demo/onnxruntime/int8/latency")] == 5  # five nights of FPS
        assert trend[("x86-rack-03", "demo/onnxruntime/int8/latency")] == 4
        dark = b.evaluate("document.querySelector('tr[data-device-row=\"x86-rack-03\"] td:nth-child(3)').textContent")
        assert "not seen since edge-nightly-2026-11-04" in dark
        shot = tmp_path / "fleet.png"
        b.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        b.load((site / "devices" / "x86-rack-02.html").as_uri())
        assert b.errors() == []
        assert "onnxruntime 1.22.0" in b.evaluate("document.body.textContent")
        assert b.evaluate("document.querySelectorAll('tr[data-job]').length") == 2
    if not DOCS_SHOT.exists():  # the screenshot in docs/fleet.md comes from this test (delete it to renew)
        DOCS_SHOT.write_bytes(shot.read_bytes())


@pytest.mark.parametrize("bad", ["<script>alert(1)</script>"])
def test_dashboard_escapes_what_devices_report(tmp_path, bad):
    db = tmp_path / "h.sqlite"
    with History(db) as h:
        run = h.start_run(bad, "s", {"device": {"model": bad}}, bad, night="n")
        h.record(run, bad, Record(job="demo/onnxruntime/fp32/latency", status="failed", error=bad))
        data = collect(h)
    write_site(data, tmp_path / "site")
    page = (tmp_path / "site" / "index.html").read_text()
    assert bad not in page and "&lt;script&gt;" in page
