"""SASL mechanisms: PLAIN and AMQPLAIN (RabbitMQ's default ``auth_mechanisms``), and EXTERNAL
(the TLS client certificate, ``auth/external.py``) where ``auth_mechanisms`` lists it."""

from __future__ import annotations

from ..amqp.errors import SyntaxFault
from ..amqp.table import decode_table

KNOWN = ("PLAIN", "AMQPLAIN", "EXTERNAL")
# the order connection.start lists them in, whatever auth_mechanisms' order: RabbitMQ 3.10's (its
# registry's): "AMQPLAIN PLAIN", "AMQPLAIN PLAIN EXTERNAL"
ORDER = ("AMQPLAIN", "PLAIN", "EXTERNAL")


def offered(configured: tuple[str, ...], tls: bool) -> tuple[str, ...]:
    """The mechanisms connection.start offers: the configured ones, EXTERNAL only on a TLS
    connection (with or without a client certificate: as RabbitMQ, a client without one is
    refused at start-ok with a clear reason rather than left without a mechanism)."""
    return tuple(m for m in ORDER if m in configured and (m != "EXTERNAL" or tls))


def parse_response(mechanism: str, response: bytes) -> tuple[str, str] | None:
    """(username, password) from a start-ok response, or None when it cannot be parsed."""
    if mechanism == "PLAIN":
        parts = response.split(b"\x00")
        if len(parts) != 3 or parts[0]:  # RabbitMQ takes no authorization identity
            return None
        return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    if mechanism == "AMQPLAIN":
        # a field table's contents, without the table's own length prefix
        try:
            table, _ = decode_table(len(response).to_bytes(4, "big") + response, 0)
        except SyntaxFault:
            return None
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        if isinstance(login, bytes):
            login = login.decode("utf-8", "replace")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        if not isinstance(login, str) or not isinstance(password, str):
            return None
        return login, password
    return None
