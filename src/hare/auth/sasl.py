"""SASL mechanisms RabbitMQ offers by default: PLAIN and AMQPLAIN."""

from __future__ import annotations

from ..amqp.errors import SyntaxFault
from ..amqp.table import decode_table

MECHANISMS = b"PLAIN AMQPLAIN"


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
