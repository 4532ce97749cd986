"""The configuration file: RabbitMQ's ``rabbitmq.conf`` format (``key = value`` lines, ``#``
comments), with the keys hare understands. Unknown keys are an error, so typos do not pass
silently."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..broker.broker import BrokerConfig


@dataclass
class ServeOptions:
    bind: str = "0.0.0.0"
    port: int = 5672
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


# as RabbitMQ reads them: k, M, G (and kiB, MiB, GiB) are powers of 1024; kB, MB, GB of 1000
_UNITS = {"": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


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


def _size_of(key: str, value: str) -> int:
    try:
        return _size(value)
    except ValueError:
        raise ValueError(f"{key} must be a size, such as 1GB, 512MiB or a number of bytes: "
                         f"{value!r}") from None


def _limit(key: str, value: str, least: int = 0) -> int | None:
    """A count or a time in ms: an integer of at least ``least``, or ``infinity`` (no limit)."""
    if value == "infinity":
        return None
    if not value.isdigit() or int(value) < least:
        raise ValueError(f"{key} must be an integer of at least {least}, or infinity: {value!r}")
    return int(value)


def load_config(path: str | Path, opts: ServeOptions) -> ServeOptions:
    loopback = set(opts.broker.loopback_users)
    relative = False  # vm_memory_high_watermark.relative was given: it wins over .absolute
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{lineno}: expected 'key = value'")
        key, value = (part.strip() for part in line.split("=", 1))
        b = opts.broker
        try:
            if key in ("listeners.tcp.default", "listeners.tcp.1"):
                host, _, port = value.rpartition(":")
                opts.port = int(port)
                if host:
                    opts.bind = host
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
                if not value.isdigit() or not 0 < int(value) <= 512 * 1024 * 1024:
                    raise ValueError(f"max_message_size must be between 1 and 536870912 (512 MiB) "
                                     f"bytes, as in RabbitMQ: {value!r}")
                b.max_message_size = int(value)
            elif key == "vm_memory_high_watermark.relative":
                try:
                    ratio = float(value)
                except ValueError:
                    ratio = -1.0
                if not 0 <= ratio <= 1:
                    raise ValueError(f"vm_memory_high_watermark.relative must be a fraction of the "
                                     f"RAM from 0 to 1, such as 0.4: {value!r}")
                b.vm_memory_high_watermark, relative = ratio, True
            elif key == "vm_memory_high_watermark.absolute":
                b.vm_memory_high_watermark_absolute = _size_of(key, value)
            elif key == "total_memory_available_override_value":
                b.total_memory_available_override_value = _size_of(key, value)
            elif key == "handshake_timeout":
                b.handshake_timeout = _limit(key, value, 1)
            elif key == "connection_max":
                b.connection_max = _limit(key, value)
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
    if relative:  # as in RabbitMQ, with both given the relative watermark applies
        opts.broker.vm_memory_high_watermark_absolute = None
    return opts
