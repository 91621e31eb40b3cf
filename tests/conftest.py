from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "reference"

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def golden_path() -> Path:
    path = SHARED / "sigma_pol_v2.json"
    if not path.exists():
        pytest.fail(f"the reference's golden vectors are expected at {path} (../shared beside the checkout)")
    return path


@pytest.fixture(params=["uvicorn", "granian"])
async def stack(tmp_path, request):
    """The router served end to end (``harness.start_stack``) on both servers: uvicorn (ASGI) and
    granian (RSGI, what `unhardcoded serve` ships, which also learns of a client going away by
    its own means). A test file that needs another stack defines its own ``stack``."""
    from .harness import start_stack
    s = await start_stack(tmp_path, server=request.param)
    yield s
    await s.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the session (``unhardcoded.testing.postgres``); skipped where none
    can be had, unless UNHARDCODED_REQUIRE_POSTGRES=1."""
    from unhardcoded.testing.postgres import PostgresServer, Unavailable
    try:
        server = PostgresServer()
    except Unavailable as exc:
        if os.environ.get("UNHARDCODED_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here (UNHARDCODED_REQUIRE_POSTGRES=1) but {exc}")
        pytest.skip(f"no PostgreSQL server for these tests: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    """The DSN of a new empty database on it."""
    return postgres_server.database()
