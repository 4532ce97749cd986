"""TLS for AMQPS listeners: RabbitMQ's ``ssl_options`` as an ``ssl.SSLContext``.

The option names and values are RabbitMQ's (``verify_peer``, ``fail_if_no_peer_cert``,
``tlsv1.2``, OpenSSL cipher names); the checks are made when the context is built, so a bad file
or value stops the broker at start with a message naming the option.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("hare.server")

VERSIONS = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.3 suites: Python's ssl module cannot restrict them (OpenSSL enables all of them)
TLS13_SUITES = {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"}
HANDSHAKE_TIMEOUT = 5.0  # RabbitMQ's ssl_handshake_timeout: 5000 ms


@dataclass
class TLSOptions:
    """RabbitMQ's ``ssl_options.*`` (with Erlang's defaults: no peer verification)."""

    certfile: str | None = None
    keyfile: str | None = None  # default: the key is in certfile
    cacertfile: str | None = None  # the CAs client certificates are verified against
    password: str | None = None  # of an encrypted keyfile
    verify: str = "verify_none"  # verify_peer: ask for a client certificate and verify it
    fail_if_no_peer_cert: bool = False  # with verify_peer: refuse clients without a certificate
    versions: tuple[str, ...] = ()  # tlsv1.2, tlsv1.3; empty: both
    ciphers: tuple[str, ...] = ()  # OpenSSL names; empty: OpenSSL's defaults
    honor_cipher_order: bool = False  # the server's cipher order wins over the client's
    handshake_timeout: float = HANDSHAKE_TIMEOUT  # seconds

    def check(self) -> None:
        """ValueError naming the ``ssl_options`` key at fault (values only, no file is read)."""
        if self.verify not in ("verify_peer", "verify_none"):
            raise ValueError(f"ssl_options.verify must be verify_peer or verify_none, not {self.verify!r}")
        if self.fail_if_no_peer_cert and self.verify != "verify_peer":
            raise ValueError("ssl_options.fail_if_no_peer_cert = true needs ssl_options.verify = verify_peer")
        if self.verify == "verify_peer" and not self.cacertfile:
            raise ValueError("ssl_options.verify = verify_peer needs ssl_options.cacertfile (the CA "
                             "certificates client certificates are verified against)")
        for v in self.versions:
            if v not in VERSIONS:
                raise ValueError(f"ssl_options.versions: {v!r} is not supported, expected tlsv1.2 or tlsv1.3")
        if self.handshake_timeout <= 0:
            raise ValueError("ssl_handshake_timeout must be a positive number of milliseconds")

    def context(self) -> ssl.SSLContext:
        """The server context; ValueError naming the key when a file or value is refused."""
        self.check()
        if not self.certfile:
            raise ValueError("a TLS listener needs ssl_options.certfile (and ssl_options.keyfile)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.certfile, self.keyfile or None, self.password)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"ssl_options.certfile/keyfile ({self.certfile}, {self.keyfile}): cannot "
                             f"load the certificate and its key: {exc}") from None
        if self.cacertfile:
            try:
                ctx.load_verify_locations(cafile=self.cacertfile)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"ssl_options.cacertfile ({self.cacertfile}): cannot load the CA "
                                 f"certificates: {exc}") from None
        if self.verify == "verify_peer":
            ctx.verify_mode = ssl.CERT_REQUIRED if self.fail_if_no_peer_cert else ssl.CERT_OPTIONAL
        else:
            ctx.verify_mode = ssl.CERT_NONE
        versions = [VERSIONS[v] for v in self.versions] or list(VERSIONS.values())
        ctx.minimum_version, ctx.maximum_version = min(versions), max(versions)
        legacy = [c for c in self.ciphers if c not in TLS13_SUITES]
        for name in legacy:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(name)
            except ssl.SSLError:
                raise ValueError(f"ssl_options.ciphers: unknown cipher suite {name!r} (expected an "
                                 "OpenSSL name such as ECDHE-RSA-AES256-GCM-SHA384)") from None
        if legacy:
            ctx.set_ciphers(":".join(legacy))
        if self.honor_cipher_order:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        return ctx


class _SSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS layer, except that a failed handshake sends the alert OpenSSL wrote (asyncio
    drops the socket with the alert unsent, so the client sees an EOF instead of "unknown ca" or
    "certificate required", which RabbitMQ's clients get) and is logged, as RabbitMQ logs it."""

    _handshake_failed = False

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        self._handshake_failed = handshake_exc is not None
        super()._on_handshake_complete(handshake_exc)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        transport = self._transport
        if not self._handshake_failed or transport is None:
            super()._fatal_error(exc, message)
            return
        self._handshake_failed = False
        log.warning("TLS handshake from %s failed: %s", transport.get_extra_info("peername"),
                    getattr(exc, "reason", None) or exc)
        outgoing = getattr(self, "_outgoing", None)  # asyncio's own (3.11+); if it ever goes, drop as before
        if outgoing is None:
            super()._fatal_error(exc, message)
            return
        alert = outgoing.read()
        if alert:
            transport.write(alert)
        transport.close()  # after the alert is written


def server_protocol(loop: asyncio.AbstractEventLoop, app: asyncio.Protocol, ctx: ssl.SSLContext,
                    handshake_timeout: float) -> Any:
    """The protocol of one accepted TLS socket: the handshake, then ``app`` over TLS."""
    return _SSLProtocol(loop, app, ctx, None, server_side=True, ssl_handshake_timeout=handshake_timeout)
