"""The connection class of AMQP: the protocol header, connection.start/start-ok (authentication),
tune/tune-ok, open/open-ok, and close and update-secret on an open connection.

``Handshake`` is a part of ``Connection`` (its base class); it uses the connection's state and
its ``send0`` and ``write``, and ``_release_all`` on close.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from ..amqp import spec
from ..amqp.errors import ConnectionFault
from ..auth import external
from ..auth.permissions import Access
from ..auth.sasl import KNOWN, offered, parse_response
from . import conn_log

if TYPE_CHECKING:
    from ..broker.broker import Broker
    from ..broker.vhost import VirtualHost

# handshake states
AWAIT_HEADER, AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPENED, CLOSING_CONN, CLOSED = range(7)
# RabbitMQ's names for them, as "unexpected method in connection state ~w" prints them
STATE_NAMES = {AWAIT_START_OK: "starting", AWAIT_TUNE_OK: "tuning", AWAIT_OPEN: "opening",
               OPENED: "running", CLOSING_CONN: "closing"}
# the protocol headers RabbitMQ answers as AMQP 0-9-1 (0-9-1 itself, and 0-9); it also speaks 0-8
# (AMQP 1 1 8 0 and AMQP 1 1 9 1), which hare refuses like any other version
HEADERS = (spec.PROTOCOL_HEADER, b"AMQP\x01\x01\x00\x09")

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


def server_properties(product: str, version: str) -> dict[str, Any]:
    """connection.start's server-properties. Clients branch on product and version (kombu, hence
    Celery, uses RabbitMQ's prefetch semantics only for product "RabbitMQ" 3.3 to 4.0), so hare
    introduces itself as the RabbitMQ version whose behaviour it implements (BrokerConfig.product
    and .product_version) and names itself in ``information``."""
    return {
        "capabilities": dict(CAPABILITIES),
        "cluster_name": "hare@localhost",
        "copyright": "Copyright (c) the hare developers",
        "information": f"hare {__version__}, a RabbitMQ-compatible broker. Licensed under the Apache "
                       "License 2.0",
        "platform": f"Python {sys.version.split()[0]}",
        "product": product,
        "version": version,
    }


def check_connection_limits(broker: Broker, vhost: VirtualHost, user: Any) -> None:
    """The vhost's and the user's max-connections, as RabbitMQ refuses them at connection.open."""
    limit = vhost.limits.get("max-connections")
    if limit is not None and sum(1 for c in broker.connections if c.vhost is vhost) >= limit:
        raise ConnectionFault(530, f"access to vhost '{vhost.name}' refused for user '{user.name}': "
                              f"connection limit ({limit}) is reached")
    limit = user.limits.get("max-connections")
    if limit is not None and sum(1 for c in broker.connections if c.username == user.name) >= limit:
        raise ConnectionFault(530, f"connection refused for user '{user.name}': user connection limit "
                              f"({limit}) is reached")


def _is_loopback(peer: Any) -> bool:
    if not peer:
        return True  # in-process or unix socket
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    return host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127.")


class Handshake:
    # the connection's state used here (attributes of Connection)
    broker: Broker
    peer: Any
    state: int
    buf: bytes
    closed: bool
    frame_max: int
    channel_max: int
    heartbeat: int
    vhost: VirtualHost
    username: str
    access: Access
    tls: bool
    peer_cert: dict[str, Any] | None
    client_properties: dict[str, Any]
    capabilities: dict[str, Any]
    client_closed: list[int]

    if TYPE_CHECKING:  # the connection's methods used here
        def send0(self, method: spec.Method) -> None: ...
        def write(self, data: bytes) -> None: ...
        def _release_all(self) -> None: ...
        def _forget_client_closed(self) -> None: ...

    def _protocol_header(self, data: bytes) -> bytes:
        """The first input: check the protocol header, answer with connection.start; return the
        input after the header (empty while the header is incomplete or after a wrong one)."""
        if len(data) < 8:  # RabbitMQ waits for all 8 octets (or its handshake timeout)
            self.buf = data
            return b""
        if data[:8] not in HEADERS:
            self._bad_header()
            return b""
        data = data[8:]
        self.state = AWAIT_START_OK
        self.send0(spec.ConnectionStart(
            version_major=0, version_minor=9,
            server_properties=server_properties(self.broker.config.product,
                                              self.broker.config.product_version),
            mechanisms=" ".join(offered(self.broker.config.auth_mechanisms, self.tls)).encode(),
            locales=b"en_US"))
        return data

    def _bad_header(self) -> None:
        """A wrong protocol header: answer with ours and close, as the spec says."""
        conn_log.bad_header(self)  # type: ignore[arg-type]
        self.write(spec.PROTOCOL_HEADER)
        self.closed = True

    # -- connection class -------------------------------------------------------------------------

    def _connection_method(self, m: spec.Method) -> None:
        state = self.state
        t = type(m)
        if state == CLOSING_CONN:
            if t is spec.ConnectionCloseOk or t is spec.ConnectionClose:
                if t is spec.ConnectionClose:
                    self.send0(spec.ConnectionCloseOk())
                self.closed = True
            return
        if state == OPENED:
            if t is spec.ConnectionClose:
                conn_log.client_closed(self)
                if self.client_closed:  # their close-ok first, whatever the input's segmentation
                    self._forget_client_closed()
                self.send0(spec.ConnectionCloseOk())
                self._release_all()
                self.closed = True
                self.state = CLOSED  # as RabbitMQ, the shell leaves closing the socket to the client
            elif t is spec.ConnectionUpdateSecret:  # RabbitMQ's internal users take any secret
                self.send0(spec.ConnectionUpdateSecretOk())
            else:
                raise ConnectionFault(504, "unexpected method in connection state running")
        elif state == AWAIT_START_OK and t is spec.ConnectionStartOk:
            self._start_ok(m)  # type: ignore[arg-type]
        elif state == AWAIT_TUNE_OK and t is spec.ConnectionTuneOk:
            self._tune_ok(m)  # type: ignore[arg-type]
        elif state == AWAIT_OPEN and t is spec.ConnectionOpen:
            self._open(m)  # type: ignore[arg-type]
        else:  # connection.close too: RabbitMQ takes it once the connection is open
            raise ConnectionFault(504, f"unexpected method in connection state {STATE_NAMES[state]}")

    def _start_ok(self, m: spec.ConnectionStartOk) -> None:
        # (errors before tune-ok close the socket silently, see _hard_error)
        cfg = self.broker.config
        if m.mechanism not in KNOWN:
            raise ConnectionFault(503, f"unknown authentication mechanism '{m.mechanism}'")
        if m.mechanism not in offered(cfg.auth_mechanisms, self.tls):
            raise ConnectionFault(503, f"invalid authentication mechanism '{m.mechanism}'")
        self.client_properties = m.client_properties or {}
        caps = self.client_properties.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        if m.mechanism == "EXTERNAL":  # the certificate is the credential; the response is ignored
            name, reason = external.user_name(self.peer_cert, cfg.ssl_cert_login_from)
            if name is None:
                self._auth_failed(m.mechanism, reason)
            user = self.broker.users.users.get(name)
            if user is None:
                self._auth_failed(m.mechanism, f"user '{name}' - invalid credentials")
        else:
            creds = parse_response(m.mechanism, m.response)
            if creds is None:
                raise ConnectionFault(502, f"{m.mechanism} response {m.response[:64]!r} invalid")
            user = self.broker.users.authenticate(*creds)
            if user is None:
                self._auth_failed(m.mechanism, f"user '{creds[0]}' - invalid credentials")
        if user.loopback_only and not _is_loopback(self.peer):
            self._auth_failed(m.mechanism, f"user '{user.name}' can only connect via localhost")
        self.username = user.name
        self.state = AWAIT_TUNE_OK
        self.send0(spec.ConnectionTune(channel_max=cfg.channel_max, frame_max=cfg.frame_max,
                                       heartbeat=cfg.heartbeat))

    def _auth_failed(self, mechanism: str, reason: str) -> NoReturn:
        """Refused credentials: a client that says it can take it (capability
        authentication_failure_close) gets connection.close 403 with RabbitMQ's safe text (the
        reason is only logged); then the socket closes, as for every error before tune-ok."""
        if self.capabilities.get("authentication_failure_close") is True:
            self.send0(spec.ConnectionClose(
                reply_code=403, reply_text=f"ACCESS_REFUSED - Login was refused using authentication "
                f"mechanism {mechanism}. For details see the broker logfile."))
        raise ConnectionFault(403, f"{mechanism} login refused: {reason}")

    def _tune_ok(self, m: spec.ConnectionTuneOk) -> None:
        cfg = self.broker.config
        for field, value, least, most in (("frame_max", m.frame_max, spec.FRAME_MIN_SIZE, cfg.frame_max),
                                          ("channel_max", m.channel_max, 1, cfg.channel_max)):
            if value and value < least:
                raise ConnectionFault(530, f"negotiated {field} = {value} is lower than the minimum "
                                      f"allowed value ({least})")
            if most and (value == 0 or value > most):
                raise ConnectionFault(530, f"negotiated {field} = {value} is higher than the maximum "
                                      f"allowed value ({most})")
        self.frame_max = m.frame_max or cfg.frame_max
        self.channel_max = m.channel_max
        self.heartbeat = m.heartbeat
        self.state = AWAIT_OPEN

    def _open(self, m: spec.ConnectionOpen) -> None:
        limit = self.broker.config.connection_max  # open connections, this one included
        if limit is not None and len(self.broker.connections) >= limit:
            raise ConnectionFault(530, f"connection refused: node connection limit ({limit}) is "
                                  "reached")
        vhost = self.broker.vhosts.get(m.virtual_host)
        user = self.broker.users.users.get(self.username)
        if vhost is None:
            raise ConnectionFault(530, f"vhost {m.virtual_host} not found")
        if user is None or m.virtual_host not in user.permissions:
            raise ConnectionFault(530, f"access to vhost '{m.virtual_host}' refused for user "
                                  f"'{self.username}'")
        check_connection_limits(self.broker, vhost, user)
        self.vhost = vhost
        client_id = self.client_properties.get("client_id")
        self.access = Access(user, vhost.name, client_id if isinstance(client_id, str) else None)
        self.state = OPENED
        self.broker.connections.add(self)
        self.send0(spec.ConnectionOpenOk())
        conn_log.opened(self)

