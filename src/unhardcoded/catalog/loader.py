"""Reading a catalog file (TOML or JSON) into a validated :class:`Catalog`.

Format (docs/catalog.md has the full reference)::

    version = 1
    tier_order = ["fallback", "marketplace", "partner"]   # optional
    traits = "model_meta.json"      # optional: per-family values of declared fields
    envelope = '["and", ["meets_req"], ["not", ["is", "disabled"]]]'   # optional Pred

    [fields.bench_intelligence]
    sort = "Num"
    default = 0
    description = "Intelligence benchmark, 0..1"

    [providers.openai]
    wire = "openai"                 # openai | anthropic | gemini
    base_url = "https://api.openai.com/v1"
    key_env = "OPENAI_API_KEY"
    tier = "partner"
    pricing_id = "openai"           # the pricing library's provider id

    [models."gpt-5.5"]
    vendor = "openai"
    context = 400000
    supports_tools = true
    routes = [{ provider = "openai", id = "gpt-5.5" }]

    [profiles.default]
    policy = '["policy", ...]'      # JSON text of a sigma-pol/v2 Policy term

Every refusal is a :class:`CatalogError` with a code and the path of the fault.
"""

from __future__ import annotations

import json
import math
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ..lang import strictjson
from ..lang.admission import check
from ..lang.errors import AdmissionError, JSONError, LangError, PathPart
from ..lang.fields import CORE_FIELD_NAMES, DEFAULT_TIER_ORDER, FieldDecl
from .model import CAPABILITY_FLAGS, WIRES, Catalog, Model, Price, Profile, Provider, Route
from .prices import PriceSource, default_price_source

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_CATALOG = DATA_DIR / "default.toml"

_TOP_KEYS = {"version", "tier_order", "traits", "envelope", "fields", "providers", "models", "profiles", "description"}
_PROVIDER_KEYS = {"wire", "base_url", "key_env", "tier", "has_tee", "no_log", "headers", "pricing_id", "description"}
_MODEL_KEYS = {"vendor", "context", "fields", "routes", "description", *CAPABILITY_FLAGS}
_ROUTE_KEYS = {"provider", "id", "price_in", "price_out", "price_cached_in", "context"}
_FIELD_KEYS = {"sort", "default", "description", "group"}
_PROFILE_KEYS = {"policy", "description"}


class CatalogError(LangError):
    kind = "invalid_catalog"


def _fail(code: str, message: str, path: list[PathPart]) -> CatalogError:
    return CatalogError(code, message, path)


def _table(v: Any, path: list[PathPart]) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _fail("catalog_shape", "expected a table", path)
    return v


def _keys(t: Mapping[str, Any], allowed: set[str], path: list[PathPart]) -> None:
    for k in t:
        if k not in allowed:
            raise _fail("unknown_key", f"unknown key {k!r}; expected one of {', '.join(sorted(allowed))}", path + [k])


def _str(t: Mapping[str, Any], key: str, path: list[PathPart], required: bool = True) -> str | None:
    v = t.get(key)
    if v is None:
        if required:
            raise _fail("missing_key", f"{key!r} is required", path + [key])
        return None
    if not isinstance(v, str) or not v:
        raise _fail("bad_value", f"{key!r} must be a non-empty string", path + [key])
    return v


def _bool(t: Mapping[str, Any], key: str, path: list[PathPart]) -> bool:
    v = t.get(key, False)
    if not isinstance(v, bool):
        raise _fail("bad_value", f"{key!r} must be true or false", path + [key])
    return v


def _price(v: Any, path: list[PathPart]) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _fail("bad_price", "a price is a finite, non-negative number of USD per million tokens", path)
    return float(v)


def _count(v: Any, path: list[PathPart]) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise _fail("bad_value", "a context window is a positive integer number of tokens", path)
    return v


def _policy_json(v: Any, path: list[PathPart]) -> Any:
    if isinstance(v, str):
        try:
            return strictjson.loads(v)
        except JSONError as exc:
            raise _fail(exc.code, exc.message, path) from None
    return v


def _field_value(decl: FieldDecl, v: Any, path: list[PathPart]) -> Any:
    if decl.sort == "Bool":
        if not isinstance(v, bool):
            raise _fail("bad_field_value", f"field {decl.name!r} is Bool", path)
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        raise _fail("bad_field_value", f"field {decl.name!r} is Num", path)
    return v


def read_document(path: Path) -> dict[str, Any]:
    """Decode a catalog file by its extension (.toml or .json)."""
    raw = path.read_bytes()
    if path.suffix == ".json":
        doc = strictjson.loads(raw)
    else:
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise _fail("catalog_syntax", f"{path.name}: {exc}", []) from None
    if not isinstance(doc, dict):
        raise _fail("catalog_shape", "a catalog is a table", [])
    return doc


def build_catalog(doc: Mapping[str, Any], *, base_dir: Path | None = None, prices: PriceSource | None = None,
                  at: datetime | None = None, source: str = "<memory>") -> Catalog:
    """Validate a decoded catalog document and resolve what it leaves to its sources."""
    at = at or datetime.now(timezone.utc)
    _keys(doc, _TOP_KEYS, [])
    if doc.get("version", 1) != 1:
        raise _fail("catalog_version", "this host reads catalog version 1", ["version"])
    tier_order = doc.get("tier_order", list(DEFAULT_TIER_ORDER))
    if not isinstance(tier_order, list) or not tier_order or not all(isinstance(t, str) and t for t in tier_order) \
            or len(set(tier_order)) != len(tier_order):
        raise _fail("bad_value", "tier_order is a list of distinct names, lowest first", ["tier_order"])

    # fields
    decls: list[FieldDecl] = []
    for name, f in _table(doc.get("fields", {}), ["fields"]).items():
        p = ["fields", name]
        f = _table(f, p)
        _keys(f, _FIELD_KEYS, p)
        if name in CORE_FIELD_NAMES:
            raise _fail("core_field", f"{name!r} is a core field; it cannot be redeclared", p)
        try:
            decls.append(FieldDecl(name=name, sort=f.get("sort", ""), default=f.get("default"),
                                   description=f.get("description", ""), group=f.get("group", "host")))
        except ValueError as exc:
            raise _fail("bad_field", str(exc), p) from None
    by_name = {d.name: d for d in decls}

    traits: Mapping[str, Mapping[str, Any]] = {}
    if "traits" in doc:
        tpath = Path(doc["traits"])
        if not tpath.is_absolute():
            tpath = (base_dir or DATA_DIR) / tpath
        try:
            tdoc = strictjson.loads(tpath.read_bytes())
        except OSError as exc:
            raise _fail("traits_missing", f"cannot read traits file {tpath.name}: {exc.strerror}", ["traits"]) from None
        traits = _table(tdoc.get("families", tdoc), ["traits"])

    # providers
    providers: dict[str, Provider] = {}
    for pid, p in _table(doc.get("providers", {}), ["providers"]).items():
        path = ["providers", pid]
        p = _table(p, path)
        _keys(p, _PROVIDER_KEYS, path)
        wire = _str(p, "wire", path)
        if wire not in WIRES:
            raise _fail("bad_wire", f"wire must be one of {', '.join(WIRES)}", path + ["wire"])
        tier = p.get("tier", "fallback")
        if tier not in tier_order:
            raise _fail("unknown_tier", f"tier {tier!r} is not in tier_order", path + ["tier"])
        headers = p.get("headers", {})
        if not isinstance(headers, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise _fail("bad_value", "headers is a table of strings", path + ["headers"])
        base_url = _str(p, "base_url", path)
        assert base_url is not None
        if not base_url.startswith(("http://", "https://")):
            raise _fail("bad_value", "base_url is an http(s) URL", path + ["base_url"])
        providers[pid] = Provider(id=pid, wire=wire, base_url=base_url.rstrip("/"),
                                  key_env=_str(p, "key_env", path, required=False), tier=tier,
                                  has_tee=_bool(p, "has_tee", path), no_log=_bool(p, "no_log", path),
                                  headers=dict(headers), pricing_id=_str(p, "pricing_id", path, required=False),
                                  description=p.get("description", ""))

    # models and routes
    models: dict[str, Model] = {}
    for family, m in _table(doc.get("models", {}), ["models"]).items():
        path = ["models", family]
        m = _table(m, path)
        _keys(m, _MODEL_KEYS, path)
        caps = {flag: _bool(m, flag, path) for flag in CAPABILITY_FLAGS if flag in m}
        values: dict[str, Any] = {}
        for name, v in (traits.get(family) or {}).items():
            if name in by_name:
                values[name] = _field_value(by_name[name], v, ["traits", family, name])
        for name, v in _table(m.get("fields", {}), path + ["fields"]).items():
            if name not in by_name:
                raise _fail("undeclared_field", f"field {name!r} is not declared under [fields]", path + ["fields", name])
            values[name] = _field_value(by_name[name], v, path + ["fields", name])
        raw_routes = m.get("routes")
        if not isinstance(raw_routes, list) or not raw_routes:
            raise _fail("missing_key", "a model has at least one route", path + ["routes"])
        context = _count(m.get("context"), path + ["context"])
        context_source = "catalog" if context is not None else None
        routes: list[Route] = []
        for i, r in enumerate(raw_routes):
            rp = path + ["routes", i]
            r = _table(r, rp)
            _keys(r, _ROUTE_KEYS, rp)
            pid = _str(r, "provider", rp)
            if pid not in providers:
                raise _fail("unknown_provider", f"provider {pid!r} is not declared", rp + ["provider"])
            model_id = _str(r, "id", rp, required=False) or family
            price = Price(_price(r.get("price_in"), rp + ["price_in"]), _price(r.get("price_out"), rp + ["price_out"]),
                          _price(r.get("price_cached_in"), rp + ["price_cached_in"]))
            if price.input is not None or price.output is not None:
                price = Price(price.input, price.output, price.cached_input, "catalog")
            route_context = _count(r.get("context"), rp + ["context"])
            prov = providers[pid]
            if prices is not None and prov.pricing_id and (price.input is None or price.output is None or context is None):
                listing = prices.lookup(prov.pricing_id, model_id, at)
                if listing is not None:
                    if price.input is None and price.output is None:
                        price = listing.price
                    if context is None and listing.context:
                        context, context_source = listing.context, listing.price.source
            if any(rt.provider == pid for rt in routes):
                raise _fail("duplicate_route", f"{family} lists provider {pid!r} twice", rp)
            routes.append(Route(pid, family, model_id, price, route_context))
        models[family] = Model(family=family, vendor=m.get("vendor"), context=context, context_source=context_source,
                               capabilities=caps, fields=values, routes=tuple(routes),
                               description=m.get("description", ""))

    probe = Catalog(providers, models, decls, tuple(tier_order), source=source)
    schema = probe.schema

    envelope = None
    if "envelope" in doc:
        envelope = _policy_json(doc["envelope"], ["envelope"])
        try:
            sort = check(envelope, schema)
        except AdmissionError as exc:
            raise _fail(exc.code, exc.message, ["envelope", *exc.parts]) from None
        if sort != "Pred":
            raise _fail("sort_mismatch", "the envelope is a Pred term", ["envelope"])

    profiles: dict[str, Profile] = {}
    for name, pr in _table(doc.get("profiles", {}), ["profiles"]).items():
        path = ["profiles", name]
        pr = _table(pr, path)
        _keys(pr, _PROFILE_KEYS, path)
        if "policy" not in pr:
            raise _fail("missing_key", "a profile carries a policy", path)
        term = _policy_json(pr["policy"], path + ["policy"])
        try:
            sort = check(term, schema)
        except AdmissionError as exc:
            raise _fail(exc.code, exc.message, [*path, "policy", *exc.parts]) from None
        if sort != "Policy":
            raise _fail("sort_mismatch", "a profile's policy is a full Policy term", path + ["policy"])
        profiles[name] = Profile(name, term, pr.get("description", ""))

    return Catalog(providers, models, decls, tuple(tier_order), profiles, envelope, source)


def load_catalog(path: str | Path | None = None, *, prices: PriceSource | None | str = "default",
                 at: datetime | None = None) -> Catalog:
    """Load a catalog file; the shipped default when ``path`` is None."""
    p = Path(path) if path is not None else DEFAULT_CATALOG
    try:
        doc = read_document(p)
    except OSError as exc:
        raise _fail("catalog_missing", f"cannot read catalog {p}: {exc.strerror}", []) from None
    except JSONError as exc:
        raise _fail(exc.code, exc.message, list(exc.parts)) from None
    source = default_price_source() if prices == "default" else prices
    return build_catalog(doc, base_dir=p.parent, prices=source, at=at, source=str(p))  # type: ignore[arg-type]


def catalog_from_json(text: str | bytes, **kw: Any) -> Catalog:
    return build_catalog(json.loads(text), **kw)
