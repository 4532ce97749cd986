"""The configuration file: RabbitMQ's ``rabbitmq.conf`` format (``key = value`` lines, ``#``
comments), with the keys hare understands, and the ``HARE_*`` environment variables.

A key RabbitMQ knows but hare does not act on (``rabbitmq_keys``) is kept as a warning in
``ServeOptions.warnings``, logged at start; a key nobody knows is an error, so typos do not pass
silently. A bad value is an error naming the key and what it expects. Precedence: command-line flag
> environment > file > default."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..broker.broker import BrokerConfig
from . import logging_setup
from .listener_config import ListenerConfig
from .logging_setup import LogSettings
from .rabbitmq_keys import known_names, rabbitmq_knows


@dataclass
class ServeOptions:
    bind: str | None = None  # --bind / --port: one plain listener there (see ListenerConfig.listeners)
    port: int | None = None
    net: ListenerConfig = field(default_factory=ListenerConfig)  # listeners, TLS, auth mechanisms
    http_port: int = 15672
    data_dir: str = "./hare-data"
    log_level: str = "info"  # of every log output, unless log.console.level / log.file.level say
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    log: LogSettings = field(default_factory=LogSettings)
    management_requested: bool = False  # an HTTP port was asked for (nothing serves it yet)
    node_name: str | None = None  # --node-name: this node's name in a cluster
    cluster_endpoints: str | None = None  # --cluster etcd://HOST:PORT,...: join that cluster
    cluster_name: str | None = None
    cluster_listener: str | None = None  # --cluster-bind ADDR:PORT, the node-to-node link
    discovery_retry_limit: int = 10  # etcd unreachable at start: tries, as RabbitMQ's peer discovery
    discovery_retry_interval: int = 500  # ms between them
    warnings: list[str] = field(default_factory=list)  # logged once logging is set up


def _bool(value: str) -> bool:
    if value.lower() in ("true", "yes", "1", "on"):
        return True
    if value.lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _uint(value: str) -> int:
    """A non-negative integer (``heartbeat = 30``)."""
    if not value.isdigit():
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return int(value)


def _port(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"expected a port number (0-65535), got {value!r}")
    return int(value)


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"expected a non-negative number (a fraction of the total RAM), got {value!r}")
    return number


def total_memory() -> int:
    """The machine's RAM in bytes (what RabbitMQ's relative limits are relative to)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError) as exc:
        raise ValueError(f"cannot read the total RAM of this machine ({exc}); use "
                         "disk_free_limit.absolute") from None


def _permission(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"expected a regular expression, got {value!r} ({exc})") from None
    return value


# as RabbitMQ reads them: k, M, G (and kiB, MiB, GiB) are powers of 1024; kB, MB, GB of 1000
_UNITS = {"": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def _size(value: str) -> int:
    """A byte count as rabbitmq.conf writes it: ``50000000``, ``50MB``, ``1GiB``, ``2gb``."""
    v = value.strip()
    digits = v.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = v[len(digits):].strip().lower()
    if unit not in _UNITS or not digits.strip().isdigit():
        raise ValueError(f"expected a size in bytes (50000000, 50MB, 1GiB), got {value!r}")
    return int(digits) * _UNITS[unit]


def _consumer_timeout(value: str) -> int | None:
    """Milliseconds, a positive integer as RabbitMQ requires; hare also takes ``false`` (no limit,
    which RabbitMQ only allows in advanced.config)."""
    if value.lower() in ("false", "infinity", "none"):
        return None
    if not value.isdigit() or int(value) == 0:
        raise ValueError(f"expected a positive number of milliseconds, or false for no limit, "
                         f"got {value!r}")
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
    """Apply the file at ``path`` to ``opts``. ValueError names the file, the line and the key."""
    loopback = set(opts.broker.loopback_users)
    b = opts.broker
    tags: list[str] | None = None  # default_user_tags.NAME = true|false, over RabbitMQ's default
    relative = False  # vm_memory_high_watermark.relative was given: it wins over .absolute
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{lineno}: expected 'key = value'")
        key, value = (part.strip() for part in line.split("=", 1))
        try:
            if opts.net.set(key, value, b):
                pass
            elif key == "management.tcp.port":
                opts.http_port = _port(value)
                opts.management_requested = True
            elif key == "cluster_name":
                opts.cluster_name = value
            elif key == "cluster.listener":
                opts.cluster_listener = value
            elif key == "cluster_formation.discovery_retry_limit":
                opts.discovery_retry_limit = _uint(value)
            elif key == "cluster_formation.discovery_retry_interval":
                opts.discovery_retry_interval = _uint(value)
            elif key.startswith("cluster_formation.etcd.endpoints."):
                endpoints = [e for e in (opts.cluster_endpoints or "").split(",") if e]
                opts.cluster_endpoints = ",".join([*endpoints, value.removeprefix("etcd://")])
            elif key == "data_dir":
                opts.data_dir = value
            elif key == "log.console.level":
                opts.log.console_level = logging_setup.level(value)
            elif key == "log.console":
                opts.log.console = _bool(value)
            elif key == "log.console.formatter":
                opts.log.console_formatter = logging_setup.formatter(value)
            elif key == "log.file":
                opts.log.file = None if value.lower() == "false" else value
            elif key == "log.file.level":
                opts.log.file_level = logging_setup.level(value)
            elif key == "log.file.formatter":
                opts.log.file_formatter = logging_setup.formatter(value)
            elif key == "default_user":
                b.default_user = value
            elif key == "default_pass":
                b.default_pass = value
            elif key == "default_vhost":
                b.default_vhost = value
            elif key == "heartbeat":
                b.heartbeat = _uint(value)
            elif key == "frame_max":
                b.frame_max = _uint(value)
            elif key == "channel_max":
                b.channel_max = _uint(value)
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
            elif key == "disk_free_limit.relative":
                b.disk_free_limit = int(_fraction(value) * total_memory())
            elif key == "default_permissions.configure":
                b.default_permissions = (_permission(value), *b.default_permissions[1:])
            elif key == "default_permissions.write":
                b.default_permissions = (b.default_permissions[0], _permission(value),
                                         b.default_permissions[2])
            elif key == "default_permissions.read":
                b.default_permissions = (*b.default_permissions[:2], _permission(value))
            elif key.startswith("default_user_tags."):
                if tags is None:
                    tags = []  # the file lists the tags: RabbitMQ's default list is replaced
                tag = key.split(".", 1)[1]
                if _bool(value) and tag not in tags:
                    tags.append(tag)
            elif rabbitmq_knows(key):
                opts.warnings.append(f"{path}:{lineno}: {key} is a RabbitMQ setting hare does not "
                                     "act on; ignored")
            else:
                raise _Unknown(key)
        except _Unknown:
            close = difflib.get_close_matches(key, known_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{path}:{lineno}: unknown setting {key!r}{hint}") from None
        except ValueError as exc:
            text = str(exc)  # the key first (some messages name it already)
            text = text if text.startswith(key) else f"{key}: {text}"
            raise ValueError(f"{path}:{lineno}: {text}") from None
    opts.broker.loopback_users = tuple(sorted(loopback))
    if tags is not None:
        b.default_user_tags = tuple(tags)
    try:
        opts.net.check()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if relative:  # as in RabbitMQ, with both given the relative watermark applies
        b.vm_memory_high_watermark_absolute = None
    return opts


class _Unknown(Exception):
    """A key neither hare nor RabbitMQ knows (a typo)."""


# HARE_* environment variables, as RabbitMQ's RABBITMQ_*: (name, what it sets)
ENVIRONMENT = {
    "HARE_CONFIG_FILE": "the configuration file (--config)",
    "HARE_NODE_IP_ADDRESS": "the address to listen on (--bind)",
    "HARE_NODE_PORT": "the AMQP port (--port)",
    "HARE_MANAGEMENT_PORT": "the HTTP port (--http-port)",
    "HARE_DATA_DIR": "the data directory (--data-dir)",
    "HARE_LOG_LEVEL": "the level of every log output (--log-level)",
    "HARE_LOG_FILE": "the log file (log.file; false: none)",
    "HARE_DEFAULT_USER": "default_user",
    "HARE_DEFAULT_PASS": "default_pass",
    "HARE_DEFAULT_VHOST": "default_vhost",
}


def apply_environment(opts: ServeOptions, env: Mapping[str, str]) -> ServeOptions:
    """Apply the ``HARE_*`` variables of ``env`` (empty ones are unset, as RabbitMQ's are). They
    override the configuration file; command-line flags override them. ValueError names the
    variable."""
    for name in ENVIRONMENT:
        value = env.get(name, "")
        if not value or name == "HARE_CONFIG_FILE":
            continue
        try:
            if name == "HARE_NODE_IP_ADDRESS":
                opts.bind = value
            elif name == "HARE_NODE_PORT":
                opts.port = _port(value)
            elif name == "HARE_MANAGEMENT_PORT":
                opts.http_port = _port(value)
                opts.management_requested = True
            elif name == "HARE_DATA_DIR":
                opts.data_dir = value
            elif name == "HARE_LOG_LEVEL":
                set_log_level(opts, logging_setup.level(value))
            elif name == "HARE_LOG_FILE":
                opts.log.file = None if value.lower() == "false" else value
            elif name == "HARE_DEFAULT_USER":
                opts.broker.default_user = value
            elif name == "HARE_DEFAULT_PASS":
                opts.broker.default_pass = value
            elif name == "HARE_DEFAULT_VHOST":
                opts.broker.default_vhost = value
        except ValueError as exc:
            raise ValueError(f"environment variable {name}: {exc}") from None
    return opts


def set_log_level(opts: ServeOptions, level: str) -> None:
    """``--log-level`` / HARE_LOG_LEVEL: the level of every output, over the file's levels."""
    opts.log_level = level
    opts.log.console_level = opts.log.file_level = None
