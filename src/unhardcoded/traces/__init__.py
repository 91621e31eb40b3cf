"""Traces: the record of every run, stored, listed and replayed.

A store implements one small interface:

* ``submit(run)``: hand over a finished run; never blocks on I/O;
* ``start()`` / ``flush()`` / ``close()``: the writer's life cycle (close drains);
* ``get(trace_id)``, ``list(**filters, cursor, limit)``, ``catalog_snapshot(digest)``;
* ``purge(older_than_ms=...)``.

``sqlite.SQLiteStore`` is the embedded default; ``postgres.PostgresStore`` keeps one database
for many routers (``[traces] store = "postgres"``). Both are ``sqlstore.SQLStore``: the same
writer and the same reads, in the SQL both speak.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .record import SCHEMA, build_record
from .sqlite import SQLiteStore
from .sqlstore import SQLStore


def open_store(settings: Any) -> SQLStore:
    """The store ``settings`` name (``[traces] store``)."""
    kw = {"capture_content": settings.capture_content, "retention_days": settings.retention_days,
          "writer_scheduling": getattr(settings, "trace_writer_scheduling", "idle")}
    if getattr(settings, "trace_store", "sqlite") == "postgres":
        from .postgres import PostgresStore
        return PostgresStore(settings.trace_dsn, **kw)
    return SQLiteStore(Path(settings.data_dir) / "traces.sqlite3", **kw)


def describe_store(settings: Any) -> str:
    """Where ``settings`` keep traces, as a person (or a log) may be told: never a password."""
    if getattr(settings, "trace_store", "sqlite") == "postgres":
        from .postgres import redacted
        return redacted(settings.trace_dsn)
    return str(Path(settings.data_dir) / "traces.sqlite3")


__all__ = ["SCHEMA", "SQLStore", "SQLiteStore", "build_record", "describe_store", "open_store"]
