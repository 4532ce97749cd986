"""Queue arguments by queue type (x-queue-type): hare answers what RabbitMQ 3.10 refuses with the
same 406 and text, though it runs every type as a classic queue. Runs against RabbitMQ too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pika.adapters.blocking_connection import BlockingConnection
from pika.exceptions import ChannelClosedByBroker
from support import deleted_after, hare_only, unique_name

Declare = Callable[..., str]


@pytest.fixture
def declare(admin: BlockingConnection) -> Iterator[Declare]:
    """Declare a queue (durable unless told); return "ok" or the channel error's code and text,
    without the queue's name."""
    with deleted_after(admin, "queue") as names:

        def make(arguments: dict[str, Any], name: str = "", durable: bool = True, **flags: bool) -> str:
            name = name or unique_name("args")
            names.append(name)
            ch = admin.channel()
            try:
                ch.queue_declare(name, durable=durable, arguments=arguments, **flags)
            except ChannelClosedByBroker as err:
                return f"{err.reply_code} {err.reply_text}".replace(f" for queue '{name}' in vhost '/'", "")
            ch.close()
            return "ok"

        yield make


TYPE_ERROR = "406 PRECONDITION_FAILED - invalid arg '{}' of queue type rabbit_{}_queue"

VALID = {"x-expires": 100_000, "x-message-ttl": 1000, "x-dead-letter-exchange": "dlx",
         "x-max-length": 10, "x-max-length-bytes": 1000, "x-max-priority": 5,
         "x-overflow": "reject-publish", "x-queue-mode": "lazy", "x-queue-version": 2,
         "x-single-active-consumer": True, "x-queue-master-locator": "random",
         "x-dead-letter-strategy": "at-least-once", "x-max-in-memory-length": 5,
         "x-max-in-memory-bytes": 500, "x-quorum-initial-group-size": 1,
         "x-queue-leader-locator": "balanced", "x-max-age": "1D",
         "x-stream-max-segment-size-bytes": 100_000, "x-initial-cluster-size": 1, "x-foo": 1}
TAKES = {
    "classic": {"x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-max-length",
                "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode", "x-queue-version",
                "x-single-active-consumer", "x-queue-master-locator", "x-foo"},
    "quorum": {"x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-max-length",
               "x-max-length-bytes", "x-overflow", "x-single-active-consumer", "x-dead-letter-strategy",
               "x-max-in-memory-length", "x-max-in-memory-bytes", "x-quorum-initial-group-size",
               "x-queue-leader-locator", "x-foo"},
    "stream": {"x-max-length-bytes", "x-queue-leader-locator", "x-max-age",
               "x-stream-max-segment-size-bytes", "x-initial-cluster-size", "x-foo"},
}


@pytest.mark.parametrize("qtype", ["classic", "quorum", "stream"])
def test_each_queue_type_takes_its_own_arguments(declare: Declare, qtype: str) -> None:
    got = {key: declare({"x-queue-type": qtype, key: value}) for key, value in VALID.items()}
    assert got == {key: "ok" if key in TAKES[qtype] else TYPE_ERROR.format(key, qtype) for key in VALID}


@pytest.mark.parametrize(("arguments", "error"), [
    ({"x-message-ttl": 315_360_000_001}, "x-message-ttl': {value_too_large,315360000001}"),
    ({"x-expires": 315_360_000_001}, "x-expires': {value_too_large,315360000001}"),
    ({"x-queue-version": 3}, "x-queue-version': \"unsupported queue version '3'\""),
    ({"x-queue-version": "2"}, "x-queue-version': \"expected integer, got longstr\""),
    ({"x-queue-type": "bogus"}, "x-queue-type': \"unsupported queue type 'bogus'\""),
    ({"x-queue-type": "quorum", "x-dead-letter-strategy": "bogus"},
     "x-dead-letter-strategy': invalid_dlx_strategy"),
    ({"x-queue-type": "quorum", "x-queue-leader-locator": "x"},
     "x-queue-leader-locator': invalid_queue_locator_arg"),
    ({"x-queue-type": "quorum", "x-quorum-initial-group-size": 0},
     "x-quorum-initial-group-size': {value_zero,0}"),
    ({"x-queue-type": "stream", "x-max-age": "0D"}, "x-max-age': invalid_max_age"),
    ({"x-queue-type": "stream", "x-max-age": 5}, "x-max-age': {unacceptable_type,signedint}"),
    ({"x-queue-type": "stream", "x-initial-cluster-size": -1},
     "x-initial-cluster-size': {value_negative,-1}"),
    # the common arguments' values first, then the type's list, then the type's own values
    ({"x-max-age": "1D", "x-message-ttl": -1}, "x-message-ttl': {value_negative,-1}"),
    ({"x-queue-type": "quorum", "x-max-priority": "x"}, "x-max-priority' of queue type rabbit_quorum_queue"),
])
def test_invalid_values(declare: Declare, arguments: dict[str, Any], error: str) -> None:
    assert declare(arguments) == "406 PRECONDITION_FAILED - invalid arg '" + error


@pytest.mark.parametrize(("flags", "prop"), [
    ({"durable": False}, "non-durable"),
    ({"exclusive": True}, "exclusive-owner"),
    ({"auto_delete": True, "exclusive": True}, "auto-delete"),
])
@pytest.mark.parametrize("qtype", ["quorum", "stream"])
def test_quorum_queues_and_streams_are_durable_shared_and_kept(declare: Declare, qtype: str,
                                                               flags: dict[str, bool], prop: str) -> None:
    assert declare({"x-queue-type": qtype}, **flags) == f"406 PRECONDITION_FAILED - invalid property '{prop}'"


def test_redeclaration_compares_the_arguments_of_the_queues_type(declare: Declare) -> None:
    name = unique_name("args")
    assert declare({"x-queue-version": 1}, name) == "ok"
    assert declare({"x-queue-version": 2}, name) == ("406 PRECONDITION_FAILED - inequivalent arg "
                                                     "'x-queue-version': received '2' but current is '1'")
    assert declare({"x-queue-version": 1, "x-max-age": "1D"}, name) == "ok"  # not a classic argument
    quorum = unique_name("args")
    assert declare({"x-queue-type": "quorum"}, quorum) == "ok"
    assert declare({"x-queue-type": "quorum", "x-max-priority": 3}, quorum) == "ok"
    assert declare({"x-queue-type": "quorum", "x-delivery-limit": 3}, quorum) == (
        "406 PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit': received the value '3' of type "
        "'signedint' but current is none")


@hare_only  # RabbitMQ's check of these values crashes: 541 on the connection
@pytest.mark.parametrize(("arguments", "error"), [
    ({"x-queue-master-locator": "bogus"}, "x-queue-master-locator': {unknown_value,<<\"bogus\">>}"),
    ({"x-queue-type": "stream", "x-max-age": "bogus"}, "x-max-age': invalid_max_age"),
])
def test_values_rabbitmq_fails_on_are_406(declare: Declare, arguments: dict[str, Any], error: str) -> None:
    assert declare(arguments) == "406 PRECONDITION_FAILED - invalid arg '" + error


@hare_only  # hare's extension: RabbitMQ 3.10 takes x-delivery-limit on quorum queues only
def test_classic_queues_take_a_delivery_limit(declare: Declare) -> None:
    assert declare({"x-delivery-limit": 3}) == "ok"
    assert declare({"x-queue-type": "stream", "x-delivery-limit": 3}) == TYPE_ERROR.format(
        "x-delivery-limit", "stream")
