"""Host settings read from a TOML file: each fault names its setting."""

from __future__ import annotations

import pytest

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


def test_cpu_scheduling_defaults_to_batch_and_is_checked(tmp_path) -> None:
    assert load_settings(None, environ={}).cpu_scheduling == "batch"
    assert load_settings(None, environ={"UNHARDCODED_CPU_SCHEDULING": "normal"}).cpu_scheduling == "normal"
    assert settings_from(tmp_path, '[server]\ncpu_scheduling = "normal"\n').cpu_scheduling == "normal"
    with pytest.raises(ConfigError) as err:
        settings_from(tmp_path, '[server]\ncpu_scheduling = "realtime"\n')
    assert err.value.code == "bad_value" and err.value.path == "$.server.cpu_scheduling"
