"""Configuration: defaults, file, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmctl.config import load_config
from swarmctl.defaults import SETTINGS
from swarmctl.exceptions import ConfigError


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
