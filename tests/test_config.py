"""Host settings read from a TOML file: each fault names its setting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from unhardcoded.config import ConfigError, load_settings


def settings_from(tmp_path, text: str):
    p = tmp_path / "unhardcoded.toml"
    p.write_text(text, encoding="utf-8")
    return load_settings(p, environ={})


def test_defaults_without_a_file() -> None:
    s = load_settings(None, environ={})
    assert (s.port, s.shutdown_grace_s, s.max_body_bytes) == (8080, 30, 16 * 1024 * 1024)


def test_server_settings_are_read(tmp_path) -> None:
    s = settings_from(tmp_path, "[server]\nport = 9001\nshutdown_grace_s = 5\nmax_body_bytes = 2048\n")
    assert (s.port, s.shutdown_grace_s, s.max_body_bytes) == (9001, 5, 2048)


@pytest.mark.parametrize("text, code, path", [
    ("[server]\nshutdown_grace_s = 0\n", "bad_value", "shutdown_grace_s"),
    ("[server]\nshutdown_grace_s = \"soon\"\n", "bad_value", "shutdown_grace_s"),
    ("[server]\nshutdown_grace_s = true\n", "bad_value", "shutdown_grace_s"),
    ("[server]\ngrace = 5\n", "unknown_key", "grace"),
    ("[servers]\nport = 1\n", "unknown_key", "servers"),
])
def test_a_bad_setting_is_refused_with_its_path(tmp_path, text: str, code: str, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from(tmp_path, text)
    assert err.value.code == code and path in err.value.path


def test_trace_writer_scheduling_defaults_to_idle_and_is_checked(tmp_path) -> None:
    assert load_settings(None, environ={}).trace_writer_scheduling == "idle"
    env = {"UNHARDCODED_TRACE_WRITER_SCHEDULING": "normal"}
    assert load_settings(None, environ=env).trace_writer_scheduling == "normal"
    assert settings_from(tmp_path, '[traces]\nwriter_scheduling = "normal"\n').trace_writer_scheduling == "normal"
    with pytest.raises(ConfigError) as err:
        settings_from(tmp_path, '[traces]\nwriter_scheduling = "batch"\n')
    assert err.value.code == "bad_value" and err.value.path == "$.traces.writer_scheduling"
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ={"UNHARDCODED_TRACE_WRITER_SCHEDULING": "fifo"})
    assert err.value.path == "$.traces.writer_scheduling"



def test_storing_responses_is_on_by_default_and_can_be_turned_off(tmp_path) -> None:
    assert load_settings(None, environ={}).store_responses is True
    assert settings_from(tmp_path, '[traces]\nstore_responses = false\n').store_responses is False
    with pytest.raises(ConfigError) as err:
        settings_from(tmp_path, '[traces]\nstore_responses = "no"\n')
    assert err.value.code == "bad_value" and err.value.path == "$.traces.store_responses"

# (section, key, least, most): what a number outside them would do is in config.py's _BOUNDS
BOUNDED = [("server", "port", 0, 65535), ("server", "max_body_bytes", 1, None),
           ("server", "shutdown_grace_s", 1, None), ("router", "request_deadline_ms", 1, None),
           ("router", "attempt_timeout_ms", 1, None), ("router", "first_token_timeout_ms", 1, None),
           ("router", "compact_at_tokens", 1, None), ("traces", "retention_days", 0, None)]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(BOUNDED), st.integers(min_value=-2**62, max_value=2**62))
def test_a_number_out_of_range_is_refused_with_its_path_and_one_in_range_is_kept(tmp_path_factory, bounded,
                                                                                 value: int) -> None:
    section, key, low, high = bounded
    path = tmp_path_factory.mktemp("cfg") / "unhardcoded.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n", encoding="utf-8")
    if value < low or (high is not None and value > high):
        with pytest.raises(ConfigError) as err:
            load_settings(path, environ={})
        assert err.value.code == "bad_value" and err.value.path == f"$.{section}.{key}"
        assert f"{section}.{key} must be" in err.value.message
    else:
        assert getattr(load_settings(path, environ={}), key) == value


def test_a_port_from_the_environment_is_checked_too() -> None:
    assert load_settings(None, environ={"UNHARDCODED_PORT": "9001"}).port == 9001
    for bad, says in (("abc", "must be an integer"), ("99999", "from 0 to 65535"), ("-1", "from 0 to 65535")):
        with pytest.raises(ConfigError) as err:
            load_settings(None, environ={"UNHARDCODED_PORT": bad})
        assert err.value.path == "$.server.port" and says in err.value.message


def test_a_retention_of_zero_keeps_traces_and_a_negative_one_is_refused(tmp_path) -> None:
    assert settings_from(tmp_path, "[traces]\nretention_days = 0\n").retention_days == 0
    with pytest.raises(ConfigError):
        settings_from(tmp_path, "[traces]\nretention_days = -1\n")


def test_a_trace_store_this_build_lacks_is_refused_not_replaced_by_sqlite(tmp_path) -> None:
    assert load_settings(None, environ={}).trace_store == "sqlite"
    assert settings_from(tmp_path, '[traces]\nstore = "sqlite"\n').trace_store == "sqlite"
    for name in ("postgresql", "memory", "SQLite", ""):
        with pytest.raises(ConfigError) as err:
            settings_from(tmp_path, f'[traces]\nstore = "{name}"\n')
        assert err.value.code == "bad_value" and err.value.path == "$.traces.store"
        assert "sqlite" in err.value.message and "postgres" in err.value.message
    with pytest.raises(ConfigError) as err:  # from the environment, the same rule
        load_settings(None, environ={"UNHARDCODED_TRACE_STORE": "memory"})
    assert err.value.path == "$.traces.store"


def test_cpu_scheduling_defaults_to_batch_and_is_checked(tmp_path) -> None:
    assert load_settings(None, environ={}).cpu_scheduling == "batch"
    assert load_settings(None, environ={"UNHARDCODED_CPU_SCHEDULING": "normal"}).cpu_scheduling == "normal"
    assert settings_from(tmp_path, '[server]\ncpu_scheduling = "normal"\n').cpu_scheduling == "normal"
    with pytest.raises(ConfigError) as err:
        settings_from(tmp_path, '[server]\ncpu_scheduling = "realtime"\n')
    assert err.value.code == "bad_value" and err.value.path == "$.server.cpu_scheduling"
