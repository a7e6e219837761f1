"""One YAML file, environment overrides, documented defaults.

Precedence, lowest first: defaults (swarmctl.defaults), the config file
(``--config``, else ``$XDG_CONFIG_HOME/build-swarm/swarm.yml``, else
``/etc/build-swarm/swarm.yml``), environment variables ``SWARM_<SECTION>_<KEY>``,
then command-line options.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import yaml

from swarmctl import paths
from swarmctl.defaults import SECTIONS, SETTINGS, SYSTEM_CONFIG, Setting
from swarmctl.exceptions import ConfigError
from swarmctl.targets import Target, parse_targets, resolve_targets

_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def default_config_path() -> Path | None:
    """The config file used when none is given, if one exists."""
    for candidate in (paths.config_home() / "swarm.yml", Path(SYSTEM_CONFIG)):
        if candidate.is_file():
            return candidate
    return None


def coerce(setting: Setting, value: Any, origin: str) -> Any:
    """Turn a raw value into the setting's type, or raise ConfigError naming the key."""
    if value is None:
        return None
    kind = setting.type
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if kind is list:
            if isinstance(value, list):
                return [str(v) for v in value]
            if isinstance(value, str):
                parsed = yaml.safe_load(value) if value.strip().startswith("[") else value.split()
                if isinstance(parsed, list):
                    return [str(v) for v in parsed]
            raise ValueError(value)
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        result = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"{origin}: {setting.name} must be {kind.__name__}, got {_shown(value)}"
        ) from None
    if kind in (int, float):
        _check_range(setting, result, origin)
    check = _CHECKS.get(setting.name)
    if check is not None and result:
        problem = check(result)
        if problem:
            raise ConfigError(f"{origin}: {setting.name}: {problem}")
    return result


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_range(setting: Setting, value: float, origin: str) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{origin}: {setting.name} must be a finite number, got {value!r}")
    low = setting.min if setting.min is not None else -math.inf
    high = setting.max if setting.max is not None else math.inf
    if not low <= value <= high:
        raise ConfigError(f"{origin}: {setting.name} must be in {setting.range}, got {value!r}")


def _url_problem(value: str, schemes: tuple[str, ...]) -> str | None:
    """Why a URL cannot be used (bad scheme, port or brackets), or None. Never shows a password."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on an out-of-range or non-numeric port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in schemes:
        return f"must start with {', '.join(s + '://' for s in schemes)}"
    if parts.scheme != "unix" and parts.scheme != "file" and not parts.hostname:
        return "names no host"
    return None


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "redis.url": lambda v: _url_problem(v, ("redis", "rediss", "unix")),
    "binhost.url": lambda v: _url_problem(v, ("http", "https", "file")),
}


class Config:
    """Resolved settings; ``config.queue.policy`` or ``config.get("queue.policy")``."""

    # One namespace per section of swarmctl.defaults (a test keeps this list equal to SECTIONS).
    redis: SimpleNamespace
    queue: SimpleNamespace
    drone: SimpleNamespace
    orchestrator: SimpleNamespace
    breaker: SimpleNamespace
    healing: SimpleNamespace
    binhost: SimpleNamespace
    log: SimpleNamespace
    nightly: SimpleNamespace

    def __init__(self, values: dict[str, Any], source: Path | None = None,
                 targets: dict[str, Target] | None = None) -> None:
        self._values = values
        self.source = source
        #: The farm's build targets (swarmctl.targets): the file's ``targets:``, else ``default`` alone.
        self.targets: dict[str, Target] = resolve_targets(targets or {})
        self._declared_targets = targets or {}
        for section in SECTIONS:
            keys = {s.key: values[s.name] for s in SETTINGS if s.section == section}
            setattr(self, section, SimpleNamespace(**keys))

    def get(self, name: str) -> Any:
        return self._values[name]

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with ``section_key=value`` overrides applied (None values ignored)."""
        values = dict(self._values)
        for flat, value in overrides.items():
            if value is None:
                continue
            name = flat.replace("__", ".")
            if name not in _BY_NAME:
                raise ConfigError(f"unknown setting {name}")
            values[name] = coerce(_BY_NAME[name], value, "option")
        return Config(values, self.source, self._declared_targets)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for setting in SETTINGS:
            out.setdefault(setting.section, {})[setting.key] = self._values[setting.name]
        return out


def load_config(path: str | os.PathLike[str] | None = None,
                environ: dict[str, str] | None = None) -> Config:
    """Read defaults, then the file, then environment overrides."""
    env = os.environ if environ is None else environ
    values = {s.name: s.default for s in SETTINGS}
    source = Path(path) if path else (
        Path(env["SWARM_CONFIG"]) if env.get("SWARM_CONFIG") else default_config_path())
    targets: dict[str, Target] = {}
    if source is not None:
        found, targets = _read_file(source)
        values.update(found)
    for setting in SETTINGS:
        if setting.env in env:
            values[setting.name] = coerce(setting, env[setting.env], setting.env)
    return Config(values, source, targets)


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, Target]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    values: dict[str, Any] = {}
    targets = parse_targets(data.pop("targets", None), str(path))
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {section!r} (known: {', '.join(SECTIONS)}, targets)")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section {section} must be a mapping")
        for key, raw in body.items():
            name = f"{section}.{key}"
            if name not in _BY_NAME:
                raise ConfigError(f"{path}: unknown key {name}")
            values[name] = coerce(_BY_NAME[name], raw, str(path))
    return values, targets
