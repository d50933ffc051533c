"""The history's schema under Alembic, on SQLite and on a real PostgreSQL server: a database from
before migrations is upgraded in place, one from a newer edgecsp is refused, and many devices
opening and writing at once lose nothing."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pgserver
import pytest
from fleetenv import need

from edgecsp.bench.history import History, Record
from edgecsp.errors import EdgeCSPError

# The tables as edgecsp created them before migrations (SQLAlchemy create_all, schema mark "1").
OLD_SCHEMA = """
create table edgecsp_meta (key varchar(64) primary key, value text);
create table edgecsp_runs (id integer primary key autoincrement, started_at varchar(32) not null,
  finished_at varchar(32), suite varchar(255), device varchar(255) not null, hostname varchar(255),
  edgecsp_version varchar(32), status varchar(32), info text);
create table edgecsp_results (id integer primary key autoincrement, run_id integer not null references edgecsp_runs(id),
  recorded_at varchar(32) not null, device varchar(255) not null, job varchar(255) not null, model varchar(255),
  target varchar(64), precision varchar(16), scenario varchar(16), status varchar(16) not null, fps float,
  latency_p50_ms float, latency_p99_ms float, ap float, ap50 float, peak_rss_mb float, achieved_gbs float,
  error text, details text);
insert into edgecsp_meta values ('schema', '1');
insert into edgecsp_runs (started_at, device, status) values ('2026-01-01T00:00:00+00:00', 'old-dev', 'ok');
insert into edgecsp_results (run_id, recorded_at, device, job, status, fps)
  values (1, '2026-01-01T00:00:00+00:00', 'old-dev', 'demo/intel-cpu/int8/latency', 'ok', 42.5);
"""


def test_a_history_from_before_migrations_is_upgraded_in_place(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(OLD_SCHEMA)
    con.close()
    with History(db) as h:
        assert h.values("old-dev", "demo/intel-cpu/int8/latency", "fps", 5) == [42.5]  # kept
        run = h.start_run("new-dev", night="n1")
        h.record(run, "new-dev", Record(job="demo/intel-cpu/int8/latency", status="ok", fps=40.0))
        assert h.night_run("n1", "new-dev") == run and h.night_run("n1", "old-dev") is None
        assert [r["fps"] for r in h.night_results("n1")] == [40.0]
    con = sqlite3.connect(db)
    assert con.execute("select version_num from edgecsp_schema_version").fetchall() == [("0002",)]
    con.execute("update edgecsp_schema_version set version_num = '9999'")  # as a newer edgecsp would leave it
    con.commit()
    con.close()
    with pytest.raises(EdgeCSPError, match="schema revision this edgecsp does not know.*upgrade edgecsp"):
        History(db)


def _writer(url: str, device: str, n: int) -> None:
    with History(url) as h:  # every writer opens (and would migrate) at the same moment
        run = h.start_run(device, "concurrency", night="same-night")
        for i in range(n):
            h.record(run, device, Record(job=f"demo/onnxruntime/int8/latency-{i}", status="ok", fps=float(i)))


@pytest.fixture(scope="module")
def postgres_url():
    need(pgserver.missing())
    with pgserver.postgres() as url:
        yield url


def test_many_devices_writing_at_once_to_postgresql_lose_nothing(postgres_url):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(postgres_url, f"dev-{k}", 40)) for k in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    with History(postgres_url) as h:
        rows = h.night_results("same-night")
        assert len(rows) == 240 and h.count("runs") == 6
        for k in range(6):
            assert sorted(r["fps"] for r in rows if r["device"] == f"dev-{k}") == [float(i) for i in range(40)]
        run = h.night_run("same-night", "dev-3")
        h.reopen_run(run)
        h.finish_run(run, "ok")
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(text("select version_num from edgecsp_schema_version")).scalar_one() == "0002"
    engine.dispose()
