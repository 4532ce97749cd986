"""AMQP errors: a soft error closes one channel, a hard error closes the connection.

The broker model raises these with RabbitMQ's reply codes and texts; the session layer turns them
into channel.close or connection.close frames. ``text`` is the part after RabbitMQ's
``CODE_NAME - `` prefix; ``reply_text`` is the whole string sent on the wire.
"""

from __future__ import annotations

REPLY_NAMES = {
    311: "CONTENT_TOO_LARGE",
    312: "NO_ROUTE",
    313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED",
    402: "INVALID_PATH",
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED",
    541: "INTERNAL_ERROR",
}

HARD_CODES = frozenset({320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541})


class AMQPError(Exception):
    """An error the peer is told about with a close method."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def hard(self) -> bool:
        return self.code in HARD_CODES

    @property
    def reply_text(self) -> str:
        name = REPLY_NAMES.get(self.code, "ERROR")
        # with no explanation (RabbitMQ's 541 for a crash) the text is the name alone
        full = f"{name} - {self.text}" if self.text else name
        # reply-text is a shortstr: past 255 bytes RabbitMQ keeps the first 252 and appends "..."
        # (cutting bytes, even inside a UTF-8 sequence; surrogateescape keeps those bytes as is).
        encoded = full.encode("utf-8", "surrogateescape")
        if len(encoded) > 255:
            full = encoded[:252].decode("utf-8", "surrogateescape") + "..."
        return full

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.text!r})"


class ChannelError(AMQPError):
    """A soft error (403, 404, 405, 406, ...): only the channel closes."""


class ConnectionFault(AMQPError):
    """A hard error (5xx, 530): the connection closes."""


class SyntaxFault(ConnectionFault):
    """Bytes that do not decode as the spec says: 502 SYNTAX_ERROR."""

    def __init__(self, text: str) -> None:
        super().__init__(502, text)


class SilentClose(ConnectionFault):
    """Drop the socket without connection.close: a method of the handshake that does not decode
    (RabbitMQ ends a handshake it cannot follow without a word)."""


class Utf8Fault(SyntaxFault):
    """A short string of a method that is not UTF-8 (RabbitMQ checks those without content)."""

    def __init__(self) -> None:
        super().__init__("Malformed UTF-8 in shortstr")


def access_refused(text: str) -> ChannelError:
    return ChannelError(403, text)


def not_found(text: str) -> ChannelError:
    return ChannelError(404, text)


def resource_locked(text: str) -> ChannelError:
    return ChannelError(405, text)


def precondition_failed(text: str) -> ChannelError:
    return ChannelError(406, text)
