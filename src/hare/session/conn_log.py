"""The log lines of a connection's life, with the content of RabbitMQ 3.10's (rabbit_reader): one
when it is accepted, one when it is open (user authenticated, vhost granted), one when it closes
(or a warning when the client vanished), and one per channel or connection error with its code
and text. Never one per message. Each record carries the connection's fields as ``extra`` (the
JSON log formatter prints them).

RabbitMQ logs channel and connection errors at level error; hare logs them at warning: they are
the client's errors, and hare keeps level error for its own faults (an internal error)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..amqp import spec
from ..amqp.errors import REPLY_NAMES, AMQPError
from . import handshake  # (handshake imports this module: names are looked up at call time)

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("hare.connection")



def _state(conn: Connection) -> str:
    """The handshake state as RabbitMQ names it."""
    if conn.state == handshake.AWAIT_HEADER:
        return "starting"
    if conn.state == handshake.CLOSED:
        return "closed"
    return handshake.STATE_NAMES.get(conn.state, "?")


def address(addr: Any) -> str:
    """``127.0.0.1:5672``, ``[::1]:5672``; ``?`` when unknown (in-process, unix socket)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr) if addr else "?"


def name(peer: Any, local: Any) -> str:
    """RabbitMQ's connection name: ``PEER -> LOCAL``."""
    return f"{address(peer)} -> {address(local)}"


def _client_name(conn: Connection) -> str | None:
    """The name the client gave the connection (client property ``connection_name``)."""
    client = conn.client_properties.get("connection_name") if conn.client_properties else None
    if isinstance(client, bytes):
        return client.decode("utf-8", "replace")
    return str(client) if client else None


def _client(conn: Connection) -> str:
    """The connection name with the client's one, as RabbitMQ: ``PEER -> LOCAL - NAME``."""
    client = _client_name(conn)
    return f"{conn.name} - {client}" if client else conn.name


def _opened(conn: Connection) -> bool:
    return conn.vhost is not None


def _who(conn: Connection) -> str:
    """``PEER -> LOCAL - client, vhost: '/', user: 'guest'`` (vhost and user once open)."""
    if _opened(conn):
        return f"{_client(conn)}, vhost: '{conn.vhost.name}', user: '{conn.username}'"
    return _client(conn)


def _fields(conn: Connection, **more: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"connection": conn.name}
    client = _client_name(conn)
    if client:
        fields["client_name"] = client
    if _opened(conn):
        fields["vhost"] = conn.vhost.name
        fields["user"] = conn.username
    fields.update(more)
    return fields


def _operation(err: AMQPError) -> str:
    cls = spec.METHODS.get((err.class_id << 16) | err.method_id) if err.class_id else None
    return cls.NAME if cls is not None else "none"


def _exception(err: AMQPError) -> str:
    return REPLY_NAMES.get(err.code, "error").lower()


def accepted(conn: Connection) -> None:
    log.info("accepting AMQP connection (%s)", conn.name, extra=_fields(conn))


def opened(conn: Connection) -> None:
    log.info("connection (%s): user '%s' authenticated and granted access to vhost '%s'",
             _client(conn), conn.username, conn.vhost.name, extra=_fields(conn))


def client_closed(conn: Connection) -> None:
    """The client's connection.close."""
    log.info("closing AMQP connection (%s)", _who(conn), extra=_fields(conn))


def lost(conn: Connection, reason: str | None) -> None:
    """The socket went away without connection.close (``reason``: the broker dropped it, e.g.
    missed heartbeats)."""
    state = _state(conn)
    if reason is None:
        if state == "running":
            reason = "client unexpectedly closed TCP connection"
        else:
            reason = f"client closed the TCP connection during the handshake (state: {state})"
    if state == "running" or conn.lost_reason is not None:
        log.warning("closing AMQP connection (%s): %s", _who(conn), reason, extra=_fields(conn))
    else:  # port probes and health checks: not worth a warning
        log.info("closing AMQP connection (%s): %s", _who(conn), reason, extra=_fields(conn))


def channel_error(conn: Connection, channel: int, err: AMQPError) -> None:
    log.warning("Channel error on connection (%s), channel %d: operation %s caused a channel exception "
                "%s: %s", _who(conn), channel, _operation(err), _exception(err), err.text,
                extra=_fields(conn, channel=channel, code=err.code))


def connection_error(conn: Connection, err: AMQPError) -> None:
    """A hard error: connection.close is sent (or, before tune-ok, the socket is closed)."""
    state = _state(conn)
    fields = _fields(conn, code=err.code)
    if err.code == 320:  # the broker closes it (shutdown): not the client's error
        log.info("closing AMQP connection (%s): %s", _who(conn), err.text, extra=fields)
    elif state in ("starting", "tuning"):
        log.warning("Error on AMQP connection (%s, state: %s): %s", _who(conn), state, err.text,
                    extra=fields)
    else:
        log.warning("Error on AMQP connection (%s, state: %s): operation %s caused a "
                    "connection exception %s: %s", _who(conn), state, _operation(err),
                    _exception(err), err.text, extra=fields)


def bad_header(conn: Connection) -> None:
    log.info("closing AMQP connection (%s): unsupported protocol header", conn.name,
             extra=_fields(conn))
