"""What every command gets: the resolved config and lazily made clients."""

from __future__ import annotations

from functools import cached_property

import click
import redis

from swarmctl.config import Config
from swarmctl.connection import connect
from swarmctl.events import Events
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry


class AppContext:
    """Shared state of one swarmctl invocation (``ctx.obj``)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @cached_property
    def client(self) -> redis.Redis:
        client = connect(self.config)
        client.ping()  # fail here, with one clear line, not halfway through a command
        return client

    @cached_property
    def queue(self) -> Queue:
        return Queue(self.client, self.config)

    @cached_property
    def registry(self) -> DroneRegistry:
        return DroneRegistry(self.client, self.config)

    @cached_property
    def events(self) -> Events:
        return Events(self.client, self.config.queue.events_max)


pass_app = click.make_pass_decorator(AppContext)
