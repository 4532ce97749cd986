"""Listener addresses as RabbitMQ writes them (``5672``, ``127.0.0.1:5672``, ``::1:5672``,
``[::1]:5672``) and the sockets they bind.

A listener given only a port listens on every interface, IPv4 and IPv6, as RabbitMQ does: one
dual-stack ``[::]`` socket where the system allows it, else ``0.0.0.0`` and ``[::]`` side by side
(or ``0.0.0.0`` alone on a host without IPv6).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass


@dataclass
class Listener:
    host: str | None  # None: every interface, IPv4 and IPv6
    port: int
    tls: ssl.SSLContext | None = None  # an AMQPS listener
    handshake_timeout: float = 5.0  # seconds the TLS handshake may take


def parse_address(value: str) -> tuple[str | None, int]:
    """``(host, port)`` from ``PORT``, ``HOST:PORT``, ``IPV6:PORT`` or ``[IPV6]:PORT``; host None
    for a port alone. ValueError says what is expected."""
    v = value.strip()
    host, sep, port = v.rpartition(":")
    if not sep:
        host, port = "", v
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (sep and not host):
        raise ValueError(f"expected a port, HOST:PORT or [IPV6]:PORT, not {value!r}")
    return host or None, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _socket(family: int, addr: tuple, v6only: bool | None = None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def bind(host: str | None, port: int) -> list[socket.socket]:
    """Bound (not yet listening) sockets for one listener. With port 0 every socket gets the port
    the first one was given."""
    if host is None:
        try:  # one dual-stack socket
            return [_socket(socket.AF_INET6, ("::", port), v6only=False)]
        except OSError:
            pass
        socks = [_socket(socket.AF_INET, ("0.0.0.0", port))]
        try:
            socks.append(_socket(socket.AF_INET6, ("::", socks[0].getsockname()[1]), v6only=True))
        except OSError:
            pass  # no IPv6 here
        return socks
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, _type, _proto, _name, addr in infos:
            if addr[:2] in seen:
                continue
            seen.add(addr[:2])
            if socks:
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            socks.append(_socket(family, addr, v6only=True if len(infos) > 1 else None))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def describe(socks: list[socket.socket]) -> str:
    """``[::]:5672 (IPv4 and IPv6)``, ``127.0.0.1:5672``, ``[::1]:5672 and 127.0.0.1:5672``."""
    parts = []
    for s in socks:
        host, port = s.getsockname()[:2]
        text = format_address(host, port)
        if s.family == socket.AF_INET6 and host == "::" and not s.getsockopt(socket.IPPROTO_IPV6,
                                                                             socket.IPV6_V6ONLY):
            text += " (IPv4 and IPv6)"
        parts.append(text)
    return " and ".join(parts)
