"""Host settings: where to listen, which catalog, deadlines, keys, storage.

Read from a TOML file (``--config``) and environment variables; every
setting has a default that runs on a laptop. Provider keys come from the
environment (``OPENAI_API_KEY``...) or the ``[keys]`` table of the config
file; they are held in :class:`Keys` and never printed.

    [server]
    host = "127.0.0.1"
    port = 8080
    caller_keys_sha256 = ["<sha256 of a caller key>"]   # optional: require Bearer keys
    shutdown_grace_s = 30      # on SIGTERM/SIGINT: how long calls in flight may take to finish
    cpu_scheduling = "batch"   # Linux: "batch" (SCHED_BATCH, the default) or "normal"; see
                               # docs/performance.md (UNHARDCODED_CPU_SCHEDULING too)

    [router]
    catalog = "catalog.toml"
    request_deadline_ms = 50000
    attempt_timeout_ms = 60000
    first_token_timeout_ms = 20000
    compact_at_tokens = 24000  # x_router.compact turns true once a call's input reaches this:
                               # the caller's cue to POST /v1/compact

    [traces]
    data_dir = ".unhardcoded"
    capture_content = false
    retention_days = 30        # 0 keeps traces for ever; numbers out of range are refused
    store = "sqlite"           # or "postgres" (UNHARDCODED_TRACE_STORE too): one database for many routers (traces/postgres.py;
                               # pip install 'unhardcoded[postgres]'), with
    # dsn = "host=db user=router dbname=traces"   # (UNHARDCODED_TRACE_DSN too); a password is
                               # better in PGPASSWORD or ~/.pgpass than here
    writer_scheduling = "idle" # Linux: the trace writer under SCHED_IDLE (out of the calls' way,
                               # raised while it is a batch behind) or "normal" (as the server's
                               # threads); traces/writer_priority.py (UNHARDCODED_TRACE_WRITER_SCHEDULING too)

    [keys]
    OPENAI_API_KEY = "sk-..."

    [callers.billing-backend]  # a named caller: its keys (Bearer) and any of its limits
    keys_sha256 = ["<sha256 of its key>"]
    requests_per_minute = 600
    tokens_per_minute = 200000
    max_concurrent_requests = 20
    budget_usd = 50            # spent per budget_window, from the calls' costs
    budget_window = "month"    # "day" or "month" (UTC); runtime/limits.py
    envelope = '["cmp", "price_out", "le", 5]'   # a Pred ∧-ed onto every policy it runs
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from decimal import Decimal

from .lang.errors import LangError
from .runtime.limits import BUDGET_WINDOWS, CallerSpec


class ConfigError(LangError):
    kind = "invalid_config"


class Keys:
    """Provider keys by variable name: the environment first, then the config file."""

    def __init__(self, from_file: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None) -> None:
        self._file = dict(from_file or {})
        self._env = environ if environ is not None else os.environ
        self._secrets: list[str] | None = None

    def get(self, name: str | None) -> str | None:
        if not name:
            return None
        v = self._env.get(name)
        if v:
            return v
        v = self._file.get(name)
        return v or None

    def all_values(self) -> list[str]:
        """Every known secret value, for redaction (read once: keys are fixed for a process)."""
        if self._secrets is None:
            vals = [v for v in self._file.values() if v]
            vals += [v for k, v in self._env.items() if v and (k.endswith("_API_KEY") or k.endswith("_KEY"))]
            self._secrets = vals
        return self._secrets

    def __repr__(self) -> str:
        return f"Keys({len(self._file)} from file)"


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    catalog: str | None = None
    request_deadline_ms: int = 50_000
    attempt_timeout_ms: int = 60_000
    first_token_timeout_ms: int | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    shutdown_grace_s: int = 30
    cpu_scheduling: str = "batch"
    caller_keys_sha256: frozenset[str] = frozenset()
    data_dir: str = ".unhardcoded"
    capture_content: bool = False
    retention_days: int = 30
    trace_store: str = "sqlite"
    trace_dsn: str = field(default="", repr=False)  # [traces] dsn: the postgres store's; may hold a password
    trace_writer_scheduling: str = "idle"
    store_responses: bool = True       # /v1/responses keeps responses (store: true, OpenAI's default)
    flows_dir: str | None = None
    compact_at_tokens: int = 24_000    # x_router.compact: a call's prompt tokens reached this
    keys: Keys = field(default_factory=Keys)
    callers: dict[str, CallerSpec] = field(default_factory=dict)

    @property
    def keys_required(self) -> bool:
        """Caller keys are asked for once any are configured, anonymous or named."""
        return bool(self.caller_keys_sha256 or self.callers)

    def caller_of(self, presented: str | None) -> tuple[bool, str | None]:
        """(the key is accepted, the named caller it belongs to or None)."""
        if not self.keys_required:
            return True, None
        if not presented:
            return False, None
        digest = hashlib.sha256(presented.encode("utf-8")).hexdigest()
        for spec in self.callers.values():
            if digest in spec.keys_sha256:
                return True, spec.name
        return digest in self.caller_keys_sha256, None

    def caller_key_ok(self, presented: str | None) -> bool:
        return self.caller_of(presented)[0]


CPU_SCHEDULING = ("batch", "normal")
TRACE_STORES = ("sqlite", "postgres")  # traces/__init__.py:open_store opens them
WRITER_SCHEDULING = ("idle", "normal")  # traces/writer_priority.py reads its modes from here

# numbers outside these make every call fail at once (a deadline of 0) or delete every trace as it
# is written (a negative retention): refused at start-up, with the setting's path
_BOUNDS: tuple[tuple[str, str, int, int | None], ...] = (
    ("server", "port", 0, 65535), ("server", "max_body_bytes", 1, None), ("server", "shutdown_grace_s", 1, None),
    ("router", "request_deadline_ms", 1, None), ("router", "attempt_timeout_ms", 1, None),
    ("router", "first_token_timeout_ms", 1, None), ("router", "compact_at_tokens", 1, None),
    ("traces", "retention_days", 0, None),  # 0: kept for ever
)

_SECTIONS: dict[str, dict[str, type]] = {
    "server": {"host": str, "port": int, "caller_keys_sha256": list, "max_body_bytes": int,
               "shutdown_grace_s": int, "cpu_scheduling": str},
    "router": {"catalog": str, "request_deadline_ms": int, "attempt_timeout_ms": int,
               "first_token_timeout_ms": int, "flows_dir": str,
               "compact_at_tokens": int},
    "traces": {"data_dir": str, "capture_content": bool, "retention_days": int, "store": str,
               "dsn": str, "writer_scheduling": str, "store_responses": bool},
    "keys": {},
    "callers": {},
}
_CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CALLER_SETTINGS: dict[str, type | tuple[type, ...]] = {
    "keys_sha256": list, "requests_per_minute": int, "tokens_per_minute": int, "budget_usd": (int, float),
    "budget_window": str, "max_concurrent_requests": int, "envelope": str}


def _callers(table: Mapping[str, Any]) -> dict[str, CallerSpec]:
    """``[callers.NAME]`` tables, each checked whole (its path in every refusal)."""
    out: dict[str, CallerSpec] = {}
    owner: dict[str, str] = {}
    for name, spec in table.items():
        where = ["callers", name]
        if not _CALLER_NAME.fullmatch(name):
            raise ConfigError("bad_value", "a caller's name is 1 to 64 letters, digits, '_', '.' or '-', "
                              "starting with a letter or digit", where)
        if not isinstance(spec, dict):
            raise ConfigError("bad_value", f"[callers.{name}] is a table", where)
        for k, v in spec.items():
            want = _CALLER_SETTINGS.get(k)
            if want is None:
                raise ConfigError("unknown_key", f"unknown setting {k!r} in [callers.{name}]", [*where, k])
            if not isinstance(v, want) or isinstance(v, bool):
                raise ConfigError("bad_value", f"callers.{name}.{k} has the wrong type", [*where, k])
        keys = spec.get("keys_sha256")
        if not keys:
            raise ConfigError("bad_value", f"callers.{name}.keys_sha256 lists the SHA-256 (hex) of its keys",
                              [*where, "keys_sha256"])
        for i, digest in enumerate(keys):
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise ConfigError("bad_value", "a key digest is 64 lowercase hex digits (sha256sum)",
                                  [*where, "keys_sha256", i])
            if owner.setdefault(digest, name) != name:
                raise ConfigError("bad_value", f"this key is also caller {owner[digest]!r}'s",
                                  [*where, "keys_sha256", i])
        for k in ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests"):
            if k in spec and spec[k] < 1:
                raise ConfigError("bad_value", f"callers.{name}.{k} must be at least 1", [*where, k])
        budget = spec.get("budget_usd")
        if budget is not None and not budget > 0:  # NaN is not > 0 either
            raise ConfigError("bad_value", f"callers.{name}.budget_usd must be more than 0", [*where, "budget_usd"])
        window = spec.get("budget_window", "month")
        if window not in BUDGET_WINDOWS:
            raise ConfigError("bad_value", f"callers.{name}.budget_window is one of {', '.join(BUDGET_WINDOWS)}",
                              [*where, "budget_window"])
        envelope = None
        if "envelope" in spec:  # its admission needs the catalog's fields: the router checks it (set_catalog)
            from .lang import strictjson
            try:
                envelope = strictjson.loads(spec["envelope"])
            except LangError as exc:
                raise ConfigError(exc.code, f"callers.{name}.envelope is a JSON Pred term: {exc.message}",
                                  [*where, "envelope"]) from None
        out[name] = CallerSpec(name, frozenset(keys), spec.get("requests_per_minute"), spec.get("tokens_per_minute"),
                               None if budget is None else Decimal(str(budget)), window,
                               spec.get("max_concurrent_requests"), envelope)
    return out


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    env = environ if environ is not None else os.environ
    doc: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        base = p.parent
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("config_missing", f"cannot read {p}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config_syntax", str(exc)) from None
    for section, value in doc.items():
        if section not in _SECTIONS:
            raise ConfigError("unknown_key", f"unknown section [{section}]", [section])
        if not isinstance(value, dict):
            raise ConfigError("bad_value", f"[{section}] is a table", [section])
        if section == "keys":
            for k, v in value.items():
                if not isinstance(v, str):
                    raise ConfigError("bad_value", "keys are strings", [section, k])
            continue
        if section == "callers":
            continue  # checked whole by _callers
        for k, v in value.items():
            want = _SECTIONS[section].get(k)
            if want is None:
                raise ConfigError("unknown_key", f"unknown setting {k!r} in [{section}]", [section, k])
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise ConfigError("bad_value", f"{section}.{k} must be a {want.__name__}", [section, k])

    s = Settings()
    server, router, traces = doc.get("server", {}), doc.get("router", {}), doc.get("traces", {})
    s.host = server.get("host", env.get("UNHARDCODED_HOST", s.host))
    port = server.get("port", env.get("UNHARDCODED_PORT", s.port))
    try:
        s.port = int(port)
    except ValueError:  # from the environment: a file's value is an int already
        raise ConfigError("bad_value", "UNHARDCODED_PORT must be an integer", ["server", "port"]) from None
    s.max_body_bytes = server.get("max_body_bytes", s.max_body_bytes)
    s.shutdown_grace_s = server.get("shutdown_grace_s", s.shutdown_grace_s)
    s.cpu_scheduling = server.get("cpu_scheduling", env.get("UNHARDCODED_CPU_SCHEDULING", s.cpu_scheduling))
    if s.cpu_scheduling not in CPU_SCHEDULING:
        raise ConfigError("bad_value", f"server.cpu_scheduling is one of {', '.join(CPU_SCHEDULING)}",
                          ["server", "cpu_scheduling"])
    digests = set(server.get("caller_keys_sha256", []))
    for raw in filter(None, env.get("UNHARDCODED_CALLER_KEYS", "").split(",")):
        digests.add(hashlib.sha256(raw.strip().encode()).hexdigest())
    s.caller_keys_sha256 = frozenset(digests)
    cat = router.get("catalog", env.get("UNHARDCODED_CATALOG"))
    s.catalog = str((base / cat)) if cat and not Path(cat).is_absolute() and path is not None else cat
    s.request_deadline_ms = router.get("request_deadline_ms", s.request_deadline_ms)
    s.attempt_timeout_ms = router.get("attempt_timeout_ms", s.attempt_timeout_ms)
    s.first_token_timeout_ms = router.get("first_token_timeout_ms", s.first_token_timeout_ms)
    s.compact_at_tokens = router.get("compact_at_tokens", s.compact_at_tokens)
    flows = router.get("flows_dir", env.get("UNHARDCODED_FLOWS"))
    s.flows_dir = str(base / flows) if flows and path is not None and not Path(flows).is_absolute() else flows
    s.data_dir = traces.get("data_dir", env.get("UNHARDCODED_DATA", s.data_dir))
    if path is not None and not Path(s.data_dir).is_absolute() and "data_dir" in traces:
        s.data_dir = str(base / s.data_dir)
    s.capture_content = traces.get("capture_content", env.get("UNHARDCODED_CAPTURE_CONTENT", "") in ("1", "true"))
    s.retention_days = traces.get("retention_days", s.retention_days)
    s.trace_store = traces.get("store", env.get("UNHARDCODED_TRACE_STORE", s.trace_store))
    if s.trace_store not in TRACE_STORES:  # a store this build does not have must not quietly become SQLite
        raise ConfigError("bad_value", f"traces.store is one of {', '.join(TRACE_STORES)}", ["traces", "store"])
    s.trace_dsn = traces.get("dsn", env.get("UNHARDCODED_TRACE_DSN", s.trace_dsn))
    if s.trace_store == "postgres":
        if not s.trace_dsn:
            raise ConfigError("bad_value", "traces.store = \"postgres\" needs traces.dsn (or UNHARDCODED_TRACE_DSN): "
                              "a libpq connection string such as \"host=db user=router dbname=traces\"",
                              ["traces", "dsn"])
        try:
            from psycopg import conninfo
        except ImportError:
            raise ConfigError("bad_value", "traces.store = \"postgres\" needs psycopg: "
                              "pip install 'unhardcoded[postgres]'", ["traces", "store"]) from None
        try:
            conninfo.conninfo_to_dict(s.trace_dsn)
        except Exception:  # its text may hold the password: not repeated here
            raise ConfigError("bad_value", "traces.dsn is not a libpq connection string or URI",
                              ["traces", "dsn"]) from None
    s.trace_writer_scheduling = traces.get("writer_scheduling",
                                           env.get("UNHARDCODED_TRACE_WRITER_SCHEDULING", s.trace_writer_scheduling))
    if s.trace_writer_scheduling not in WRITER_SCHEDULING:
        raise ConfigError("bad_value", f"traces.writer_scheduling is one of {', '.join(WRITER_SCHEDULING)}",
                          ["traces", "writer_scheduling"])
    s.store_responses = traces.get("store_responses", s.store_responses)
    s.keys = Keys(doc.get("keys", {}), env)
    s.callers = _callers(doc.get("callers", {}))
    for k, v in overrides.items():
        if v is not None:
            setattr(s, k, v)
    for section, key, low, high in _BOUNDS:
        v = getattr(s, key)
        if v is None:  # unset: the router's own default applies
            continue
        if v < low or (high is not None and v > high):
            within = f"at least {low}" if high is None else f"from {low} to {high}"
            raise ConfigError("bad_value", f"{section}.{key} must be {within}", [section, key])
    return s
