"""Traces: the record of every run, stored, listed and replayed.

A store implements one small interface:

* ``submit(run)``: hand over a finished run; never blocks on I/O;
* ``start()`` / ``flush()`` / ``close()``: the writer's life cycle (close drains);
* ``get(trace_id)``, ``list(**filters, cursor, limit)``, ``catalog_snapshot(digest)``;
* ``purge(older_than_ms=...)``.

``sqlite.SQLiteStore`` is the embedded default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .record import SCHEMA, build_record
from .sqlite import SQLiteStore


def open_store(settings: Any) -> SQLiteStore:
    path = Path(settings.data_dir) / "traces.sqlite3"
    return SQLiteStore(path, capture_content=settings.capture_content, retention_days=settings.retention_days,
                       writer_scheduling=getattr(settings, "trace_writer_scheduling", "idle"))


__all__ = ["SCHEMA", "SQLiteStore", "build_record", "open_store"]
