"""Stored responses: what ``POST /v1/responses`` keeps so a later call can go on from it.

OpenAI's Responses API stores a response unless the request says ``store: false``; a later
request names it in ``previous_response_id`` instead of sending the conversation again, and
``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items`` read and remove
it. This store keeps, for each stored response:

* the response object as it was answered (without ``x_router``: the receipt is the trace);
* its **input items**: the items of every earlier turn of its chain (their inputs and outputs)
  followed by its own input, in the Responses item format, each with an ``id``. Going on from a
  response is its input items, then its output, then the new input.

Every response holds its whole conversation, so deleting (or expiring) one never changes
another: a response that went on from a deleted one still holds its own copy of the turns
before it. A row belongs to the caller that made it (``caller``, a named caller or None for
the operator's keys); a named caller reads only its own. Rows older than ``retention_days`` are
deleted, as traces are.

Unlike a trace, a stored response is committed before its answer is sent (a client may go on
from it at once), in its own SQLite file beside the trace store, so its commit never waits on
the trace writer's batches. With the PostgreSQL trace store it is kept in the same database
instead (``postgres.PostgresResponseStore``), so any router can go on from a response another
answered. The methods block: the server calls them in a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import orjson

from .sqlite import _connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    caller TEXT,
    created_at_ms INTEGER NOT NULL,
    previous_response_id TEXT,
    response BLOB NOT NULL,
    input_items BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at_ms);
"""

_PURGE_EVERY_S = 60.0


class StoredResponse:
    """One stored response: its object as answered and its input items (its chain's whole
    conversation before its output)."""

    __slots__ = ("id", "trace_id", "caller", "created_at_ms", "previous_response_id", "response", "input_items")

    def __init__(self, id: str, trace_id: str, caller: str | None, created_at_ms: int,
                 previous_response_id: str | None, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        self.id, self.trace_id, self.caller = id, trace_id, caller
        self.created_at_ms, self.previous_response_id = created_at_ms, previous_response_id
        self.response, self.input_items = response, input_items

    def conversation(self) -> list[dict[str, Any]]:
        """The items a request that goes on from this response starts with."""
        return [*self.input_items, *(self.response.get("output") or [])]


_COLS = "id, trace_id, caller, created_at_ms, previous_response_id, response, input_items"


class SQLResponseStore:
    """The stored responses' reads and writes, in the SQL SQLite and PostgreSQL both speak; a
    subclass says how to connect (``_db``: a connection for one call, ``?`` placeholders through
    ``_q``) and how to insert or replace."""

    name = "sql"
    _UPSERT = ""  # (id, trace_id, caller, created_at_ms, previous_response_id, response, input_items)

    def __init__(self, path: str, *, retention_days: int | None = 30) -> None:
        self.path = path  # what logs name the store by: never a secret
        self.retention_days = retention_days
        self._last_purge = 0.0

    @contextmanager
    def _db(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _q(self, sql: str) -> str:
        return sql

    def _key(self, value: Any) -> Any:
        """A text value as the database can hold it."""
        return value

    @staticmethod
    def _entry(row: Any) -> StoredResponse:
        return StoredResponse(row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5]), orjson.loads(row[6]))

    def put(self, entry: StoredResponse) -> None:
        """Commit ``entry`` (a response id is a trace id: it is never reused)."""
        k = self._key
        row = (k(entry.id), entry.trace_id, k(entry.caller), entry.created_at_ms, k(entry.previous_response_id),
               orjson.dumps(entry.response), orjson.dumps(entry.input_items))
        with self._db() as db:
            db.execute(self._UPSERT, row)
            self._maybe_purge(db)

    def get(self, response_id: str, caller: str | None = None) -> StoredResponse | None:
        """The stored response, or None: none by that id, or (``caller`` named) another caller's."""
        with self._db() as db:
            row = db.execute(self._q(f"SELECT {_COLS} FROM responses WHERE id = ?"), (self._key(response_id),)).fetchone()
        if row is None or (caller is not None and row[2] != caller):
            return None
        if self.retention_days and row[3] < self._horizon_ms():
            return None  # expired, not purged yet
        return self._entry(row)

    def delete(self, response_id: str, caller: str | None = None) -> bool:
        """Delete it; False if there was none to delete (or, ``caller`` named, it is another's)."""
        with self._db() as db:
            if caller is None:
                cur = db.execute(self._q("DELETE FROM responses WHERE id = ?"), (self._key(response_id),))
            else:
                cur = db.execute(self._q("DELETE FROM responses WHERE id = ? AND caller = ?"),
                                 (self._key(response_id), self._key(caller)))
        return cur.rowcount > 0

    def count(self) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def entries(self) -> Iterator[StoredResponse]:
        """Every stored response, oldest first (``traces/copy.py``), a page at a time."""
        after: tuple[int, str] = (-1, "")
        while True:
            with self._db() as db:
                rows = db.execute(self._q(f"SELECT {_COLS} FROM responses WHERE created_at_ms > ? OR "
                                          "(created_at_ms = ? AND id > ?) ORDER BY created_at_ms, id LIMIT 200"),
                                  (after[0], after[0], after[1])).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._entry(row)
            after = (rows[-1][3], rows[-1][0])

    def purge(self, *, older_than_ms: int) -> int:
        with self._db() as db:
            return db.execute(self._q("DELETE FROM responses WHERE created_at_ms < ?"), (older_than_ms,)).rowcount

    def _horizon_ms(self) -> int:
        return int(time.time() * 1000) - int(self.retention_days or 0) * 86_400_000

    def _maybe_purge(self, db: Any) -> None:
        if not self.retention_days:
            return
        now = time.monotonic()
        if now - self._last_purge < _PURGE_EVERY_S:
            return
        self._last_purge = now
        db.execute(self._q("DELETE FROM responses WHERE created_at_ms < ?"), (self._horizon_ms(),))

    def close(self) -> None:
        pass


class ResponseStore(SQLResponseStore):
    """In their own SQLite file beside the trace store: one connection, used under a lock."""

    name = "sqlite"
    _UPSERT = f"INSERT OR REPLACE INTO responses ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)"

    def __init__(self, path: str | Path, *, retention_days: int | None = 30) -> None:
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, retention_days=retention_days)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                self._conn = _connect(self.path)
            yield self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def open_response_store(settings: Any) -> ResponseStore | None:
    """The store ``/v1/responses`` keeps responses in, or None where the operator turned it off
    (``[traces] store_responses = false``)."""
    if not getattr(settings, "store_responses", True):
        return None
    if getattr(settings, "trace_store", "sqlite") == "postgres":  # beside the traces, for every router
        from .postgres import PostgresResponseStore
        return PostgresResponseStore(settings.trace_dsn, retention_days=settings.retention_days)  # type: ignore[return-value]
    return ResponseStore(Path(settings.data_dir) / "responses.sqlite3", retention_days=settings.retention_days)


def page(items: list[Mapping[str, Any]], *, limit: int, order: str, after: str | None
         ) -> tuple[list[Mapping[str, Any]], bool] | None:
    """One page of ``items`` (``GET /v1/responses/{id}/input_items``): ``order`` asc or desc,
    starting after the item whose id is ``after``; None if no item has that id."""
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        for i, item in enumerate(ordered):
            if item.get("id") == after:
                start = i + 1
                break
        else:
            return None
    chunk = ordered[start:start + limit]
    return chunk, start + limit < len(ordered)
