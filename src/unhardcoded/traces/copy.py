"""Copy a trace store into another: every record, the catalog snapshots they were decided over,
and the stored responses (``unhardcoded copy``), so moving from the embedded SQLite file to a
PostgreSQL database shared by several routers keeps the history.

Records are read a page at a time, whole (shared sections put back), and handed to the target
as records, which stores its own sections; a record already in the target is replaced by its
copy, so copying twice leaves one of each. The target's retention applies as it writes: records
older than its ``retention_days`` are removed by its next purge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class _Snapshot:
    """A stored catalog snapshot, as a store's writer takes a catalog (its digest and snapshot)."""

    digest: str
    data: dict[str, Any]

    def snapshot(self) -> dict[str, Any]:
        return self.data


def copy_traces(source: Any, target: Any, *, page: int = 500,
                progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Copy every record of ``source`` into ``target`` (both ``SQLStore``s); the counts copied."""
    catalogs: dict[str, _Snapshot | None] = {}
    copied = 0
    cursor = None
    while True:
        records, cursor = source.records(limit=page, cursor=cursor)
        for rec in records:
            digest = (rec.get("catalog") or {}).get("digest")
            if digest and digest not in catalogs:
                snap = source.catalog_snapshot(digest)
                catalogs[digest] = _Snapshot(digest, snap) if snap is not None else None
            target.submit_record(rec, catalogs.get(digest) if digest else None)
            copied += 1
        if not target.flush(600):
            raise TimeoutError(f"the target store {target.path} did not commit in 600 s")
        if progress is not None:
            progress(copied)
        if cursor is None:
            break
    if target.dropped or target.errors:
        raise RuntimeError(f"the target store {target.path} refused {target.dropped + target.errors} records "
                           f"({target.last_error})")
    return {"traces": copied, "catalogs": sum(1 for s in catalogs.values() if s is not None)}


def copy_responses(source: Any, target: Any) -> int:
    """Copy every stored response of ``source`` into ``target`` (response stores); how many."""
    n = 0
    for entry in source.entries():
        target.put(entry)
        n += 1
    return n
