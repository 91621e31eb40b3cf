"""The model catalog: providers, models, routes, declared fields, profiles."""

from .loader import DEFAULT_CATALOG, CatalogError, build_catalog, load_catalog
from .model import Catalog, Model, Price, Profile, Provider, Route, canonical_json

__all__ = ["Catalog", "CatalogError", "DEFAULT_CATALOG", "Model", "Price", "Profile", "Provider", "Route",
           "build_catalog", "canonical_json", "load_catalog"]
