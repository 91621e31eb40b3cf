"""The embedded trace store: one SQLite file in WAL mode, the default.

The writer and the reads are ``sqlstore.SQLStore``'s; this says how SQLite connects, creates
its tables (and adds the columns a store written by an earlier build lacks) and upserts.
Durability: WAL mode with ``synchronous=NORMAL`` keeps every committed transaction through a
crash of the process; a commit that fails with ``sqlite3.OperationalError`` (disk full, the
database locked by another process past the busy timeout, I/O) keeps its batch and retries.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .sqlstore import _COLUMNS, MAX_PAGE, SQLStore, decode_cursor, encode_cursor

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY,
    started_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER,
    status TEXT,
    kind TEXT,
    route TEXT,
    profile TEXT,
    policy_name TEXT,
    policy_identity TEXT,
    provider TEXT,
    model_family TEXT,
    served_model_id TEXT,
    tokens_in INTEGER,
    tokens_out INTEGER,
    tokens_cached INTEGER,
    cost_usd TEXT,
    cost_basis TEXT,
    total_ms REAL,
    ttft_ms REAL,
    catalog_digest TEXT,
    session TEXT,
    caller TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_started ON traces (started_at_ms DESC, trace_id DESC);
CREATE INDEX IF NOT EXISTS traces_policy ON traces (policy_identity, started_at_ms);
CREATE TABLE IF NOT EXISTS catalogs (
    digest TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL DEFAULT 0,
    snapshot TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sections (
    digest TEXT PRIMARY KEY,
    last_used_ms INTEGER NOT NULL,
    section TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SQLiteStore(SQLStore):
    name = "sqlite"
    _Error = sqlite3.Error
    _Transient = sqlite3.OperationalError
    _INSERT_TRACE = (f"INSERT OR REPLACE INTO traces ({', '.join(_COLUMNS)}, record) "
                     f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})")
    _INSERT_CATALOG = ("INSERT OR IGNORE INTO catalogs (digest, created_at_ms, last_used_ms, snapshot) "
                       "VALUES (?, ?, ?, ?)")
    _TOUCH_CATALOG = "UPDATE catalogs SET last_used_ms = MAX(last_used_ms, ?) WHERE digest = ?"
    _UPSERT_SECTION = ("INSERT INTO sections (digest, last_used_ms, section) VALUES (?, ?, ?) "
                       "ON CONFLICT(digest) DO UPDATE SET last_used_ms = MAX(last_used_ms, excluded.last_used_ms)")

    def __init__(self, path: str | Path, **kw: Any) -> None:
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, **kw)

    def _bootstrap(self) -> set[str]:
        conn = _connect(self.path)
        try:
            conn.executescript(_SCHEMA)
            have = {r[1] for r in conn.execute("PRAGMA table_info(traces)")}
            for column in ("session", "caller"):  # a store written before sessions or named callers
                if column not in have:
                    conn.execute(f"ALTER TABLE traces ADD COLUMN {column} TEXT")
            # only rows with a session (a caller) are in its index: a call without one pays no entry
            conn.execute("CREATE INDEX IF NOT EXISTS traces_session ON traces (session, started_at_ms) "
                         "WHERE session IS NOT NULL")
            conn.execute("CREATE INDEX IF NOT EXISTS traces_caller ON traces (caller, started_at_ms) "
                         "WHERE caller IS NOT NULL")
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', 'unhardcoded.trace/v1')")
            return {r[0] for r in conn.execute("SELECT digest FROM catalogs")}
        finally:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        return _connect(self.path)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        conn = _connect(self.path)
        try:
            yield conn
        finally:
            conn.close()


__all__ = ["MAX_PAGE", "SQLiteStore", "decode_cursor", "encode_cursor"]
