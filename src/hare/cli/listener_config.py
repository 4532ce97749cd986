"""The configuration keys of listeners, TLS and authentication mechanisms (RabbitMQ's names):
``listeners.tcp.NAME``, ``listeners.ssl.NAME``, ``listeners.tcp = none``, ``ssl_options.*``,
``ssl_handshake_timeout``, ``auth_mechanisms.N`` and ``ssl_cert_login_from``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..auth.external import LOGIN_FROM
from ..auth.sasl import KNOWN
from ..broker.broker import BrokerConfig
from ..server.listeners import Listener, parse_address
from ..server.tls import TLSOptions

DEFAULT_PORT = 5672


def _true_false(key: str, value: str) -> bool:
    if value in ("true", "false"):
        return value == "true"
    raise ValueError(f"{key} must be true or false, not {value!r}")


@dataclass
class ListenerConfig:
    tcp: dict[str, tuple[str | None, int]] | None = None  # None: the default, port 5672 everywhere
    ssl: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    tls: TLSOptions = field(default_factory=TLSOptions)
    versions: dict[str, str] = field(default_factory=dict)  # ssl_options.versions.N
    ciphers: dict[str, str] = field(default_factory=dict)  # ssl_options.ciphers.N
    depth: int | None = None  # ssl_options.depth: accepted, not enforced (see docs/security.md)
    mechanisms: dict[str, str] = field(default_factory=dict)  # auth_mechanisms.N

    def set(self, key: str, value: str, broker: BrokerConfig) -> bool:
        """Apply one key; False if it is not one of these. ValueError names the key and what is
        expected."""
        t = self.tls
        kind, _, name = key.partition(".")[2].partition(".")
        if key in ("listeners.tcp", "listeners.ssl"):
            if value != "none":
                raise ValueError(f"{key} takes only 'none' (no such listener); give addresses as "
                                 f"{key}.default = 5672, {key}.1 = 127.0.0.1:5672 ...")
            if key == "listeners.tcp":
                self.tcp = {}
            else:
                self.ssl = {}
        elif key.startswith("listeners.") and kind in ("tcp", "ssl") and name and "." not in name:
            try:
                address = parse_address(value)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
            if kind == "tcp":
                self.tcp = self.tcp or {}
                self.tcp[name] = address
            else:
                self.ssl[name] = address
        elif key in ("ssl_options.cacertfile", "ssl_options.certfile", "ssl_options.keyfile",
                     "ssl_options.password"):
            setattr(t, key.split(".")[1], value)
        elif key == "ssl_options.verify":
            if value not in ("verify_peer", "verify_none"):
                raise ValueError(f"ssl_options.verify must be verify_peer or verify_none, not {value!r}")
            t.verify = value
        elif key == "ssl_options.fail_if_no_peer_cert":
            t.fail_if_no_peer_cert = _true_false(key, value)
        elif key == "ssl_options.honor_cipher_order":
            t.honor_cipher_order = _true_false(key, value)
        elif key.startswith("ssl_options.versions."):
            if value not in ("tlsv1.2", "tlsv1.3"):
                raise ValueError(f"{key} must be tlsv1.2 or tlsv1.3, not {value!r}")
            self.versions[key.rsplit(".", 1)[1]] = value
            t.versions = tuple(self.versions.values())
        elif key.startswith("ssl_options.ciphers."):
            self.ciphers[key.rsplit(".", 1)[1]] = value
            t.ciphers = tuple(self.ciphers.values())
        elif key == "ssl_options.depth":
            if not value.isdigit():
                raise ValueError(f"ssl_options.depth must be a non-negative integer, not {value!r}")
            self.depth = int(value)
        elif key == "ssl_handshake_timeout":
            if not value.isdigit() or int(value) == 0:
                raise ValueError(f"ssl_handshake_timeout must be a positive number of milliseconds, "
                                 f"not {value!r}")
            t.handshake_timeout = int(value) / 1000
        elif key.startswith("auth_mechanisms."):
            if value not in KNOWN:
                raise ValueError(f"{key} must be one of {', '.join(KNOWN)}, not {value!r}")
            self.mechanisms[key.split(".", 1)[1]] = value
            broker.auth_mechanisms = tuple(dict.fromkeys(self.mechanisms.values()))
        elif key == "ssl_cert_login_from":
            if value not in LOGIN_FROM:
                raise ValueError(f"ssl_cert_login_from must be {' or '.join(LOGIN_FROM)}, not {value!r}")
            broker.ssl_cert_login_from = value
        else:
            return False
        return True

    def check(self) -> None:
        """The TLS options' values (ValueError naming the key), when there is a TLS listener."""
        if self.ssl:
            self.tls.check()

    def listeners(self, bind: str | None = None, port: int | None = None) -> list[Listener]:
        """The listeners to open. ``bind``/``port`` (``hare serve --bind/--port``) replace the
        plain ones by one listener (keeping the first one's host or port when only the other is
        given). Builds the TLS context: ValueError when a file cannot be loaded."""
        tcp = list(self.tcp.values()) if self.tcp is not None else [(None, DEFAULT_PORT)]
        if bind is not None or port is not None:
            host0, port0 = tcp[0] if tcp else (None, DEFAULT_PORT)
            tcp = [(bind or host0, port if port is not None else port0)]
        out = [Listener(host, p) for host, p in tcp]
        if self.ssl:
            ctx = self.tls.context()
            out += [Listener(host, p, ctx, self.tls.handshake_timeout) for host, p in self.ssl.values()]
        return out

