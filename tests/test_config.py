"""Configuration: defaults, file, environment overrides, clear errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from swarmctl.config import load_config
from swarmctl.defaults import SETTINGS
from swarmctl.exceptions import ConfigError
from tests.helpers import isolated_env, run_cli


def test_defaults_are_documented_and_typed() -> None:
    config = load_config(environ={})
    for setting in SETTINGS:
        assert setting.doc.strip()
        assert config.get(setting.name) == setting.default
    assert config.breaker.failures == 5 and config.breaker.ground_seconds == 300
    assert config.orchestrator.interval < 60


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "swarm.yml"
    path.write_text("breaker:\n  failures: 7\nqueue:\n  policy: fifo\ndrone:\n  command: [make, '{cpv}']\n")
    config = load_config(path, environ={"SWARM_BREAKER_FAILURES": "9", "SWARM_HEALING_ENABLED": "yes"})
    assert config.breaker.failures == 9
    assert config.queue.policy == "fifo"
    assert config.drone.command == ["make", "{cpv}"]
    assert config.healing.enabled is True


def test_xdg_config_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "build-swarm").mkdir()
    (tmp_path / "build-swarm" / "swarm.yml").write_text("orchestrator:\n  offline_after: 42\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_config(environ={}).orchestrator.offline_after == 42.0


@pytest.mark.parametrize("env, message", [
    ({"SWARM_BREAKER_FAILURES": "many"}, "SWARM_BREAKER_FAILURES: breaker.failures must be int"),
    ({"SWARM_HEALING_ALLOW_REBOOT": "perhaps"}, "healing.allow_reboot must be bool"),
    ({"SWARM_ORCHESTRATOR_INTERVAL": "true"}, "orchestrator.interval must be float"),
])
def test_bad_overrides_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=env)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yml", environ={})


def test_config_declares_every_section_for_the_type_checker() -> None:
    """Config's annotations (what mypy checks attribute access against) name exactly the declared sections."""
    from swarmctl.config import Config
    from swarmctl.defaults import SECTIONS

    assert sorted(Config.__annotations__) == sorted(SECTIONS)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "swarm.yml"
    path.write_bytes(b"breaker:\n  failures: 5 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"swarm.yml: not UTF-8 text \(byte 28\)"):
        load_config(path, environ={})


OUT_OF_RANGE = [
    ("SWARM_REDIS_SOCKET_TIMEOUT", "-1", "redis.socket_timeout must be in 0.01 ... 3600"),
    ("SWARM_REDIS_SOCKET_TIMEOUT", "nan", "redis.socket_timeout must be a finite number"),
    ("SWARM_REDIS_SOCKET_TIMEOUT", "inf", "redis.socket_timeout must be a finite number"),
    ("SWARM_REDIS_URL", "redis://127.0.0.1:99999/0", r"redis.url: not a valid URL \(Port out of range"),
    ("SWARM_REDIS_URL", "redis://[::1/0", r"redis.url: not a valid URL \(Invalid IPv6 URL\)"),
    ("SWARM_REDIS_URL", "http://127.0.0.1/0", "redis.url: must start with redis://"),
    ("SWARM_BINHOST_URL", "http://host:port", r"binhost.url: not a valid URL"),
    ("SWARM_ORCHESTRATOR_LEADER_TTL", "nan", "orchestrator.leader_ttl must be a finite number"),
    ("SWARM_ORCHESTRATOR_METRICS_PORT", "70000", r"orchestrator.metrics_port must be in 0 ... 65535"),
    ("SWARM_QUEUE_EVENTS_MAX", "-5", "queue.events_max must be in 1 ... "),
    ("SWARM_ORCHESTRATOR_INTERVAL", "0", "orchestrator.interval must be in 0.01 ... "),
    ("SWARM_DRONE_HEARTBEAT_INTERVAL", "0", "drone.heartbeat_interval must be in 0.01 ... "),
    ("SWARM_DRONE_POLL_INTERVAL", "0", "drone.poll_interval must be in 0.01 ... "),
    ("SWARM_ORCHESTRATOR_OFFLINE_AFTER", "-10", "orchestrator.offline_after must be in 0.1 ... "),
    ("SWARM_BREAKER_FAILURES", "0", "breaker.failures must be in 1 ... 1000"),
]


@pytest.mark.parametrize("name, value, message", OUT_OF_RANGE)
def test_out_of_range_values_are_refused_naming_the_key(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}: {message}"):
        load_config(environ={name: value})


def test_every_numeric_setting_has_a_finite_range_holding_its_default() -> None:
    for setting in SETTINGS:
        if setting.type in (int, float):
            assert setting.min is not None and setting.max is not None, setting.name
            assert math.isfinite(setting.min) and math.isfinite(setting.max), setting.name
            assert setting.min <= setting.default <= setting.max, setting.name
            with pytest.raises(ConfigError, match="must be in"):
                load_config(environ={setting.env: str(setting.max * 2 + 1)})
        else:
            assert setting.min is None and setting.max is None, setting.name


def test_ranges_apply_to_the_file_and_to_options_too(tmp_path: Path) -> None:
    path = tmp_path / "swarm.yml"
    path.write_text("orchestrator:\n  offline_after: -3\n")
    with pytest.raises(ConfigError, match=r"swarm\.yml: orchestrator\.offline_after must be in"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"option: queue\.events_max must be in"):
        load_config(environ={}).with_overrides(queue__events_max=0)


@pytest.mark.parametrize("name, value, message", [*OUT_OF_RANGE[:5], OUT_OF_RANGE[7], OUT_OF_RANGE[8],
                                                  OUT_OF_RANGE[9]])
def test_bad_values_are_one_line_from_the_cli(name: str, value: str, message: str, tmp_path: Path) -> None:
    env = {**isolated_env(tmp_path), name: value}
    proc = run_cli(["queue", "list"], env, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert re.search(message, proc.stderr)


def test_a_non_utf8_config_file_is_one_line_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "swarm.yml"
    path.write_bytes(b"\xff\xfe")
    proc = run_cli(["--config", str(path), "queue", "list"], isolated_env(tmp_path), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {path}: not UTF-8 text (byte 0)"
