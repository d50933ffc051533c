"""The history database: every nightly run and every job result, SQLAlchemy Core.

A SQLite file by default; any SQLAlchemy URL (postgresql://..., mysql+pymysql://...) for a
database shared by several devices. Append-only by design: the schema is kept by Alembic
migrations (edgecsp/bench/migrations) that only add, run on open under a lock (a PostgreSQL
advisory lock; SQLite's write lock), each result is committed on its own as soon as it exists (a
crash later in the run loses nothing recorded before it), and a database that holds tables but no
edgecsp schema mark is refused rather than written into.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker reads it
    from typing_extensions import Self

from edgecsp.errors import EdgeCSPError, first_line

SCHEMA_VERSION = "1"
METRICS = ("fps", "latency_p50_ms", "latency_p99_ms", "ap", "ap50", "peak_rss_mb", "achieved_gbs")


def database_url(spec: str | Path | None) -> str:
    """A SQLAlchemy URL from --db: a URL as is, a path as a SQLite file, None as the default file."""
    if spec is None:
        from edgecsp.paths import cache_dir

        path = cache_dir() / "nightly" / "history.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    spec = str(spec)
    if "://" in spec:
        return spec
    return f"sqlite:///{Path(spec).expanduser().resolve()}"


def _tables(metadata: Any) -> dict[str, Any]:
    from sqlalchemy import Column, Float, ForeignKey, Integer, String, Table, Text

    meta = Table("edgecsp_meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text))
    runs = Table(
        "edgecsp_runs", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("started_at", String(32), nullable=False),
        Column("finished_at", String(32)),
        Column("suite", String(255)),
        Column("device", String(255), nullable=False, index=True),
        Column("hostname", String(255)),
        Column("edgecsp_version", String(32)),
        Column("status", String(32)),  # running, ok, regression, failed, killed (closed by a later run)
        Column("info", Text),  # JSON: machine description, settings
        Column("night", String(128), index=True),  # fleet: the night this device's run belongs to (migration 0002)
    )
    results = Table(
        "edgecsp_results", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", Integer, ForeignKey("edgecsp_runs.id"), nullable=False, index=True),
        Column("recorded_at", String(32), nullable=False),
        Column("device", String(255), nullable=False, index=True),
        Column("job", String(255), nullable=False, index=True),  # model/target/precision/scenario
        Column("model", String(255)), Column("target", String(64)), Column("precision", String(16)),
        Column("scenario", String(16)),
        Column("status", String(16), nullable=False),  # ok, failed, skipped
        Column("fps", Float), Column("latency_p50_ms", Float), Column("latency_p99_ms", Float),
        Column("ap", Float), Column("ap50", Float), Column("peak_rss_mb", Float), Column("achieved_gbs", Float),
        Column("error", Text),
        Column("details", Text),  # JSON: the full benchmark/accuracy entry
    )
    return {"meta": meta, "runs": runs, "results": results}


@dataclass
class Record:
    job: str
    status: str  # ok, failed, skipped
    model: str = ""
    target: str = ""
    precision: str = ""
    scenario: str = ""
    fps: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    ap: float | None = None
    ap50: float | None = None
    peak_rss_mb: float | None = None
    achieved_gbs: float | None = None
    error: str | None = None
    details: dict | None = None


def _serialize_sqlite_writers(engine: Any) -> None:
    """Two nightly runs on one SQLite file: every transaction takes the write lock when it begins
    (BEGIN IMMEDIATE) and waits up to the connect timeout for it. With SQLite's default deferred
    transactions a reader that later writes fails at once with "database is locked" instead."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None  # the driver's own BEGIN would be deferred

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_MIGRATION_LOCK = 0x6564676563  # any constant: every edgecsp opening a PostgreSQL history takes the same lock
MIGRATIONS = Path(__file__).with_name("migrations")


def _migrate(conn: Any, shown: str) -> None:
    """Bring the schema to the newest revision this edgecsp knows (Alembic, inside ``conn``'s transaction)."""
    from alembic import command
    from alembic.config import Config
    from alembic.util.exc import CommandError

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    try:
        command.upgrade(cfg, "head")
    except CommandError as err:  # a revision this edgecsp does not know: written by a newer one
        raise EdgeCSPError(f"history database {shown} has a schema revision this edgecsp does not know ({err}); "
                           "upgrade edgecsp on this machine") from None


def _start_time(pid: int) -> float | None:
    """A process's start (clock ticks since boot, from /proc; psutil is optional on devices), or None
    when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie has exited
            return None
        return float(fields[19])  # field 22 of stat: starttime
    except (OSError, IndexError, ValueError):
        return None


def _this_process() -> dict[str, float]:
    """pid and start time: a later run tells a dead run from a live one (and from a reused pid)."""
    import os

    return {"pid": os.getpid(), "started_ticks": _start_time(os.getpid()) or 0.0}


def _process_alive(info: str | None) -> bool:
    try:
        process = json.loads(info or "{}").get("process") or {}
        pid, started = int(process["pid"]), float(process["started_ticks"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return True  # written by an older edgecsp: no way to tell, leave it
    if not started or _start_time(os.getpid()) is None:  # no /proc here: no way to tell, leave it
        return True
    now = _start_time(pid)
    return now is not None and now == started  # else gone, or the pid was reused


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class History:
    """``History(url)`` opens (and if new, initialises) the database, or raises EdgeCSPError."""

    def __init__(self, url: str | Path | None = None):
        from sqlalchemy import MetaData, create_engine, inspect, select
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

        self.url = database_url(url)
        try:
            shown = make_url(self.url).render_as_string(hide_password=True)
        except ArgumentError:
            shown = self.url
        self.shown = shown
        hint = "pass --db a SQLite file path or a SQLAlchemy URL (e.g. postgresql://user@host/db)"
        try:
            sqlite = self.url.startswith("sqlite")
            self.engine = create_engine(self.url, future=True, **({"connect_args": {"timeout": 60}} if sqlite else {}))
        except (ArgumentError, NoSuchModuleError, ModuleNotFoundError, ImportError) as err:
            raise EdgeCSPError(f"cannot open history database {shown} ({_short(err)}); {hint}") from None
        if self.engine.dialect.name == "sqlite":
            _serialize_sqlite_writers(self.engine)
        if self.engine.dialect.name == "sqlite":
            db = self.engine.url.database
            if db and db != ":memory:":
                path = Path(db)
                if path.is_dir():
                    raise EdgeCSPError(f"cannot open history database {shown}: {path} is a directory; {hint}")
                if not path.parent.is_dir():
                    raise EdgeCSPError(f"cannot open history database {shown}: folder {path.parent} does not exist; "
                                       f"create it or {hint}")
        self.metadata = MetaData()
        self.t = _tables(self.metadata)
        try:
            with self.engine.begin() as conn:  # one transaction: two first runs cannot both create
                if self.engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                existing = set(inspect(conn).get_table_names())
                ours = {t.name for t in self.t.values()}
                if existing and "edgecsp_meta" not in existing:
                    raise EdgeCSPError(f"history database {shown} holds other tables "
                                       f"({', '.join(sorted(existing)[:5])}) and no edgecsp history; {hint} "
                                       "(a new file is fine)")
                if existing and not ours <= existing:
                    raise EdgeCSPError(f"history database {shown} lacks edgecsp tables "
                                       f"{', '.join(sorted(ours - existing))}; it was not written by this edgecsp")
                _migrate(conn, shown)
                row = conn.execute(select(self.t["meta"].c.value).where(self.t["meta"].c.key == "schema")).first()
                if row is None:
                    conn.execute(self.t["meta"].insert().values(key="schema", value=SCHEMA_VERSION))
                elif row[0] != SCHEMA_VERSION:
                    raise EdgeCSPError(f"history database {shown} has schema {row[0]}, this edgecsp writes "
                                       f"{SCHEMA_VERSION}; use a new --db or upgrade edgecsp")
        except EdgeCSPError:
            self.engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as err:
            self.engine.dispose()
            raise EdgeCSPError(f"cannot open history database {shown} ({_short(err)}); {hint}") from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def start_run(self, device: str, suite: str = "", info: dict | None = None, hostname: str = "",
                  night: str | None = None) -> int:
        from edgecsp import __version__

        with self.engine.begin() as conn:
            res = conn.execute(self.t["runs"].insert().values(
                started_at=_now(), suite=suite, device=device, hostname=hostname, edgecsp_version=__version__,
                status="running", info=json.dumps({**(info or {}), "process": _this_process()}, default=str),
                night=night))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    def close_killed_runs(self, hostname: str) -> list[int]:
        """Mark 'killed' the runs of this host still 'running' whose process is gone (a SIGKILL, a
        power cut): their rows would otherwise say 'running' forever. Runs of other hosts are left
        alone (their pids mean nothing here), and so are runs whose process still lives."""
        from sqlalchemy import select

        runs = self.t["runs"]
        with self.engine.connect() as conn:
            rows = conn.execute(select(runs.c.id, runs.c.info).where(runs.c.status == "running",
                                                                     runs.c.hostname == hostname)).all()
        killed = [int(run_id) for run_id, info in rows if not _process_alive(info)]
        if killed:
            with self.engine.begin() as conn:
                conn.execute(runs.update().where(runs.c.id.in_(killed), runs.c.status == "running")
                             .values(finished_at=_now(), status="killed"))
        return killed

    def night_run(self, night: str, device: str) -> int | None:
        """The run of ``device`` in ``night`` (a fleet night restarted), or None."""
        from sqlalchemy import select

        runs = self.t["runs"]
        with self.engine.connect() as conn:
            row = conn.execute(select(runs.c.id).where(runs.c.night == night, runs.c.device == device)
                               .order_by(runs.c.id)).first()
        return None if row is None else int(row[0])

    def reopen_run(self, run_id: int, info: dict | None = None) -> None:
        runs = self.t["runs"]
        values: dict[str, Any] = {"status": "running", "finished_at": None}
        if info is not None:
            values["info"] = json.dumps(info, default=str)
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))

    def night_results(self, night: str) -> list[dict[str, Any]]:
        """Every result recorded in ``night``, oldest first."""
        from sqlalchemy import select

        r, runs = self.t["results"], self.t["runs"]
        q = select(r).join(runs, runs.c.id == r.c.run_id).where(runs.c.night == night).order_by(r.c.id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(q)]

    def record(self, run_id: int, device: str, rec: Record) -> int:
        """Insert one result and commit it at once."""
        values = {k: getattr(rec, k) for k in ("job", "status", "model", "target", "precision", "scenario", *METRICS,
                                               "error")}
        with self.engine.begin() as conn:
            res = conn.execute(self.t["results"].insert().values(
                run_id=run_id, recorded_at=_now(), device=device,
                details=json.dumps(rec.details, default=str) if rec.details is not None else None, **values))
            return int(res.inserted_primary_key[0])  # type: ignore[index]

    def finish_run(self, run_id: int, status: str) -> None:
        runs = self.t["runs"]
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(finished_at=_now(), status=status))

    # -- reading ---------------------------------------------------------------------------

    def values(self, device: str, job: str, metric: str, last_n: int, before_run: int | None = None) -> list[float]:
        """``metric`` of the last ``last_n`` successful results of ``job`` on ``device`` (newest first),
        from runs before ``before_run``."""
        from sqlalchemy import select

        if metric not in METRICS:
            raise EdgeCSPError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        r = self.t["results"]
        q = (select(r.c[metric]).where(r.c.device == device, r.c.job == job, r.c.status == "ok",
                                       r.c[metric].is_not(None))
             .order_by(r.c.run_id.desc(), r.c.id.desc()).limit(last_n))
        if before_run is not None:
            q = q.where(r.c.run_id < before_run)
        with self.engine.connect() as conn:
            return [float(v) for (v,) in conn.execute(q)]

    def baseline(self, device: str, job: str, metric: str, last_n: int, before_run: int | None = None,
                 method: str = "median") -> tuple[float | None, int]:
        """(baseline value, number of runs it is from); None when there is no history yet."""
        return aggregate(self.values(device, job, metric, last_n, before_run), metric, method)

    def series(self, device: str, job: str, metric: str, limit: int = 60) -> list[tuple[int, str, float]]:
        """(run id, recorded at, value) of successful results, oldest first: the trend plots."""
        from sqlalchemy import select

        r = self.t["results"]
        q = (select(r.c.run_id, r.c.recorded_at, r.c[metric])
             .where(r.c.device == device, r.c.job == job, r.c.status == "ok", r.c[metric].is_not(None))
             .order_by(r.c.run_id.desc(), r.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            rows = [(int(a), str(b), float(c)) for a, b, c in conn.execute(q)]
        return rows[::-1]

    def count(self, table: str = "results") -> int:
        from sqlalchemy import func, select

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.t[table])).scalar_one())

    def results(self, run_id: int) -> list[dict[str, Any]]:
        from sqlalchemy import select

        r = self.t["results"]
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(select(r).where(r.c.run_id == run_id).order_by(r.c.id))]


def aggregate(vals: list[float], metric: str, method: str = "median") -> tuple[float | None, int]:
    """(baseline, runs it is from) of ``vals`` (newest first); None when there are none."""
    if not vals:
        return None, 0
    if method == "median":
        return float(statistics.median(vals)), len(vals)
    if method == "mean":
        return float(statistics.fmean(vals)), len(vals)
    if method == "last":
        return vals[0], 1
    if method == "best":
        return (min(vals) if metric.startswith("latency") else max(vals)), len(vals)
    raise EdgeCSPError(f"unknown baseline method {method!r}; use median, mean, last or best")


def _short(err: BaseException) -> str:
    return first_line(getattr(err, "orig", None) or err, 200)
