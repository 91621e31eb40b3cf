"""What the trace stores share: a writer that batches records off the request path, and the
reads, in the SQL that SQLite and PostgreSQL both speak. ``sqlite.SQLiteStore`` (the embedded
default, WAL mode) and ``postgres.PostgresStore`` (one database for many routers) say how to
connect, create their tables and upsert.

``submit(run)`` appends the finished run to an inbox and returns: no
serialisation, no I/O, no lock wait on the request path. Inside an event loop
the records are built by one callback scheduled with ``call_soon``, so it runs
after the step that finished the run (and handed its response to the server);
the runs that finished in the same turn of the loop are built together. One
writer thread only commits: it sleeps until there is something to write, then
commits everything built during the next ``flush_ms`` (default 100 ms), or sooner
once ``batch_max`` records are waiting, one transaction per ``batch_max`` records.
It runs under SCHED_IDLE where it can be raised again, and is raised while a full
batch waits, or when a batch is still not committed ``10 * flush_ms`` after its
first record (other work kept the core busy; ``writer_priority.py``). Building in the
loop rather than in the writer keeps the two threads from trading the
interpreter lock per record (each hand-over cost more than the record, and a
record built in the thread could hold the lock for a whole switch interval
while a request waited); the writer holds the lock only to bind a batch's rows.
Outside an event loop (tools, tests, other threads) ``submit`` builds at once.

Durability, stated precisely: a committed transaction survives a crash of the router's
process (``kill -9``; SQLite in WAL mode with ``synchronous=NORMAL``, PostgreSQL as its server
is configured); what a
crash can lose is what was submitted and not yet committed — in steady state
the runs of the last flush interval (while other work keeps the core busy and an
idle writer waits for it, up to ``batch_max`` runs or ``10 * flush_ms``, whichever
comes first), and never more than ``max_pending``
(default 2048) runs: when the writer falls that far behind, ``submit`` waits
for it (backpressure) rather than let the exposure grow. A transaction commits
whole or not at all, so no record is ever torn. A clean shutdown (``close()``)
builds and commits everything first and loses nothing.

A commit that fails for a reason that can pass (the dialect's ``_Transient``: disk
full, locked past the busy timeout, I/O, a lost connection) keeps its batch and retries with a
doubling pause; ``failing_since_ms`` and ``last_error`` say so meanwhile. While
failing, at most ``max_pending`` runs are kept (``_shed`` drops the oldest, and
``submit`` never waits for room). What is given up is counted in ``dropped``
and logged.

A read the database cannot answer (down, refusing connections) raises ``StoreUnavailable``,
which the server answers as a 503 ``store_unavailable``; the driver's own error is logged.

Decisions and policy sections are content-addressed too: many runs share one
decision (same policy, catalog, state and request shape) and one policy, so a
record stores their digests and each section is written once to ``sections``;
reading a record puts them back. A policy the store has not seen recently is the
exception: its first record keeps its policy section inline (see
``_policy_inline``), since a policy built per request seldom comes back.

Retention: the writer deletes records older than ``retention_days`` in small
batches between writes; routing never waits for it. A catalog or section is
deleted once no kept record can refer to it: its ``last_used_ms`` is stamped
"used until" a minute ahead and renewed once that has passed, not on every
commit.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from .record import COLUMNS, build_record, canonical, dump_record, inflate_shared, stored_form, summary_row
from .writer_priority import WriterPriority

log = logging.getLogger("unhardcoded.traces")

# A commit that fails for a reason that can pass (disk full, the database locked by another
# process past the busy timeout, an I/O error, a lost connection) keeps its batch and is
# tried again after a pause that doubles from the first to the last of these (seconds).
_RETRY_FIRST_S = 0.1
_RETRY_MAX_S = 5.0

_COLUMNS = COLUMNS
_HEX = "0123456789abcdef"

# The writer inserts a batch a few rows at a time and offers the core back in between: on a
# core it shares with the event loop, a request that arrives while the writer runs would
# otherwise wait for the rest of the writer's time slice (milliseconds) before its loop runs.
_YIELD_ROWS = 16

# A catalog's or section's ``last_used_ms`` says "referenced by records up to this time"; the
# retention purge drops those last used before its horizon. Rewriting it on every commit
# rewrote the whole row each time (a catalog snapshot is tens of KB), ten times a second. It is
# written as "used until now + this" instead, and rewritten only once that has passed: every
# record committed meanwhile started before the stamp, so the purge rule still holds; what is
# kept longer is at most this much.
_TOUCH_AHEAD_MS = 60_000
_yield_cpu = getattr(os, "sched_yield", lambda: time.sleep(0))


class _Settled:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


class _Batch:
    """One transaction's worth: rows built so far and what they refer to."""

    __slots__ = ("rows", "catalogs", "used_catalogs", "sections", "barriers", "items", "settled")

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.catalogs: dict[str, Any] = {}
        self.used_catalogs: dict[str, Any] = {}  # digest -> the catalog, for every row that names one
        self.sections: dict[str, str] = {}
        self.barriers: list[Any] = []
        self.items = 0
        self.settled = _Settled()  # set once committed (or given up on); all a timer keeps of it


def _name_os_thread(name: str) -> None:
    """Give the calling thread an OS-level name (Linux; elsewhere, or if refused, nothing)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


MAX_PAGE = 1000  # the most records one list() call returns (GET /x/traces and the CLI both hold to it)


def _in_int64(ms: int) -> int:
    """A time bound as the database can bind it (a 64-bit integer; SQLite refuses a larger Python
    int with OverflowError, PostgreSQL compares it as numeric and leaves the index). No record
    starts outside that range, so a bound past it filters as its end does."""
    return max(-(1 << 63), min(ms, (1 << 63) - 1))


def encode_cursor(started_at_ms: int, trace_id: str) -> str:
    return base64.urlsafe_b64encode(f"{started_at_ms}:{trace_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    pad = "=" * (-len(cursor) % 4)
    try:
        ms, tid = base64.urlsafe_b64decode(cursor + pad).decode().split(":", 1)
        return int(ms), tid
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("malformed cursor") from exc


class StoreUnavailable(ConnectionError):
    """The database cannot be reached or read now (an ``OSError``: the CLI prints it in one line
    and exits 2; the server answers 503 ``store_unavailable``)."""


class SQLStore:
    """The writer and the reads; a subclass names its dialect: how to connect and create its
    tables (``_bootstrap``, ``_open``, ``_reading``), its placeholders (``_q``), its upserts and
    which of its errors can pass."""

    name = "sql"
    shared = False  # whether other routers write to the same store (their callers' spend is read back)
    _Error: type[Exception] = Exception      # any failure the database reports
    _Transient: type[Exception] = Exception  # ... that can pass: the batch is kept and tried again
    _INSERT_TRACE = ""     # (columns..., record): insert, or replace the row of that trace id
    _INSERT_CATALOG = ""   # (digest, created_at_ms, last_used_ms, snapshot): insert unless there
    _TOUCH_CATALOG = ""    # (until, digest): last_used_ms = the later of the two
    _UPSERT_SECTION = ""   # (digest, last_used_ms, section): insert, or keep the later stamp

    def __init__(self, path: str, *, capture_content: bool = False, retention_days: int | None = 30,
                 flush_ms: int = 100, batch_max: int = 512, max_pending: int = 2048,
                 writer_scheduling: str = "idle") -> None:
        self.path = path  # what logs and /healthz name the store by: never a secret
        self.capture_content = capture_content
        self.retention_days = retention_days
        self.flush_ms = flush_ms
        self.overdue_s = 10 * flush_ms / 1000.0  # a batch still not committed then raises an idle writer
        self.batch_max = batch_max
        self.max_pending = max_pending
        self.priority = WriterPriority(writer_scheduling)  # the writer thread's share of the core
        self._pending = 0
        self._room = threading.Condition()
        self._inbox: "deque[Any]" = deque()       # submitted, not built yet
        self._build_lock = threading.Lock()      # one builder at a time; guards _batch
        self._batch = _Batch()                   # built, not committed yet: the open batch
        self._sealed: "deque[_Batch]" = deque()  # full batches (batch_max runs each) before it
        self._build_scheduled = False
        self._wake = threading.Event()           # the writer has something to commit
        self._urgent = threading.Event()         # ... and should not wait for the interval
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._known_catalogs: set[str] = set()
        self._touched_until: dict[str, int] = {}  # digest -> its last_used_ms as last written (writer only)
        self._lock = threading.Lock()
        self.written = 0
        self.errors = 0                          # commits that failed (each kept batch counts per try)
        self.dropped = 0                         # runs given up on: never written
        self.failing_since_ms: int | None = None  # the store cannot commit since then (None: it can)
        self.last_error: str | None = None
        self._halt = threading.Event()           # close(): end a retry pause at once
        self._last_purge = 0.0
        self._decision_text: "OrderedDict[str, str]" = OrderedDict()  # digest -> JSON, recent ones
        self._policies_seen: "OrderedDict[str, None]" = OrderedDict()  # policy section digests, recent ones
        self._known_catalogs = self._bootstrap()

    # ---- the dialect ---------------------------------------------------------
    def _bootstrap(self) -> set[str]:
        """Create what is missing; the digests of the catalogs already stored."""
        raise NotImplementedError

    def _open(self) -> Any:
        """A connection for the writer, in autocommit mode (it sends BEGIN and COMMIT itself)."""
        raise NotImplementedError

    def _broken(self, conn: Any) -> bool:
        """Whether the writer's connection is lost and must be opened again."""
        return False

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """A connection for one read."""
        raise NotImplementedError
        yield

    @contextmanager
    def _read_conn(self) -> Iterator[Any]:
        """A connection for one read; a failure of the database while reading is logged and
        raised as ``StoreUnavailable`` (the server's 503), never as the driver's own error."""
        try:
            with self._reading() as conn:
                yield conn
        except self._Error as exc:
            log.warning("trace store %s cannot be read: %s", self.path, self._scrub(f"{type(exc).__name__}: {exc}"))
            raise StoreUnavailable(f"the trace store {self.path} cannot be read now") from None

    def _scrub(self, text: str) -> str:
        """``text`` without any secret of the store's (a password in its DSN)."""
        return text

    def _q(self, sql: str) -> str:
        """``sql`` with ``?`` placeholders, as the driver takes it."""
        return sql

    def _rows(self, conn: Any, sql: str, args: Any) -> Any:
        """Iterate the rows of a query that may select many, without holding them all."""
        return conn.execute(self._q(sql), args)

    def _executemany(self, conn: Any, sql: str, rows: list[Any]) -> None:
        conn.executemany(sql, rows)

    def _insert_traces(self, conn: Any, rows: list[tuple]) -> None:
        """Insert (or replace) a batch's trace rows, offering the core back every few rows."""
        for i in range(0, len(rows), _YIELD_ROWS):
            self._executemany(conn, self._INSERT_TRACE, rows[i:i + _YIELD_ROWS])
            _yield_cpu()

    def _bind(self, rows: list[tuple]) -> list[tuple]:
        """A batch's rows as the database takes them."""
        return rows

    def _args(self, args: list[Any]) -> list[Any]:
        """A query's arguments as the database takes them."""
        return args


    # ---- writing ------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._run, name="trace-writer", daemon=True)
                self._writer.start()

    def submit(self, run: Any) -> None:
        if self._writer is None or not self._writer.is_alive():
            self.start()
        if self._pending >= self.max_pending:
            self._build()          # what waits in the inbox counts too: build it so it can be committed
            if self.failing_since_ms is None:
                self._urgent.set()
                with self._room:  # a writer that starts failing meanwhile ends the wait
                    self._room.wait_for(lambda: self._pending < self.max_pending
                                        or self.failing_since_ms is not None, timeout=30)
            if self.failing_since_ms is not None and self._pending >= self.max_pending:
                self._shed()       # the store cannot write: waiting for it would stall every call
        with self._room:
            self._pending += 1
        self._inbox.append(run)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._build()
        elif not self._build_scheduled:
            self._build_scheduled = True
            loop.call_soon(self._build)

    def _shed(self) -> None:
        """While commits fail, keep at most ``max_pending`` runs: drop the oldest kept batches
        (counted in ``dropped``), so memory stays bounded and no call waits for a store that
        cannot write."""
        shed = 0
        with self._build_lock:
            while self._sealed and self._pending - shed >= self.max_pending:
                batch = self._sealed.popleft()
                shed += batch.items
                self._settle(batch)
        if shed:
            self.dropped += shed
            log.error("trace store %s still cannot commit (%s): dropped the %d oldest runs kept for it",
                      self.path, self.last_error, shed)

    @property
    def pending(self) -> int:
        """Runs handed over and not yet committed (what a crash right now would lose)."""
        return self._pending

    def submit_record(self, record: Mapping[str, Any], catalog: Any = None) -> None:
        """Store an already-built record (flows, imports)."""
        self.submit(("record", record, catalog))

    def _build(self) -> None:
        """Turn every run in the inbox into a row of the open batch; wake the writer."""
        self._build_scheduled = False
        inbox = self._inbox
        if not inbox:
            return
        sealed = False
        with self._build_lock:
            batch = self._batch
            opened = batch.items == 0
            was_empty = opened and not self._sealed
            while True:
                try:
                    item = inbox.popleft()
                except IndexError:
                    break
                self._take(batch, item)
                if batch.items >= self.batch_max:  # a transaction's worth: the writer commits it as one
                    self._sealed.append(batch)
                    batch = self._batch = _Batch()
                    sealed = True
            if sealed:
                self.priority.boost()  # a batch behind: the writer needs the core now
            fresh = batch.items > 0 and (opened or sealed)  # the open batch got its first runs here
        if sealed:
            self._urgent.set()
        if was_empty or sealed:
            self._wake.set()
        if fresh and self.priority.may_idle:
            try:  # the loop runs at the server's policy: it can tell when the idle writer is starved
                asyncio.get_running_loop().call_later(self.overdue_s, self._overdue, batch.settled)
            except RuntimeError:  # outside a loop: the caller's own flush() raises the writer
                pass

    def _overdue(self, settled: "_Settled") -> None:
        """A batch opened ``overdue_s`` ago is not committed yet: other work has kept the core
        from the idle writer. Raise it until it has caught up, so what a crash could lose stays
        bounded in time as well as in runs. (The timer keeps only the batch's flag, not its rows.)"""
        with self._build_lock:
            if settled.done:
                return
            self.priority.boost()
        self._urgent.set()
        self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted so far is committed."""
        if self._writer is None or not self._writer.is_alive():
            self.start()
        self._build()
        done = threading.Event()
        with self._build_lock:
            self._batch.barriers.append(done)
            self.priority.boost()  # someone waits for it
        self._urgent.set()
        self._wake.set()
        return done.wait(timeout)

    def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._build()
            with self._build_lock:
                self.priority.boost()
            self._stopping = True
            self._halt.set()
            self._urgent.set()
            self._wake.set()
            self._writer.join(timeout=30)
        self._writer = None
        self._stopping = False
        self._halt.clear()

    def _run(self) -> None:
        _name_os_thread("trace-writer")  # so top -H and the benchmarks can tell it from the rest
        self.priority.start()
        conn: Any = None
        backoff = 0.0
        try:
            while True:
                self._wake.wait()
                # let the interval's records gather: one transaction per interval, not per record
                if not self._stopping:
                    self._urgent.wait(self.flush_ms / 1000.0)
                stop = self._stopping
                self._wake.clear()   # cleared before the swap: a record built after it wakes us again
                self._urgent.clear()
                if stop:
                    self._build()
                with self._build_lock:
                    batches = [*self._sealed, self._batch]
                    self._sealed.clear()
                    self._batch = _Batch()
                kept: list[_Batch] = []
                conn = self._connection(conn)
                for batch in batches:  # one transaction each; its runs settle (and a waiting submit goes on) after it
                    if kept or self._commit(conn, batch) == "kept":
                        kept.append(batch)  # a commit failed: this batch and the ones after it wait, in order
                if kept and stop:  # closing: one more try each, then what still fails is given up
                    conn = self._connection(conn)
                    lost = sum(b.items for b in kept if self._commit(conn, b, last=True) != "written")
                    if lost:
                        log.error("trace store %s: %d runs could not be written before closing (%s)",
                                  self.path, lost, self.last_error)
                    kept = []
                if kept:
                    with self._build_lock:
                        self._sealed.extendleft(reversed(kept))  # before anything built meanwhile
                    self._wake.set()
                    backoff = min(_RETRY_MAX_S, backoff * 2) if backoff else _RETRY_FIRST_S
                    self._halt.wait(backoff)
                    continue
                backoff = 0.0
                with self._build_lock:
                    if not self._sealed:
                        self.priority.rest()  # caught up
                if stop:
                    return
                self._maybe_purge(conn)
        finally:
            if conn is not None:
                self._close_quietly(conn)

    def _connection(self, conn: Any) -> Any:
        """The writer's connection: ``conn``, or a new one where it is lost or was never opened
        (None, with the store marked failing, while the database cannot be reached)."""
        if conn is not None and not self._broken(conn):
            return conn
        if conn is not None:
            self._close_quietly(conn)
        try:
            return self._open()
        except self._Error as exc:
            self._failing(exc)
            return None

    def _close_quietly(self, conn: Any) -> None:
        try:
            conn.close()
        except self._Error:
            pass

    def _failing(self, exc: BaseException) -> None:
        """Note a failure that can pass: the store is failing since now, if it was not already."""
        self.last_error = self._scrub(f"{type(exc).__name__}: {exc}")
        if self.failing_since_ms is None:
            self.failing_since_ms = int(time.time() * 1000)
            log.warning("trace store %s cannot commit (%s); keeping the runs and trying again",
                        self.path, self._scrub(self.last_error))
            with self._room:
                self._room.notify_all()  # a submit waiting for room should not wait for this

    def _write(self, conn: Any, items: list[Any]) -> None:
        """Build and commit ``items`` in one transaction (used by tests and tools)."""
        batch = _Batch()
        with self._build_lock:
            for item in items:
                self._take(batch, item)
        self._commit(conn, batch)

    def _take(self, batch: "_Batch", item: Any) -> None:
        """Build one submitted run (or record) into a row of ``batch``."""
        batch.items += 1
        try:
            if isinstance(item, tuple) and item and item[0] == "record":
                rec, cat = item[1], item[2]
            else:
                cat = item.prepared.catalog if item.prepared is not None else None
                if cat is None:
                    return
                rec = None
            if cat is not None:
                batch.used_catalogs[cat.digest] = cat
                if cat.digest not in self._known_catalogs:
                    batch.catalogs[cat.digest] = cat
            if rec is None and item.flow is None:  # a routed call: its plan's part is written once
                row_t, text, sections = stored_form(item, cat, capture_content=self.capture_content,
                                                    policy_inline=self._policy_inline)
                for dg, section in sections:
                    batch.sections[dg] = section
                batch.rows.append((*row_t, text.decode("utf-8")))
                return
            if rec is None:
                rec = build_record(item, cat, capture_content=self.capture_content)
            row = summary_row(rec)
            rec = self._externalise(rec, batch.sections)
            batch.rows.append((*[row[c] for c in _COLUMNS], dump_record(rec).decode("utf-8")))
        except Exception:  # a record that cannot be built must not stop the writer
            self.errors += 1

    def _policy_inline(self, digest: str) -> bool:
        """Whether a routed call's policy section goes in its record rather than apart: the first
        time this store sees the policy (recently), yes. Most first sights are policies built per
        request that never come back, and each section row costs an index entry at a random place
        (its digest); a policy that does come back is written apart from its second record on,
        once. Either way the record reads back the same."""
        seen = self._policies_seen
        if digest in seen:
            seen.move_to_end(digest)
            return False
        seen[digest] = None
        if len(seen) > 4096:
            seen.popitem(last=False)
        return True

    def _commit(self, conn: Any, batch: "_Batch", *, last: bool = False) -> str:
        """Write ``batch`` in one transaction: ``written``; ``kept`` (the commit failed for a
        reason that can pass: the caller keeps the batch for the next try); or ``dropped``
        (refused for good, or any failure on the ``last`` try), counted in ``dropped``.
        ``conn`` None: the database cannot be reached now (a failure that can pass)."""
        if (batch.rows or batch.catalogs) and conn is None:  # not reached: _connection said why
            self.errors += 1
            if not last:
                return "kept"
            self.dropped += batch.items
            self._settle(batch)
            return "dropped"
        if batch.rows or batch.catalogs:
            try:
                conn.execute("BEGIN")
                now_ms = int(time.time() * 1000)
                until = now_ms + _TOUCH_AHEAD_MS
                touched = self._touched_until
                renewed: list[str] = []
                # in digest order, so that routers sharing one database take row locks in one order
                for digest in sorted(batch.catalogs):
                    conn.execute(self._INSERT_CATALOG, (digest, now_ms, until,
                                                        canonical(batch.catalogs[digest].snapshot()).decode("utf-8")))
                for digest in sorted(batch.used_catalogs):
                    if touched.get(digest, 0) <= now_ms:
                        cur = conn.execute(self._TOUCH_CATALOG, (until, digest))
                        if cur.rowcount == 0 and digest not in batch.catalogs:
                            # gone: purged by another router sharing the store after this one last
                            # used it (a month idle). Its records must still replay: write it again.
                            conn.execute(self._INSERT_CATALOG, (digest, now_ms, until, canonical(
                                batch.used_catalogs[digest].snapshot()).decode("utf-8")))
                        renewed.append(digest)
                stale = sorted((dg, until, text) for dg, text in batch.sections.items() if touched.get(dg, 0) <= now_ms)
                if stale:
                    self._executemany(conn, self._UPSERT_SECTION, stale)
                self._insert_traces(conn, self._bind(batch.rows))
                conn.execute("COMMIT")
                for digest in renewed:
                    touched[digest] = until
                for dg, _u, _t in stale:
                    touched[dg] = until
                if len(touched) > 8192:  # forgetting only costs a rewrite of the stamp
                    touched.clear()
                self._known_catalogs.update(batch.catalogs)
                self.written += len(batch.rows)
            except self._Error as exc:
                self.errors += 1
                if conn is not None:
                    try:
                        conn.execute("ROLLBACK")
                    except self._Error:
                        pass
                if isinstance(exc, self._Transient) and not last:
                    self._failing(exc)
                    return "kept"
                self.last_error = self._scrub(f"{type(exc).__name__}: {exc}")
                self.dropped += batch.items
                if not last:  # closing reports its own total
                    log.error("trace store %s refused a batch of %d runs (%s); they are not stored",
                              self.path, batch.items, self.last_error)
                self._settle(batch)
                return "dropped"
            if self.failing_since_ms is not None:
                log.warning("trace store %s commits again after failing since %d", self.path, self.failing_since_ms)
                self.failing_since_ms = None
        self._settle(batch)
        return "written"

    def _settle(self, batch: "_Batch") -> None:
        """A batch is done with (committed or not): its runs no longer pending, its flushes released."""
        batch.settled.done = True
        if batch.items:
            with self._room:
                self._pending = max(0, self._pending - batch.items)
                self._room.notify_all()
        for b in batch.barriers:
            b.set()

    _APART = ("decision", "policy")

    def _externalise(self, rec: dict[str, Any], sections: dict[str, str]) -> dict[str, Any]:
        """Replace shared sections (decision, policy; a flow node's too) by their digests."""
        out = rec
        for key in self._APART:
            d = rec.get(key)
            if isinstance(d, dict) and "digest" in d:
                dg = d["digest"]
                text = self._decision_text.get(dg)
                if text is None:
                    text = self._decision_text[dg] = dump_record(d).decode("utf-8")
                    if len(self._decision_text) > 1024:
                        self._decision_text.popitem(last=False)
                sections[dg] = text  # written once, touched by every batch that uses it
                if out is rec:
                    out = dict(rec)
                out[key] = {"digest": dg, "stored_apart": True}
        flow = rec.get("flow")
        if isinstance(flow, dict) and flow.get("nodes"):
            nodes = []
            for n in flow["nodes"]:
                if isinstance(n.get("record"), dict):
                    n = {**n, "record": self._externalise(n["record"], sections)}
                nodes.append(n)
            out = {**out, "flow": {**flow, "nodes": nodes}}
        return out

    def _inflate(self, conn: Any, rec: dict[str, Any], section: Any = None) -> dict[str, Any]:
        section = section or self._section
        shared = section(conn, rec.get("shared"))  # first the plan's part, which names the others
        if shared is not None:
            rec = inflate_shared(rec, shared)
        for key in self._APART:
            got = section(conn, rec.get(key))
            if got is not None:
                rec[key] = got
        for n in (rec.get("flow") or {}).get("nodes") or []:
            if isinstance(n.get("record"), dict):
                n["record"] = self._inflate(conn, n["record"], section)
        return rec

    def _section(self, conn: Any, ref: Any) -> dict[str, Any] | None:
        """The section a ``{"digest", "stored_apart"}`` reference names, if it is one and still stored."""
        if not (isinstance(ref, dict) and ref.get("stored_apart")):
            return None
        row = conn.execute(self._q("SELECT section FROM sections WHERE digest = ?"), (ref.get("digest"),)).fetchone()
        return json.loads(row[0]) if row is not None else None

    def _maybe_purge(self, conn: Any) -> None:
        if not self.retention_days:
            return
        now = time.monotonic()
        if now - self._last_purge < 60:
            return
        self._last_purge = now
        if conn is None:
            return
        try:
            self.purge(older_than_ms=int(time.time() * 1000) - self.retention_days * 86_400_000, conn=conn)
        except self._Error as exc:  # the next round tries again; writing records never waits for it
            log.warning("trace store %s: deleting expired records failed (%s)", self.path, f"{type(exc).__name__}: {exc}")

    def purge(self, *, older_than_ms: int, conn: Any = None, batch: int = 1000) -> int:
        """Delete records that started before ``older_than_ms``, a batch per transaction."""
        if conn is None:
            with self._read_conn() as own:
                return self.purge(older_than_ms=older_than_ms, conn=own, batch=batch)
        q = self._q
        total = 0
        while True:
            cur = conn.execute(q("DELETE FROM traces WHERE trace_id IN (SELECT trace_id FROM traces "
                                 "WHERE started_at_ms < ? LIMIT ?)"), (older_than_ms, batch))
            total += cur.rowcount
            if cur.rowcount < batch:
                break
        # a decision or catalog last used before the horizon is referenced only by purged records
        conn.execute(q("DELETE FROM sections WHERE last_used_ms < ?"), (older_than_ms,))
        conn.execute(q("DELETE FROM catalogs WHERE last_used_ms < ?"), (older_than_ms,))
        # a stamp before the horizon may have been deleted with its row: forget it
        self._touched_until = {dg: t for dg, t in self._touched_until.items() if t >= older_than_ms}
        self._known_catalogs = {r[0] for r in conn.execute("SELECT digest FROM catalogs")}
        return total

    # ---- reading -------------------------------------------------------------
    def get(self, trace_id: str) -> dict[str, Any] | None:
        with self._read_conn() as conn:
            row = conn.execute(self._q("SELECT record FROM traces WHERE trace_id = ?"), self._args([trace_id])).fetchone()
            return self._inflate(conn, json.loads(row[0])) if row else None

    def catalog_snapshot(self, digest: str) -> dict[str, Any] | None:
        with self._read_conn() as conn:
            row = conn.execute(self._q("SELECT snapshot FROM catalogs WHERE digest = ?"), self._args([digest])).fetchone()
        return json.loads(row[0]) if row else None

    @staticmethod
    def _where(*, since_ms: int | None = None, until_ms: int | None = None, policy: str | None = None,
               route: str | None = None, model: str | None = None, provider: str | None = None,
               status: str | None = None, session: str | None = None, caller: str | None = None,
               kind: str | None = None, cursor: str | None = None) -> tuple[str, list[Any]]:
        """The WHERE clause (with its leading space, or empty) and arguments of a listing's filters."""
        where, args = [], []
        for column, value in (("session", session), ("caller", caller), ("route", route), ("provider", provider),
                              ("status", status), ("kind", kind)):
            if value:  # the columns a filter matches exactly
                where.append(f"{column} = ?")
                args.append(value)
        if since_ms is not None:
            where.append("started_at_ms >= ?")
            args.append(_in_int64(since_ms))
        if until_ms is not None:
            where.append("started_at_ms < ?")
            args.append(_in_int64(until_ms))
        if policy:
            ident = policy.removeprefix("pol_").lower()  # identities are lower-case hex
            if ident.strip(_HEX):  # not hex: no identity starts so (and no LIKE wildcard or escape gets in)
                where.append("0 = 1")
            elif len(ident) == 64:
                where.append("policy_identity = ?")
                args.append(ident)
            else:
                where.append("policy_identity LIKE ?")
                args.append(ident + "%")
        if model:
            where.append("(model_family = ? OR served_model_id = ?)")
            args += [model, model]
        if cursor:
            ms, tid = decode_cursor(cursor)
            ms = _in_int64(ms)
            where.append("(started_at_ms < ? OR (started_at_ms = ? AND trace_id < ?))")
            args += [ms, ms, tid]
        return (" WHERE " + " AND ".join(where) if where else ""), args

    def list(self, *, cursor: str | None = None, limit: int = 50,
             **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        """Summary rows, newest first; ``filters`` are ``_where``'s."""
        where, args = self._where(cursor=cursor, **filters)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM traces{where} ORDER BY started_at_ms DESC, trace_id DESC LIMIT ?"
        args.append(limit + 1)
        with self._read_conn() as conn:
            rows = [dict(zip(_COLUMNS, r)) for r in conn.execute(self._q(sql), self._args(args))]
        nxt = None
        if len(rows) > limit:
            rows = rows[:limit]
            nxt = encode_cursor(rows[-1]["started_at_ms"], rows[-1]["trace_id"])
        return rows, nxt

    def records(self, *, cursor: str | None = None, limit: int = 1000,
                **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        """Whole records (sections inflated), newest first, read in one connection; the same
        filters and cursor as :meth:`list`. Records of one plan share their sections, so each
        section is read and parsed once per call, and the records returned share those objects:
        read them, do not change them."""
        where, args = self._where(cursor=cursor, **filters)
        sql = f"SELECT started_at_ms, trace_id, record FROM traces{where} ORDER BY started_at_ms DESC, trace_id DESC LIMIT ?"
        args.append(limit + 1)
        with self._read_conn() as conn:
            raw = conn.execute(self._q(sql), self._args(args)).fetchall()
            nxt = None
            if len(raw) > limit:
                raw = raw[:limit]
                nxt = encode_cursor(raw[-1][0], raw[-1][1])
            sections: dict[Any, Any] = {}

            def section(c: Any, ref: Any) -> dict[str, Any] | None:
                if not (isinstance(ref, dict) and ref.get("stored_apart")):
                    return None
                key = ref.get("digest")
                if key not in sections:
                    sections[key] = self._section(c, ref)
                return sections[key]

            out = [self._inflate(conn, json.loads(r[2]), section) for r in raw]
        return out, nxt

    def session_totals(self, session: str, caller: str | None = None) -> dict[str, Any] | None:
        """What one session's calls add up to (None: no stored call names it); with ``caller``,
        only that caller's calls. A flow counts once, as its record does."""
        from decimal import Decimal

        from ..costs import usd_text
        with self._read_conn() as conn:
            rows = conn.execute(self._q("SELECT status, provider, tokens_in, tokens_out, tokens_cached, cost_usd, "
                                        "started_at_ms, finished_at_ms FROM traces WHERE session = ?"
                                        + (" AND caller = ?" if caller is not None else "")),
                                self._args([session] if caller is None else [session, caller])).fetchall()
        if not rows:
            return None
        by_status: dict[str, int] = {}
        by_provider: dict[str, int] = {}
        for status, provider, *_ in rows:
            by_status[status] = by_status.get(status, 0) + 1
            if provider:
                by_provider[provider] = by_provider.get(provider, 0) + 1
        costs = [Decimal(r[5]) for r in rows if r[5] is not None]
        return {"session": session, "calls": len(rows), "by_status": dict(sorted(by_status.items())),
                "by_provider": dict(sorted(by_provider.items())),
                "tokens_in": sum(r[2] or 0 for r in rows), "tokens_out": sum(r[3] or 0 for r in rows),
                "tokens_cached": sum(r[4] or 0 for r in rows),
                "cost_usd": usd_text(sum(costs, Decimal(0))) if costs else None,
                "first_started_at_ms": min(r[6] for r in rows),
                "last_finished_at_ms": max((r[7] for r in rows if r[7] is not None), default=None)}

    def usage(self, report: Any, **filters: Any) -> Any:
        """Feed every stored call that ``filters`` (``_where``'s) select to ``report.add``, newest
        first, one row at a time (``traces/usage.py``): summary columns, and for a flow the nodes
        of its record. Returns ``report``."""
        where, args = self._where(**filters)
        sql = (f"SELECT {', '.join(_COLUMNS)}, CASE WHEN kind = 'flow' THEN record END FROM traces{where} "
               "ORDER BY started_at_ms DESC, trace_id DESC")
        n = len(_COLUMNS)
        with self._read_conn() as conn:
            for r in self._rows(conn, sql, self._args(args)):
                row = dict(zip(_COLUMNS, r))
                if r[n] is not None:
                    try:
                        row["nodes"] = (json.loads(r[n]).get("flow") or {}).get("nodes")
                    except ValueError:
                        pass
                report.add(row)
        return report

    def sessions(self, *, limit: int = 50, offset: int = 0, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """The sessions of the calls ``filters`` select, the most recently active first (a page
        of ``limit`` from ``offset``), each with what those calls add up to as in
        :meth:`session_totals`; and how many sessions there are."""
        from decimal import Decimal

        from ..costs import usd_text
        where, args = self._where(**filters)
        where = (where + " AND" if where else " WHERE") + " session IS NOT NULL"
        with self._read_conn() as conn:
            args = self._args(args)
            q = self._q
            total = conn.execute(q(f"SELECT COUNT(DISTINCT session) FROM traces{where}"), args).fetchone()[0]
            page = conn.execute(q(
                "SELECT session, COUNT(*), SUM(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END), "
                "COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), COALESCE(SUM(tokens_cached), 0), "
                "MIN(started_at_ms), MAX(finished_at_ms), MAX(started_at_ms) AS last "
                f"FROM traces{where} GROUP BY session ORDER BY last DESC, session LIMIT ? OFFSET ?"),
                [*args, limit, offset]).fetchall()
            costs: dict[str, list[Any]] = {}
            if page:  # exact decimal sums, read for the page's sessions only (the session index)
                marks = ", ".join("?" * len(page))
                for session, cost, status in conn.execute(
                        q(f"SELECT session, cost_usd, status FROM traces{where} AND session IN ({marks})"),
                        [*args, *(r[0] for r in page)]):
                    costs.setdefault(session, []).append((cost, status))
        out = []
        for session, calls, errors, t_in, t_out, t_cached, first, last_finished, last_started in page:
            priced = [Decimal(c) for c, _ in costs.get(session, ()) if c is not None]
            out.append({"session": session, "calls": int(calls), "errors": int(errors or 0), "tokens_in": int(t_in),
                        "tokens_out": int(t_out), "tokens_cached": int(t_cached),
                        "cost_usd": usd_text(sum(priced, Decimal(0))) if priced else None,
                        "unpriced": sum(1 for c, s in costs.get(session, ()) if c is None and s == "ok"),
                        "first_started_at_ms": first, "last_started_at_ms": last_started,
                        "last_finished_at_ms": last_finished})
        return out, total

    def caller_usage(self, caller: str, window_ms: int, minute_ms: int
                     ) -> tuple[int, int, "Decimal", list[tuple[int, int]]]:
        """What the stored calls of ``caller`` used (``CallerLimits.load``): the calls, the answers
        without a price and the USD spent that started since ``window_ms``, and (finish ms,
        tokens) of each that finished since ``minute_ms``. A flow counts once, with its nodes'
        sums."""
        from decimal import Decimal
        with self._read_conn() as conn:
            rows = conn.execute(self._q("SELECT started_at_ms, finished_at_ms, cost_usd, tokens_in, tokens_out, status "
                                        "FROM traces WHERE caller = ? AND started_at_ms >= ?"),
                                self._args([caller, _in_int64(min(window_ms, minute_ms - 86_400_000))])).fetchall()
        calls = unpriced = 0
        spent = Decimal(0)
        recent = []
        for started, finished, cost, t_in, t_out, status in rows:
            if finished is not None and finished >= minute_ms and (t_in or t_out):
                recent.append((finished, (t_in or 0) + (t_out or 0)))
            if started >= window_ms:
                calls += 1
                if cost is not None:
                    spent += Decimal(cost)
                elif status == "ok":
                    unpriced += 1
        return calls, unpriced, spent, recent

    def count(self) -> int:
        with self._read_conn() as conn:
            return conn.execute("SELECT COUNT(*) FROM traces").fetchone()[0]
