"""The broker: virtual hosts, users and settings shared by every connection."""

from __future__ import annotations

from dataclasses import dataclass

from ..auth.users import UserStore
from .vhost import VirtualHost


@dataclass
class BrokerConfig:
    """Settings RabbitMQ users know from rabbitmq.conf, with RabbitMQ's defaults."""

    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    default_user: str = "guest"
    default_pass: str = "guest"
    default_vhost: str = "/"
    loopback_users: tuple[str, ...] = ("guest",)
    max_message_size: int = 128 * 1024 * 1024  # RabbitMQ 3.10 default: 128 MiB
    product: str = "hare"


class Broker:
    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.vhosts: dict[str, VirtualHost] = {}
        self.users = UserStore()
        self.add_vhost(self.config.default_vhost)
        c = self.config
        self.users.add(c.default_user, c.default_pass, tags=["administrator"],
                       vhosts={c.default_vhost}, loopback_only=c.default_user in c.loopback_users)
        self.connections: set[object] = set()

    def add_vhost(self, name: str) -> VirtualHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VirtualHost(name)
        return vhost
