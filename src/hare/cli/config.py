"""The configuration file: RabbitMQ's ``rabbitmq.conf`` format (``key = value`` lines, ``#``
comments), with the keys hare understands. Unknown keys are an error, so typos do not pass
silently."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..broker.broker import BrokerConfig
from .listener_config import ListenerConfig


@dataclass
class ServeOptions:
    bind: str | None = None  # --bind / --port: one plain listener there (see ListenerConfig.listeners)
    port: int | None = None
    net: ListenerConfig = field(default_factory=ListenerConfig)  # listeners, TLS, auth mechanisms
    http_port: int = 15672
    data_dir: str = "./hare-data"
    log_level: str = "info"
    broker: BrokerConfig = field(default_factory=BrokerConfig)


def _bool(value: str) -> bool:
    if value.lower() in ("true", "yes", "1", "on"):
        return True
    if value.lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


_UNITS = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def _size(value: str) -> int:
    """A byte count as rabbitmq.conf writes it: ``50000000``, ``50MB``, ``1GiB``, ``2gb``."""
    v = value.strip()
    digits = v.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = v[len(digits):].strip().lower()
    if unit not in _UNITS or not digits.strip().isdigit():
        raise ValueError(f"not a size: {value!r}")
    return int(digits) * _UNITS[unit]


def _consumer_timeout(value: str) -> int | None:
    """Milliseconds, a positive integer as RabbitMQ requires; hare also takes ``false`` (no limit,
    which RabbitMQ only allows in advanced.config)."""
    if value.lower() in ("false", "infinity", "none"):
        return None
    if not value.isdigit() or int(value) == 0:
        raise ValueError(f"consumer_timeout must be a positive number of milliseconds, or false "
                         f"for no limit: {value!r}")
    return int(value)


def load_config(path: str | Path, opts: ServeOptions) -> ServeOptions:
    loopback = set(opts.broker.loopback_users)
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{lineno}: expected 'key = value'")
        key, value = (part.strip() for part in line.split("=", 1))
        b = opts.broker
        try:
            if opts.net.set(key, value, b):
                pass
            elif key == "management.tcp.port":
                opts.http_port = int(value)
            elif key == "data_dir":
                opts.data_dir = value
            elif key == "log.console.level":
                opts.log_level = value
            elif key == "default_user":
                b.default_user = value
            elif key == "default_pass":
                b.default_pass = value
            elif key == "default_vhost":
                b.default_vhost = value
            elif key == "heartbeat":
                b.heartbeat = int(value)
            elif key == "frame_max":
                b.frame_max = int(value)
            elif key == "channel_max":
                b.channel_max = int(value)
            elif key == "max_message_size":
                b.max_message_size = int(value)
            elif key == "disk_free_limit.absolute":
                b.disk_free_limit = _size(value)
            elif key == "consumer_timeout":
                b.consumer_timeout = _consumer_timeout(value)
            elif key in ("load_definitions", "definitions.local.path"):
                b.load_definitions = value
            elif key == "definitions.import_backend":
                if value != "local_filesystem":
                    raise ValueError("only 'definitions.import_backend = local_filesystem' is supported")
            elif key == "loopback_users":
                if value != "none":
                    raise ValueError("only 'loopback_users = none' is supported")
                loopback.clear()
            elif key.startswith("loopback_users."):
                user = key.split(".", 1)[1]
                if _bool(value):
                    loopback.add(user)
                else:
                    loopback.discard(user)
            else:
                raise ValueError(f"unknown setting {key!r}")
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
    opts.broker.loopback_users = tuple(sorted(loopback))
    try:
        opts.net.check()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return opts
