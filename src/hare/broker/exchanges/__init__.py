"""Exchange types by name; one module per type."""

from __future__ import annotations

from .base import Exchange
from .delayed import DelayedMessageExchange
from .direct import DirectExchange
from .fanout import FanoutExchange
from .headers import HeadersExchange
from .topic import TopicExchange

EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    "direct": DirectExchange,
    "fanout": FanoutExchange,
    "topic": TopicExchange,
    "headers": HeadersExchange,
    "x-delayed-message": DelayedMessageExchange,  # the delayed message exchange plugin's type
}

__all__ = ["EXCHANGE_TYPES", "Exchange", "DirectExchange", "FanoutExchange", "TopicExchange",
           "HeadersExchange", "DelayedMessageExchange"]
