"""The trace stores side by side: the PostgreSQL store answers every read exactly as the SQLite
store does over the same runs, keeps runs through a lost or refused connection, lets several
routers share one database, and never shows the DSN's password.

A private PostgreSQL server is started for the session (``unhardcoded.testing.postgres``)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import openai
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from unhardcoded.config import ConfigError, load_settings
from unhardcoded.traces import describe_store, open_store
from unhardcoded.traces.postgres import PostgresStore, StoreUnavailable, redacted
from unhardcoded.traces.sqlite import SQLiteStore
from unhardcoded.traces.usage import Usage

from .harness import policy, start_stack
from .test_http_fuzz import _trace_queries
from .test_usage import MSG, traffic

_NOW_MS = int(time.time() * 1000)


def _rec(i: int, **kw: Any) -> dict:
    rec = {"schema": "unhardcoded.trace/v1", "trace_id": f"tr_{i:032x}", "kind": "chat", "started_at_ms": _NOW_MS + i,
           "status": "ok", "path": [], "answer": None, "usage": {}, "cost": {}, "latency": {}, "error": None}
    rec.update(kw)
    return rec


class Tee:
    """A sink that hands every run to two stores: the router writes the same runs to both."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first, self.second = first, second

    def submit(self, run: Any) -> None:
        self.first.submit(run)
        self.second.submit(run)

    def submit_record(self, record: Any, catalog: Any = None) -> None:
        self.first.submit_record(record, catalog)
        self.second.submit_record(record, catalog)

    def flush(self, timeout: float = 10.0) -> bool:
        return self.first.flush(timeout) and self.second.flush(timeout)

    def close(self) -> None:
        self.first.close()
        self.second.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.first, name)


@pytest.fixture
async def both(tmp_path, postgres_dsn):
    """The router served with a sink that writes each run to a SQLite and a PostgreSQL store."""
    lite = SQLiteStore(tmp_path / "traces.sqlite3", flush_ms=20)
    pg = PostgresStore(postgres_dsn, flush_ms=20)
    stack = await start_stack(tmp_path, store=Tee(lite, pg))
    yield stack, lite, pg
    await stack.close()
    lite.close()
    pg.close()


async def test_postgres_answers_every_read_as_sqlite_does_over_the_same_routed_calls(both) -> None:
    stack, lite, pg = both
    await traffic(stack)  # 7 calls: routed, pinned, failed, a flow
    for session in ("agent-7", "agent 7/b", "agent-7"):
        await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"session": session})
    assert stack.store.flush()
    assert pg.count() == lite.count() == 10 and pg.written == lite.written and pg.errors == lite.errors == 0
    rows, _ = lite.list(limit=100)
    assert pg.list(limit=100) == (rows, None)
    for row in rows:  # whole records, shared sections put back
        assert pg.get(row["trace_id"]) == lite.get(row["trace_id"]) is not None
        digest = (lite.get(row["trace_id"]).get("catalog") or {}).get("digest")
        if digest:
            assert pg.catalog_snapshot(digest) == lite.catalog_snapshot(digest) is not None
    # every filter, and paging by cursor
    one = rows[3]
    for filters in ({"route": "family:gpt-5.5"}, {"status": "error"}, {"kind": "flow"}, {"session": "agent-7"},
                    {"provider": one["provider"]}, {"model": one["model_family"]},
                    {"policy": one["policy_identity"][:10].upper()}, {"policy": "pol_" + one["policy_identity"]},
                    {"since_ms": one["started_at_ms"]}, {"until_ms": one["started_at_ms"]},
                    {"since_ms": -(1 << 80), "until_ms": 1 << 80}, {"caller": "nobody"}):
        assert pg.list(limit=100, **filters) == lite.list(limit=100, **filters), filters
        assert pg.records(limit=100, **filters) == lite.records(limit=100, **filters), filters
    assert pg.list(limit=100, policy=one["policy_identity"][:10].upper())[0]  # a prefix, in any case
    cursor_pg = cursor_lite = None
    for _ in range(4):
        page_pg, cursor_pg = pg.list(limit=3, cursor=cursor_pg)
        page_lite, cursor_lite = lite.list(limit=3, cursor=cursor_lite)
        assert page_pg == page_lite and cursor_pg == cursor_lite
    assert cursor_pg is None
    # what usage reports, session lists, session totals and caller budgets are built from
    for filters in ({}, {"route": "family:gpt-5.5"}, {"kind": "flow"}):
        assert pg.usage(Usage(), **filters).report() == lite.usage(Usage(), **filters).report()
    assert pg.sessions() == lite.sessions() and pg.sessions()[1] == 2
    assert pg.sessions(limit=1, offset=1) == lite.sessions(limit=1, offset=1)
    assert pg.session_totals("agent-7") == lite.session_totals("agent-7") and pg.session_totals("agent-7")["calls"] == 2
    assert pg.session_totals("nope") is None
    window = _NOW_MS - 3_600_000
    assert pg.caller_usage("nobody", window, window) == lite.caller_usage("nobody", window, window)


async def test_a_router_on_postgres_serves_receipts_replays_and_usage_over_http(tmp_path, postgres_dsn) -> None:
    store = PostgresStore(postgres_dsn, flush_ms=20)
    stack = await start_stack(tmp_path, store=store)
    try:
        r = await stack.client.chat.completions.create(
            model="", messages=MSG, extra_body={"policy_ir": policy(["cmp", "bench_intelligence", "ge", 0.5])})
        tid = r.model_extra["x_router"]["trace_id"]
        assert store.flush()
        status, listed = await stack.get("/x/traces?limit=10")
        assert status == 200 and [row["trace_id"] for row in listed["data"]] == [tid]
        status, rec = await stack.get(f"/x/traces/{tid}")
        assert status == 200 and rec["trace_id"] == tid and rec["decision"]["digest"]
        status, same = await stack.post("/x/replay", {"trace_id": tid})
        assert status == 200 and same["identical"] is True, same
        status, usage = await stack.get("/v1/usage")
        assert status == 200 and usage["totals"]["requests"] == 1
        status, health = await stack.get("/healthz")
        assert health.get("traces_failing_since_ms") is None and health["traces_store"] == "postgres"
    finally:
        await stack.close()
        store.close()


def test_a_second_write_of_a_trace_id_replaces_the_first_and_purge_drops_what_is_old(postgres_dsn) -> None:
    store = PostgresStore(postgres_dsn, flush_ms=10)
    try:
        store.submit_record(_rec(1, status="error"))
        store.submit_record(_rec(2))
        assert store.flush()
        store.submit_record(_rec(1, status="ok", route={"model": "family:x"}))
        old = _rec(3, started_at_ms=_NOW_MS - 90 * 86_400_000)
        store.submit_record(old)
        assert store.flush()
        assert store.count() == 3 and store.get(_rec(1)["trace_id"])["status"] == "ok"
        assert store.list(route="family:x")[0][0]["status"] == "ok"
        assert store.purge(older_than_ms=_NOW_MS - 86_400_000) == 1
        assert store.get(old["trace_id"]) is None and store.count() == 2
        # two versions of one trace in one batch (one COPY, one INSERT ... SELECT): the later wins
        store.submit_record(_rec(9, status="error"))
        store.submit_record(_rec(9, status="ok", route={"model": "family:y"}))
        assert store.flush() and store.dropped == 0
        assert store.get(_rec(9)["trace_id"])["status"] == "ok" and store.count() == 3
        assert store.list(route="family:y")[0][0]["trace_id"] == _rec(9)["trace_id"]
    finally:
        store.close()


def test_a_nul_in_a_summary_column_is_kept_as_u_fffd_and_still_matches(postgres_dsn) -> None:
    """PostgreSQL's text cannot hold U+0000: such a column is stored as U+FFFD (the record, JSON,
    keeps it escaped), and a filter with the same value finds it, instead of the batch being lost."""
    store = PostgresStore(postgres_dsn, flush_ms=10)
    try:
        store.submit_record(_rec(1, session="a\x00b"))
        store.submit_record(_rec(2, session="plain"))
        store.submit_record(_rec(3, route={"model": "family:\x00"}, caller="c\x00"))
        assert store.flush() and store.dropped == 0 and store.written == 3
        assert [r["caller"] for r in store.list(route="family:\x00")[0]] == ["c\ufffd"]
        assert store.get(_rec(1)["trace_id"])["session"] == "a\x00b"
        rows, _ = store.list(session="a\x00b")
        assert [r["session"] for r in rows] == ["a\ufffdb"]
        assert store.session_totals("a\x00b")["calls"] == 1
    finally:
        store.close()


def test_routers_sharing_one_database_read_each_others_receipts(postgres_dsn) -> None:
    made: list[Any] = []
    errors: list[BaseException] = []

    def open_one() -> None:  # routers starting together create the tables once, without a race
        try:
            made.append(PostgresStore(postgres_dsn, flush_ms=10))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(made) == 4
    try:
        for n, store in enumerate(made):
            store.submit_record(_rec(n, caller=f"router-{n}"))
        assert all(s.flush() for s in made)
        for store in made:
            assert store.count() == 4
            assert {r["caller"] for r in store.list(limit=10)[0]} == {f"router-{n}" for n in range(4)}
    finally:
        for store in made:
            store.close()


def _writer_pids(admin_dsn: str, dbname: str) -> list[int]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                           "AND pid <> pg_backend_pid()", (dbname,))]


def _dbname(dsn: str) -> str:
    return dict(p.split("=", 1) for p in dsn.split())["dbname"]


def test_a_lost_connection_is_opened_again_and_loses_no_run(postgres_server, postgres_dsn) -> None:
    store = PostgresStore(postgres_dsn, flush_ms=10)
    try:
        store.submit_record(_rec(1))
        assert store.flush()
        with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as admin:  # the server drops us
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                          "AND pid <> pg_backend_pid()", (_dbname(postgres_dsn),))
        store.submit_record(_rec(2))
        assert store.flush(15)
        assert store.count() == 2 and store.dropped == 0 and store.failing_since_ms is None
    finally:
        store.close()


def test_while_the_database_refuses_connections_runs_are_kept_and_written_once_it_accepts(
        postgres_server, postgres_dsn) -> None:
    password_dsn = postgres_dsn + " password=hunter2-not-a-real-one"  # trust auth: the password is not asked for
    store = PostgresStore(password_dsn, flush_ms=10)
    name = _dbname(postgres_dsn)
    try:
        store.submit_record(_rec(1))
        assert store.flush()
        with psycopg.connect(postgres_server.admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            store.submit_record(_rec(2))
            store.submit_record(_rec(3))
            deadline = time.monotonic() + 10
            while store.failing_since_ms is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert store.failing_since_ms is not None and store.pending == 2 and store.dropped == 0
            assert "hunter2" not in (store.last_error or "") and "hunter2" not in store.path
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert store.flush(20)
        assert store.failing_since_ms is None and store.pending == 0 and store.count() == 3
    finally:
        store.close()


def test_the_dsn_password_is_never_shown(postgres_server) -> None:
    assert redacted("postgresql://router:s3cret@db.internal:6543/traces") == "postgresql://router@db.internal:6543/traces"
    assert redacted("host=db user=router password=s3cret dbname=traces") == "postgresql://router@db/traces"
    port = postgres_server.admin_dsn.split("port=")[1].split()[0]
    with pytest.raises(StoreUnavailable) as exc:  # a database that does not exist: the server says so
        PostgresStore(f"postgresql://postgres:s3cret@127.0.0.1:{port}/no_such_db?connect_timeout=5")
    assert "s3cret" not in str(exc.value) and "no_such_db" in str(exc.value)
    assert isinstance(exc.value, OSError)  # the CLI's one-line error, exit 2


def test_config_names_the_postgres_store_and_its_dsn(tmp_path, postgres_dsn, monkeypatch) -> None:
    monkeypatch.delenv("UNHARDCODED_TRACE_DSN", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[traces]\nstore = "postgres"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(str(cfg))
    assert exc.value.path == "$.traces.dsn"
    cfg.write_text('[traces]\nstore = "postgres"\ndsn = "postgresql://u:pw-secret@[bad"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(str(cfg))
    assert exc.value.path == "$.traces.dsn" and "pw-secret" not in exc.value.message
    cfg.write_text('[traces]\nstore = "postgres"\n')
    monkeypatch.setenv("UNHARDCODED_TRACE_DSN", postgres_dsn + " password=pw-secret")
    settings = load_settings(str(cfg))
    assert "pw-secret" not in repr(settings) and "pw-secret" not in describe_store(settings)
    from_env = load_settings(None, environ={"UNHARDCODED_TRACE_STORE": "postgres", "UNHARDCODED_TRACE_DSN": postgres_dsn})
    assert (from_env.trace_store, from_env.trace_dsn) == ("postgres", postgres_dsn)
    store = open_store(settings)
    try:
        assert isinstance(store, PostgresStore) and store.name == "postgres"
    finally:
        store.close()


def test_the_cli_reads_a_postgres_store(tmp_path, postgres_dsn, monkeypatch, capsys) -> None:
    from unhardcoded.cli import main
    store = PostgresStore(postgres_dsn, flush_ms=10)
    try:
        store.submit_record(_rec(7, route={"model": "family:cli"}))
        assert store.flush()
    finally:
        store.close()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[traces]\nstore = "postgres"\ndsn = "{postgres_dsn}"\n')
    assert main(["traces", "--config", str(cfg), "--data-dir", str(tmp_path / "none")]) == 0
    assert "family:cli" in capsys.readouterr().out


async def test_while_the_database_is_down_calls_are_served_reads_are_503_and_nothing_is_lost(
        tmp_path, postgres_server, postgres_dsn) -> None:
    store = PostgresStore(postgres_dsn, flush_ms=20)
    stack = await start_stack(tmp_path, store=store)
    name = _dbname(postgres_dsn)
    admin = psycopg.connect(postgres_server.admin_dsn, autocommit=True)
    try:
        await stack.client.chat.completions.create(model="", messages=MSG)
        assert store.flush()
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        ids = []
        for session in ("s-down-1", "s-down-2"):  # a new session's totals cannot be read: the call goes on
            r = await stack.client.chat.completions.create(model="", messages=MSG, extra_body={"session": session})
            ids.append(r.model_extra["x_router"]["trace_id"])
        status, err = await stack.get("/x/traces?limit=5")
        assert status == 503 and err["error"]["code"] == "store_unavailable"
        assert err["error"]["type"] == "server_error"
        status, err = await stack.get(f"/x/traces/{ids[0]}")
        assert status == 503 and err["error"]["code"] == "store_unavailable"
        deadline = time.monotonic() + 10
        while store.failing_since_ms is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        status, health = await stack.get("/healthz")
        assert health["traces_failing_since_ms"] is not None
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert await asyncio.to_thread(store.flush, 20)
        status, listed = await stack.get("/x/traces?limit=5")
        assert status == 200 and [r["trace_id"] for r in listed["data"]][:2] == ids[::-1]
        assert store.dropped == 0 and store.failing_since_ms is None
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
        await stack.close()
        store.close()


async def _replicas(tmp_path, dsn: str, n: int = 2, **settings_kw: Any) -> list[Any]:
    """``n`` routers served as replicas of one deployment: each its own data directory, their
    traces and stored responses in the one PostgreSQL database ``dsn`` names."""
    stacks = []
    for i in range(n):
        (tmp_path / str(i)).mkdir()
        stacks.append(await start_stack(tmp_path / str(i), store=PostgresStore(dsn, flush_ms=20),
                                        trace_store="postgres", trace_dsn=dsn, **settings_kw))
    return stacks


async def _close_replicas(stacks: list[Any]) -> None:
    for s in stacks:
        await s.close()
        s.store.close()
        if s.app.response_store is not None:
            s.app.response_store.close()


async def test_two_routers_on_one_database_go_on_from_each_others_responses(tmp_path, postgres_dsn) -> None:
    """Replicas behind a load balancer: a response answered by one is continued, read and
    deleted through the other, and each lists the other's receipts."""
    stacks = await _replicas(tmp_path, postgres_dsn)
    a, b = stacks
    try:
        r1 = await a.client.responses.create(model="family:gpt-5.4-mini", input="My name is Ada")
        r2 = await b.client.responses.create(model="family:gpt-5.4-mini", previous_response_id=r1.id,
                                             input="What is my name?")
        assert r2.previous_response_id == r1.id and r2.output_text == "Echo: What is my name?"
        sent = [(m["role"], m["content"] if isinstance(m["content"], str) else m["content"][0]["text"])
                for m in b.openai.requests[-1].body["messages"]]
        assert sent == [("user", "My name is Ada"), ("assistant", "Echo: My name is Ada"), ("user", "What is my name?")]
        assert not (tmp_path / "0" / "responses.sqlite3").exists()  # kept in the database, not on a replica
        got = await b.client.responses.retrieve(r1.id)
        assert got.output_text == "Echo: My name is Ada"
        await a.client.responses.delete(r2.id)
        with pytest.raises(openai.NotFoundError):
            await b.client.responses.retrieve(r2.id)
        for s in stacks:
            assert s.store.flush()
        for s in stacks:
            status, listed = await s.get("/x/traces?limit=10")
            assert status == 200 and {row["trace_id"] for row in listed["data"]} == \
                {r1.model_extra["x_router"]["trace_id"], r2.model_extra["x_router"]["trace_id"]}
        status, missing = await b.get("/v1/responses/resp_\u0000x")  # U+0000 cannot be an id here: 404, not 500
        assert status == 404
    finally:
        await _close_replicas(stacks)


async def test_a_budget_spent_through_one_router_is_refused_by_the_others(tmp_path, postgres_dsn) -> None:
    from decimal import Decimal

    from unhardcoded.runtime.limits import CallerSpec
    from .test_callers import sha
    callers = {"b": CallerSpec("b", frozenset({sha("key-b")}), budget_usd=Decimal("0.000000001"))}
    stacks = await _replicas(tmp_path, postgres_dsn, callers=callers)
    clients = [openai.AsyncOpenAI(base_url=s.base_url, api_key="key-b", max_retries=0) for s in stacks]
    a, b = stacks
    try:
        r = await clients[0].chat.completions.create(model="", messages=MSG)  # spends the whole budget, on a
        assert Decimal(str(r.model_extra["x_router"]["cost_usd"])) > 0
        with pytest.raises(openai.RateLimitError):
            await clients[0].chat.completions.create(model="", messages=MSG)
        assert a.store.flush()
        # b has not counted it yet: its next call goes through and has b read the shared spend
        await clients[1].chat.completions.create(model="", messages=MSG)
        deadline = time.monotonic() + 10
        while Decimal(b.router.limits.usage("b")["budget"]["spent_usd"]) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as exc:
            await clients[1].chat.completions.create(model="", messages=MSG)
        assert exc.value.code == "insufficient_quota"
    finally:
        for c in clients:
            await c.close()
        await _close_replicas(stacks)


_text = st.one_of(st.none(), st.sampled_from(["agent-7", "family:x", "oa", "m0", "c1", "ok", "error", "chat"]),
                  st.text(max_size=12))
_filters = st.fixed_dictionaries({}, optional={
    "session": _text, "caller": _text, "route": _text, "provider": _text, "status": _text, "kind": _text,
    "model": _text, "policy": st.one_of(_text, st.sampled_from(["ab", "AB", "pol_ab", "a%", "a_", "a\\\\", "ab" * 32])),
    "since_ms": st.one_of(st.none(), st.integers(-(1 << 70), 1 << 70), st.just(_NOW_MS + 3)),
    "until_ms": st.one_of(st.none(), st.integers(-(1 << 70), 1 << 70), st.just(_NOW_MS + 7)),
})


@pytest.fixture(scope="module")
def filled(tmp_path_factory, postgres_server):
    """Both stores with the same 12 records (no U+0000: PostgreSQL keeps that as U+FFFD)."""
    lite = SQLiteStore(tmp_path_factory.mktemp("lite") / "t.sqlite3", flush_ms=10)
    pg = PostgresStore(postgres_server.database(), flush_ms=10)
    for i in range(12):
        rec = _rec(i, status=("ok", "error")[i % 2], kind=("chat", "flow")[i % 5 == 0],
                   session=(None, "agent-7", "s2")[i % 3], caller=(None, "c1")[i % 2],
                   route={"model": ("family:x", "")[i % 2]}, answer={"provider_id": ("oa", "an")[i % 3 == 0],
                                                                    "model_family": "m0", "served_model_id": f"m0-{i}"},
                   policy={"effective": {"identity": f"{'ab' if i < 6 else 'cd'}{i:062x}"}})
        lite.submit_record(rec)
        pg.submit_record(rec)
    assert lite.flush() and pg.flush() and lite.count() == pg.count() == 12
    yield lite, pg
    lite.close()
    pg.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filters=_filters, limit=st.integers(1, 5))
def test_any_filter_lists_the_same_rows_from_both_stores(filled, filters, limit) -> None:
    lite, pg = filled
    cursor_lite = cursor_pg = None
    for _ in range(4):
        page_lite, cursor_lite = lite.list(limit=limit, cursor=cursor_lite, **filters)
        page_pg, cursor_pg = pg.list(limit=limit, cursor=cursor_pg, **filters)
        assert page_pg == page_lite and cursor_pg == cursor_lite, filters
        if cursor_lite is None:
            break
    assert pg.sessions(**filters) == lite.sessions(**filters)
    assert pg.usage(Usage(), **filters).report() == lite.usage(Usage(), **filters).report()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(min_size=1, max_size=8).map(lambda t: t + "\x00"))
def test_a_filter_with_u_0000_is_answered_not_raised(filled, value) -> None:
    _lite, pg = filled
    for key in ("session", "caller", "route", "provider", "model", "status", "kind", "policy"):
        assert pg.list(**{key: value}) == ([], None)
    assert pg.session_totals(value) is None and pg.get(value) is None


def _serve_config(tmp_path, dsn: str) -> str:
    cfg = tmp_path / "router.toml"
    cfg.write_text(f'[traces]\nstore = "postgres"\ndsn = "{dsn}"\n')
    return str(cfg)


def test_unhardcoded_serve_on_postgres_stops_on_sigterm_with_every_answer_stored(tmp_path, postgres_dsn) -> None:
    """The shipped server (granian, `unhardcoded serve --config`), loaded, then SIGTERM: its
    drain commits every run to PostgreSQL."""
    import signal

    from .test_traces import _serve_under_load
    done = _serve_under_load(tmp_path, 1.0, signal.SIGTERM, ("--config", _serve_config(tmp_path, postgres_dsn)))
    assert done > 20
    store = PostgresStore(postgres_dsn)
    try:
        assert store.count() == done
        rows, _ = store.list(limit=5)
        assert all(store.get(r["trace_id"])["status"] == "ok" for r in rows)
    finally:
        store.close()
    assert not (tmp_path / "data" / "traces.sqlite3").exists()


def test_kill_9_of_a_router_on_postgres_loses_at_most_max_pending_and_no_record_is_torn(tmp_path, postgres_dsn) -> None:
    import signal

    from .test_traces import _serve_under_load
    done = _serve_under_load(tmp_path, 2.0, signal.SIGKILL, ("--config", _serve_config(tmp_path, postgres_dsn)))
    store = PostgresStore(postgres_dsn)
    try:
        stored, cursor = [], None
        while True:
            page, cursor = store.records(limit=1000, cursor=cursor)
            stored += page
            if cursor is None:
                break
    finally:
        store.close()
    assert done > 50 and 0 <= done - len(stored) <= 2048, (done, len(stored))
    assert all(r["status"] == "ok" and r["decision"]["digest"] for r in stored)  # every record whole


def test_serve_with_an_unreachable_database_exits_2_in_one_line_without_the_password(tmp_path) -> None:
    import subprocess
    import sys

    from .harness import free_port
    port = free_port()  # nothing listens there
    cfg = _serve_config(tmp_path, f"postgresql://router:s3cret-pw@127.0.0.1:{port}/traces?connect_timeout=3")
    proc = subprocess.run([sys.executable, "-m", "unhardcoded.cli", "serve", "--config", cfg, "--port", "0",
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open the trace store postgresql://router@127.0.0.1:")
    assert "s3cret-pw" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


async def test_unhardcoded_copy_moves_a_sqlite_history_into_postgres_whole(tmp_path, postgres_dsn, capsys) -> None:
    from unhardcoded.cli import main
    from unhardcoded.traces.replay import replay_record
    stack = await start_stack(tmp_path)  # the embedded default: traces.sqlite3 and responses.sqlite3 in tmp_path
    try:
        await traffic(stack)
        r1 = await stack.client.responses.create(model="family:gpt-5.4-mini", input="My name is Ada")
        assert stack.store.flush()
    finally:
        await stack.close()
    cfg = _serve_config(tmp_path, postgres_dsn)
    for _ in range(2):  # copying again replaces each copy with itself
        assert main(["copy", "--data-dir", str(tmp_path), "--to", cfg, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["traces"], out["responses"]) == (8, 1) and out["catalogs"] >= 1
    lite = SQLiteStore(tmp_path / "traces.sqlite3")
    pg = PostgresStore(postgres_dsn)
    try:
        assert pg.count() == lite.count() == 8
        assert pg.list(limit=100) == lite.list(limit=100)
        for row in lite.list(limit=100)[0]:
            rec = pg.get(row["trace_id"])
            assert rec == lite.get(row["trace_id"])
            if rec["kind"] == "chat" and rec["status"] == "ok":
                snap = pg.catalog_snapshot(rec["catalog"]["digest"])
                assert replay_record(rec, snap)["identical"] is True
        assert pg.usage(Usage()).report() == lite.usage(Usage()).report()
    finally:
        lite.close()
        pg.close()
    from unhardcoded.traces.postgres import PostgresResponseStore
    kept = PostgresResponseStore(postgres_dsn)
    try:
        got = kept.get(r1.id)
        assert got is not None and got.response["output"][0]["content"][0]["text"] == r1.output_text == "ok"
    finally:
        kept.close()
    same = tmp_path / "same.toml"
    same.write_text(f'[traces]\ndata_dir = "{tmp_path}"\n')
    assert main(["copy", "--data-dir", str(tmp_path), "--to", str(same)]) == 2
    assert "same store" in capsys.readouterr().err


def test_a_schema_in_the_dsn_keeps_two_deployments_apart_in_one_database(postgres_dsn) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA staging")
        conn.execute("CREATE SCHEMA prod")
    stores = {name: PostgresStore(f"{postgres_dsn} options=-csearch_path={name}", flush_ms=10)
              for name in ("staging", "prod")}
    try:
        stores["staging"].submit_record(_rec(1))
        stores["prod"].submit_record(_rec(2))
        stores["prod"].submit_record(_rec(3))
        assert all(s.flush() for s in stores.values())
        assert stores["staging"].count() == 1 and stores["prod"].count() == 2
        assert stores["staging"].get(_rec(2)["trace_id"]) is None
    finally:
        for s in stores.values():
            s.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT table_schema FROM information_schema.tables "
                                             "WHERE table_name = 'traces'")}
    assert tables == {"staging", "prod"}


def test_a_catalog_another_router_purged_is_written_again_when_used(postgres_dsn, monkeypatch) -> None:
    """A router that knows a catalog snapshot is stored does not write it again; if another
    router's retention purge removed it meanwhile (unused for the retention period), the next
    record over it must bring it back, or that record could not replay."""
    from unhardcoded.traces import sqlstore
    from unhardcoded.traces.copy import _Snapshot
    monkeypatch.setattr(sqlstore, "_TOUCH_AHEAD_MS", 0)  # every commit renews the stamp
    snap = _Snapshot("c" * 64, {"routes": [], "note": "a catalog"})
    a, b = PostgresStore(postgres_dsn, flush_ms=10), PostgresStore(postgres_dsn, flush_ms=10)
    try:
        b.submit_record(_rec(1, catalog={"digest": snap.digest}), snap)
        assert b.flush() and a.catalog_snapshot(snap.digest) == snap.data
        time.sleep(0.01)
        a.purge(older_than_ms=int(time.time() * 1000) + 60_000)  # everything is past a's horizon
        assert a.catalog_snapshot(snap.digest) is None and a.count() == 0
        b.submit_record(_rec(2, catalog={"digest": snap.digest}), snap)
        assert b.flush() and b.dropped == 0
        assert a.catalog_snapshot(snap.digest) == snap.data
    finally:
        a.close()
        b.close()


def test_one_router_at_a_time_purges_a_shared_store(postgres_dsn) -> None:
    a, b = (PostgresStore(postgres_dsn, flush_ms=10, retention_days=0) for _ in range(2))  # no purge of their own
    try:
        for i in range(3):
            a.submit_record(_rec(i, started_at_ms=_NOW_MS - 90 * 86_400_000 + i))
        assert a.flush()
        with psycopg.connect(postgres_dsn, autocommit=True) as other:  # another router is purging
            from unhardcoded.traces.postgres import _PURGE_LOCK
            other.execute("SELECT pg_advisory_lock(%s)", (_PURGE_LOCK,))
            assert b.purge(older_than_ms=_NOW_MS) == 0 and b.count() == 3
            other.execute("SELECT pg_advisory_unlock(%s)", (_PURGE_LOCK,))
        assert b.purge(older_than_ms=_NOW_MS) == 3 and a.count() == 0
    finally:
        a.close()
        b.close()


def test_a_commit_stuck_behind_a_lock_gives_up_keeps_its_runs_and_writes_them_later(postgres_dsn, monkeypatch) -> None:
    import unhardcoded.traces.postgres as pgmod
    real = pgmod.PostgresStore._open

    seen = []

    def short(self):  # the writer gives up after 200 ms instead of 30 s
        conn = real(self)
        seen.append(conn.execute("SHOW statement_timeout").fetchone()[0])
        conn.execute("SET statement_timeout = 200")
        return conn
    monkeypatch.setattr(pgmod.PostgresStore, "_open", short)
    store = PostgresStore(postgres_dsn, flush_ms=10)
    try:
        store.submit_record(_rec(1))
        assert store.flush()
        with psycopg.connect(postgres_dsn) as other:  # another session holds the table
            other.execute("LOCK TABLE traces IN ACCESS EXCLUSIVE MODE")
            store.submit_record(_rec(2))
            deadline = time.monotonic() + 10
            while store.failing_since_ms is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert store.failing_since_ms is not None and "QueryCanceled" in store.last_error
            assert store.pending == 1
        assert store.flush(20) and store.count() == 2 and store.dropped == 0
        assert seen and set(seen) == {"30s"}  # as shipped, SQLite's busy timeout
    finally:
        store.close()


@pytest.fixture(scope="module")
def fuzz_dsn(postgres_server) -> str:
    return postgres_server.database()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(query=st.one_of(st.just({"session": "a\x00"}), st.just({"route": "\x00", "since": "0"}),
                       _trace_queries),
       trace_id=st.text(min_size=1, max_size=12))
async def test_on_postgres_the_get_endpoints_never_a_500_whatever_the_query(tmp_path_factory, fuzz_dsn,
                                                                            query, trace_id) -> None:
    """As tests/test_http_fuzz.py, on a router whose traces and responses are in PostgreSQL:
    U+0000, times past 64 bits, bytes that are not UTF-8 get an answer or a 4xx, never a 500."""
    from urllib.parse import quote, urlencode
    store = PostgresStore(fuzz_dsn, flush_ms=20)
    s = await start_stack(tmp_path_factory.mktemp("pgfuzz"), store=store, trace_store="postgres", trace_dsn=fuzz_dsn)
    try:
        answers = [await s.get("/x/traces?" + urlencode(query)),
                   await s.get("/x/traces/" + quote(trace_id, safe="")),
                   await s.get("/x/sessions/" + quote(trace_id, safe="")),
                   await s.get("/x/sessions?" + urlencode(query)),
                   await s.get("/v1/usage?" + urlencode({("window" if k == "cursor" else k): v for k, v in query.items()})),
                   await s.get("/v1/responses/" + quote(trace_id, safe="")),
                   await s.post("/x/backtest", {"policy_ir": ["cmp", "bench_intelligence", "ge", 0.5],
                                                **{k: v for k, v in query.items() if k in ("route", "caller")}})]
    finally:
        await s.close()
        store.close()
        s.app.response_store.close()
    for status, body in answers:
        assert status in (200, 400, 404), (status, body, query, trace_id)
        if status != 200:
            assert body["error"]["type"] == "invalid_request_error" and isinstance(body["error"]["code"], str)


async def test_a_session_served_by_two_routers_totals_both_once_each_has_read_the_other(
        tmp_path, postgres_dsn, monkeypatch) -> None:
    import unhardcoded.router.engine as engine
    monkeypatch.setattr(engine, "SHARED_SESSION_S", 0.0)  # read again at every call
    stacks = await _replicas(tmp_path, postgres_dsn)
    a, b = stacks

    async def call(s) -> dict:
        r = await s.client.chat.completions.create(model="", messages=MSG, extra_body={"session": "rr"})
        assert s.store.flush()
        await asyncio.sleep(0)
        for _ in range(200):  # the background reading of the other router's calls
            if not s.router._background:
                break
            await asyncio.sleep(0.01)
        return s.router.sessions.get(None, "rr")  # once the reading begun by this call is merged
    try:
        assert (await call(a))["calls"] == 1
        assert (await call(b))["calls"] == 2   # b starts from the store: a's call
        assert (await call(a))["calls"] == 3   # a reads b's call again, beside its own
        assert (await call(a))["calls"] == 4
        assert (await call(b))["calls"] == 5   # b reads a's two
        assert (await call(b))["calls"] == 6
    finally:
        await _close_replicas(stacks)
