"""A trace store in PostgreSQL: one database that many routers write to and read from.

``[traces] store = "postgres"`` with a ``dsn`` (a libpq connection string or URI; its password
is better left to libpq's ``PGPASSWORD`` or ``~/.pgpass`` than written in the config). Every
router behind a load balancer then writes its receipts into the same tables, and ``/x/traces``,
replay, backtests, usage reports, session totals and caller budgets on any of them read what all
of them wrote.

The writer, the batching and the reads are ``sqlstore.SQLStore``'s, as for SQLite. What differs:

* the writer holds one connection and opens it again when it is lost: while the server cannot
  be reached, batches are kept and retried (``failing_since_ms``, ``/healthz``) exactly as a
  locked SQLite file is. A router does not start while its database cannot be reached: it says
  so in one line (``StoreUnavailable``) rather than serve calls it cannot keep receipts of;
* reads take a connection from a small pool (``psycopg_pool``), since opening one costs a
  server process;
* the tables are created under an advisory lock, so routers starting together do not race;
  text columns that are compared or ordered are ``COLLATE "C"``, so listings page in the same
  order as SQLite's;
* PostgreSQL's text cannot hold U+0000: in a summary column (a session name, say) it is stored,
  and matched in filters, as U+FFFD. The record itself is JSON, where it is escaped.
* a batch's rows go in by ``COPY`` into the writer's own temporary table and one
  ``INSERT ... SELECT ... ON CONFLICT`` from it (a quarter of the CPU of binding each row);
* ``shared = True``: a named caller's budget is read back from here, so it is spent once across
  routers (``Router.share_budget``); ``PostgresResponseStore`` keeps ``/v1/responses`` here too.

The DSN's password never reaches a log, ``/healthz`` or an error message: the store is named by
its DSN without it, and an error text that contains it has it replaced.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from psycopg import conninfo

from . import sqlstore
from .responses import _COLS as _RESPONSE_COLS, SQLResponseStore
from .sqlstore import _COLUMNS, _YIELD_ROWS, SQLStore, StoreUnavailable

# pg_advisory_xact_lock's key while the tables are created: any constant unlikely to be another
# application's ("unhc" in ASCII)
_BOOTSTRAP_LOCK = 0x756E6863
_PURGE_LOCK = _BOOTSTRAP_LOCK + 1  # held while one router deletes expired records

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT COLLATE "C" PRIMARY KEY,
    started_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT,
    status TEXT,
    kind TEXT,
    route TEXT,
    profile TEXT,
    policy_name TEXT,
    policy_identity TEXT COLLATE "C",
    provider TEXT,
    model_family TEXT,
    served_model_id TEXT,
    tokens_in BIGINT,
    tokens_out BIGINT,
    tokens_cached BIGINT,
    cost_usd TEXT,
    cost_basis TEXT,
    total_ms DOUBLE PRECISION,
    ttft_ms DOUBLE PRECISION,
    catalog_digest TEXT,
    session TEXT COLLATE "C",
    caller TEXT COLLATE "C",
    record TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS traces_started ON traces (started_at_ms DESC, trace_id DESC)",
    "CREATE INDEX IF NOT EXISTS traces_policy ON traces (policy_identity text_pattern_ops, started_at_ms)",
    "CREATE INDEX IF NOT EXISTS traces_session ON traces (session, started_at_ms) WHERE session IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS traces_caller ON traces (caller, started_at_ms) WHERE caller IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS catalogs (
    digest TEXT PRIMARY KEY,
    created_at_ms BIGINT NOT NULL,
    last_used_ms BIGINT NOT NULL DEFAULT 0,
    snapshot TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS sections (
    digest TEXT PRIMARY KEY,
    last_used_ms BIGINT NOT NULL,
    section TEXT NOT NULL
)""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    "INSERT INTO meta (key, value) VALUES ('schema', 'unhardcoded.trace/v1') ON CONFLICT (key) DO NOTHING",
)

_NUL = "\x00"
# a long read (a usage report) is streamed in chunks of this many rows: libpq 17 and later (the
# binary wheel's); an older libpq (a system one, under plain psycopg) streams row by row
_STREAM_ROWS = 500 if psycopg.pq.version() >= 170000 else 1
# the summary columns whose text comes from a request, a provider or the operator's catalog
# (the others are the router's own: ids, digests, enums, numbers): where U+0000 can appear
_FREE_TEXT = tuple(_COLUMNS.index(c) for c in ("route", "profile", "policy_name", "provider", "model_family",
                                               "served_model_id", "session", "caller"))




def redacted(dsn: str) -> str:
    """``dsn`` as logs may show it: the same connection, without its password."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql (unreadable DSN)"
    params.pop("password", None)
    user, host, port, db = (params.get(k) for k in ("user", "host", "port", "dbname"))
    where = f"{host or 'localhost'}{':' + str(port) if port else ''}"
    return f"postgresql://{user + '@' if user else ''}{where}/{db or ''}"


def _clean(value: Any) -> Any:
    return value.replace(_NUL, "\ufffd") if isinstance(value, str) and _NUL in value else value


class _Connections:
    """A DSN's connections: a pool made on first use (reads run in worker threads: one pool,
    however many start at once), and its password kept out of any text shown."""

    def __init__(self, dsn: str, size: int, connect_timeout_s: int, name: str) -> None:
        self.dsn = dsn
        self.secret = conninfo.conninfo_to_dict(dsn).get("password") or None
        self.kw = {"autocommit": True, "connect_timeout": connect_timeout_s, "application_name": "unhardcoded"}
        self.size, self.name = size, name
        self._pool: Any = None
        self._lock = threading.Lock()

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, **self.kw)

    @contextmanager
    def pooled(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool
                self._pool = ConnectionPool(self.dsn, min_size=1, max_size=self.size, kwargs=self.kw,
                                            name=self.name, timeout=3.0, open=True)
            pool = self._pool
        with pool.connection() as conn:
            yield conn

    def scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


class PostgresStore(SQLStore):
    name = "postgres"
    shared = True
    _Error = psycopg.Error
    _Transient = psycopg.OperationalError  # a lost connection, the server down, disk full, a deadlock
    # a batch's rows go in by COPY into a session table and one INSERT ... SELECT from it (no
    # _INSERT_TRACE: _insert_traces is its own): a quarter of the CPU of binding each row's 23
    # parameters (bench/stores.py)
    _COPY_IN = f"COPY traces_in ({', '.join(_COLUMNS)}, record) FROM STDIN"
    _MERGE_IN = (f"INSERT INTO traces ({', '.join(_COLUMNS)}, record) SELECT {', '.join(_COLUMNS)}, record "
                 "FROM traces_in ON CONFLICT (trace_id) DO UPDATE SET "
                 + ", ".join(f"{c} = EXCLUDED.{c}" for c in (*_COLUMNS[1:], "record")))
    _INSERT_CATALOG = ("INSERT INTO catalogs (digest, created_at_ms, last_used_ms, snapshot) "
                       "VALUES (%s, %s, %s, %s) ON CONFLICT (digest) DO NOTHING")
    _TOUCH_CATALOG = "UPDATE catalogs SET last_used_ms = GREATEST(last_used_ms, %s) WHERE digest = %s"
    _UPSERT_SECTION = ("INSERT INTO sections (digest, last_used_ms, section) VALUES (%s, %s, %s) "
                       "ON CONFLICT (digest) DO UPDATE SET last_used_ms = "
                       "GREATEST(sections.last_used_ms, EXCLUDED.last_used_ms)")

    def __init__(self, dsn: str, *, pool_size: int = 4, connect_timeout_s: int = 10, **kw: Any) -> None:
        if not dsn:
            raise ValueError("the postgres trace store needs a DSN ([traces] dsn)")
        self._conn = _Connections(dsn, pool_size, connect_timeout_s, "unhardcoded-traces")
        self._queries: dict[str, str] = {}
        super().__init__(redacted(dsn), **kw)

    # ---- the dialect ---------------------------------------------------------
    def _bootstrap(self) -> set[str]:
        try:
            with self._guarded(), self._conn.connect() as conn:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_BOOTSTRAP_LOCK,))
                    for statement in _SCHEMA:
                        conn.execute(statement)
                return {r[0] for r in conn.execute("SELECT digest FROM catalogs")}
        except psycopg.Error as exc:
            text = " ".join(str(exc).split())
            raise StoreUnavailable(f"cannot open the trace store {self.path}: {text}") from None

    def _open(self) -> psycopg.Connection:
        with self._guarded():
            conn = self._conn.connect()
            try:  # the writer's own staging table: emptied by every commit
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS traces_in (LIKE traces) ON COMMIT DELETE ROWS")
                # as SQLite's busy timeout: a commit stuck behind another session's lock gives up
                # (an OperationalError: the batch is kept and tried again) instead of waiting for ever
                conn.execute("SET statement_timeout = 30000")
            except BaseException:
                conn.close()
                raise
            return conn

    def _insert_traces(self, conn: Any, rows: list[tuple]) -> None:
        if len({r[0] for r in rows}) < len(rows):  # one statement cannot touch a row twice: the last wins
            rows = list({r[0]: r for r in rows}.values())
        cur = conn.cursor()
        with cur.copy(self._COPY_IN) as copy:
            for i, row in enumerate(rows, 1):
                copy.write_row(row)
                if i % _YIELD_ROWS == 0:
                    sqlstore._yield_cpu()
        cur.execute(self._MERGE_IN)

    def purge(self, *, older_than_ms: int, conn: Any = None, batch: int = 1000) -> int:
        """As ``SQLStore.purge``, by one router at a time: every router sharing the database
        runs its retention purge, and two deleting the same old rows at once would only wait
        on (or deadlock over) each other's row locks. While another holds the purge's advisory
        lock, this does nothing (0) and its next round tries again."""
        if conn is None:
            with self._read_conn() as own:
                return self.purge(older_than_ms=older_than_ms, conn=own, batch=batch)
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (_PURGE_LOCK,)).fetchone()[0]:
            return 0
        try:
            return super().purge(older_than_ms=older_than_ms, conn=conn, batch=batch)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_PURGE_LOCK,))

    def _broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Connection]:
        with self._guarded(), self._conn.pooled() as conn:
            yield conn

    def _q(self, sql: str) -> str:
        got = self._queries.get(sql)
        if got is None:
            got = self._queries[sql] = sql.replace("?", "%s")
            if len(self._queries) > 512:  # filters combine into a bounded set of texts; bound it anyway
                self._queries.clear()
        return got

    def _rows(self, conn: Any, sql: str, args: Any) -> Any:
        return conn.cursor().stream(self._q(sql), args, size=_STREAM_ROWS)

    def _executemany(self, conn: Any, sql: str, rows: list[Any]) -> None:
        conn.cursor().executemany(sql, rows)

    def _bind(self, rows: list[tuple]) -> list[tuple]:
        out = rows
        for i, row in enumerate(rows):
            for k in _FREE_TEXT:
                v = row[k]
                if type(v) is str and _NUL in v:
                    if out is rows:
                        out = list(rows)
                    out[i] = tuple(_clean(v) for v in row)
                    break
        return out

    def _args(self, args: list[Any]) -> list[Any]:
        return [_clean(a) for a in args]

    # ---- secrets -------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return self._conn.scrub(text)

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """Errors raised inside, with the DSN's password (if any) taken out of their text."""
        try:
            yield
        except psycopg.Error as exc:
            if self._conn.secret and self._conn.secret in str(exc):
                raise type(exc)(self._conn.scrub(str(exc))) from None
            raise

    def close(self) -> None:
        super().close()
        self._conn.close()


_RESPONSES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
    id TEXT COLLATE "C" PRIMARY KEY,
    trace_id TEXT NOT NULL,
    caller TEXT COLLATE "C",
    created_at_ms BIGINT NOT NULL,
    previous_response_id TEXT,
    response BYTEA NOT NULL,
    input_items BYTEA NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at_ms)",
)


class PostgresResponseStore(SQLResponseStore):
    """``/v1/responses``' stored responses in the trace store's database (``traces/responses.py``
    says what is kept), so a call to any router can go on from a response another answered.
    Each method is one statement in autocommit: a response is committed before its answer is
    sent. A database that cannot be reached is ``StoreUnavailable`` (a 503), never the
    driver's error."""

    name = "postgres"
    _UPSERT = (f"INSERT INTO responses ({_RESPONSE_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
               "ON CONFLICT (id) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in (
                   "trace_id", "caller", "created_at_ms", "previous_response_id", "response", "input_items")))

    def __init__(self, dsn: str, *, retention_days: int | None = 30, pool_size: int = 4,
                 connect_timeout_s: int = 10) -> None:
        super().__init__(redacted(dsn), retention_days=retention_days)
        self._conn = _Connections(dsn, pool_size, connect_timeout_s, "unhardcoded-responses")
        with self._db() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_BOOTSTRAP_LOCK,))
            for statement in _RESPONSES_SCHEMA:
                conn.execute(statement)

    @contextmanager
    def _db(self) -> Iterator[psycopg.Connection]:
        try:
            with self._conn.pooled() as conn:
                yield conn
        except psycopg.Error as exc:
            text = " ".join(self._conn.scrub(f"{type(exc).__name__}: {exc}").split())
            raise StoreUnavailable(f"the response store {self.path} cannot be used now ({text})") from None

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _key(self, value: Any) -> Any:
        return _clean(value)

    def close(self) -> None:
        self._conn.close()


__all__ = ["PostgresResponseStore", "PostgresStore", "StoreUnavailable", "redacted"]
