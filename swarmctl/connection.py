"""Which Redis: a URL, a Sentinel service, or the embedded local server."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.sentinel import Sentinel

from swarmctl.config import Config
from swarmctl.embedded import EmbeddedRedis
from swarmctl.exceptions import BackendUnavailable, ConfigError

#: Errors that mean "the server is not there right now"; daemons retry these.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, ConnectionError, OSError)


def describe(config: Config) -> str:
    """Where the queue lives, for messages (passwords masked)."""
    cfg = config.redis
    if cfg.sentinels:
        return f"Redis Sentinel service {cfg.service_name!r} via {', '.join(cfg.sentinels)}"
    if cfg.url:
        parts = urlsplit(cfg.url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", "")) or str(cfg.url)
    return str(EmbeddedRedis(cfg.data_dir))


def _sentinel_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"redis.sentinels: {text!r} is not host:port")
    return host.strip("[]"), int(port)


def connect(config: Config) -> redis.Redis:
    """A client for the configured server (starting the embedded one if needed)."""
    cfg = config.redis
    common = {"socket_timeout": cfg.socket_timeout, "socket_connect_timeout": cfg.socket_timeout,
              "decode_responses": True, "health_check_interval": 30}
    auth = {k: v for k, v in (("username", cfg.username), ("password", cfg.password)) if v}
    if cfg.sentinels:
        sentinel = Sentinel([_sentinel_address(s) for s in cfg.sentinels],
                            sentinel_kwargs={"socket_timeout": cfg.socket_timeout, **auth}, **common, **auth)
        return sentinel.master_for(cfg.service_name, **common, **auth)
    if cfg.url:
        if urlsplit(cfg.url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"redis.url: {describe(config)} must start with redis://, rediss:// or unix://")
        refuse_open_server(config)
        return redis.Redis.from_url(cfg.url, **common, **auth)
    embedded = EmbeddedRedis(cfg.data_dir)
    embedded.ensure_running()
    return embedded.client(socket_timeout=cfg.socket_timeout, health_check_interval=30)


def refuse_open_server(config: Config) -> None:
    """A queue on the network with no password is anyone's root shell on every drone: refuse it."""
    cfg = config.redis
    parts = urlsplit(cfg.url or "")
    if parts.scheme == "unix" or cfg.password or parts.password or cfg.allow_no_password:
        return
    try:
        loopback = ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        loopback = parts.hostname == "localhost"
    if not loopback:
        raise ConfigError(f"refusing {describe(config)}: a Redis server on the network needs a password "
                          "(redis.password, or redis://:PASSWORD@host); set redis.allow_no_password to override")


def unavailable(config: Config, exc: BaseException) -> BackendUnavailable:
    """The one-line error for a server that cannot be reached."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BackendUnavailable(f"cannot reach {describe(config)}: {reason}")


def server_time(client: redis.Redis) -> float:
    """Redis's clock in epoch seconds: the one clock for every time stored in Redis."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6
