"""queue.declare / bind / unbind / purge / delete and the empty-name shortcut, as RabbitMQ 3.10."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker
from support import closed_with, deleted_after, drain


@pytest.fixture
def cleanup(connection: BlockingConnection) -> Iterator[list[str]]:
    """Queue names to delete after the test."""
    with deleted_after(connection, "queue") as names:
        yield names


def exists(conn: BlockingConnection, queue: str) -> bool:
    ch = conn.channel()
    try:
        ch.queue_declare(queue, passive=True)
    except ChannelClosedByBroker as err:
        assert err.reply_code == 404, err
        return False
    ch.close()
    return True


def gone_soon(conn: BlockingConnection, queue: str, timeout: float = 2.0) -> bool:
    """A queue deleting itself (auto-delete) may take a moment on RabbitMQ."""
    deadline = time.monotonic() + timeout
    while exists(conn, queue):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- declare ---------------------------------------------------------------------------------------


def test_server_named_queues_have_amq_gen_prefix_and_differ(channel: BlockingChannel) -> None:
    names = {channel.queue_declare("", exclusive=True).method.queue for _ in range(5)}
    assert len(names) == 5
    for name in names:
        assert name.startswith("amq.gen-")
        assert len(name) == len("amq.gen-") + 22


def test_declare_ok_reports_message_and_consumer_counts(connection: BlockingConnection, qname: str,
                                                        cleanup: list[str]) -> None:
    cleanup.append(qname)
    ch = connection.channel()
    ok = ch.queue_declare(qname)
    assert (ok.method.queue, ok.method.message_count, ok.method.consumer_count) == (qname, 0, 0)
    for i in range(3):
        ch.basic_publish("", qname, b"%d" % i)
    ok = ch.queue_declare(qname)
    assert (ok.method.message_count, ok.method.consumer_count) == (3, 0)
    method, _, _ = ch.basic_get(qname, auto_ack=False)  # unacked messages are not counted
    assert method is not None
    ok = ch.queue_declare(qname, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (2, 0)
    ch.basic_nack(method.delivery_tag, requeue=True)
    ok = ch.queue_declare(qname, passive=True)
    assert ok.method.message_count == 3
    ch.queue_purge(qname)
    consumer_ch = connection.channel()
    consumer_ch.basic_consume(qname, lambda *a: None)
    consumer_ch.basic_consume(qname, lambda *a: None)
    ok = ch.queue_declare(qname, passive=True)
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 2)
    consumer_ch.close()
    ok = ch.queue_declare(qname, passive=True)
    assert ok.method.consumer_count == 0


def test_passive_declare_of_missing_queue_is_404(channel: BlockingChannel, qname: str) -> None:
    err = closed_with(channel, channel.queue_declare, qname, passive=True)
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{qname}' in vhost '/'"


def test_passive_declare_with_empty_name_is_404(channel: BlockingChannel) -> None:
    err = closed_with(channel, channel.queue_declare, "", passive=True)
    assert err.reply_code == 404
    assert err.reply_text == "NOT_FOUND - no queue '' in vhost '/'"


def test_declare_amq_prefixed_queue_is_403(channel: BlockingChannel) -> None:
    err = closed_with(channel, channel.queue_declare, "amq.my-queue")
    assert err.reply_code == 403
    assert err.reply_text == "ACCESS_REFUSED - queue name 'amq.my-queue' contains reserved prefix 'amq.*'"


def test_redeclaring_a_server_named_queue_by_name_is_403_but_passive_works(
        connection: BlockingConnection) -> None:
    ch = connection.channel()
    name = ch.queue_declare("", exclusive=True).method.queue
    assert ch.queue_declare(name, passive=True).method.queue == name
    err = closed_with(ch, ch.queue_declare, name, exclusive=True)
    assert err.reply_code == 403


@pytest.mark.parametrize("flag, first, second", [
    ("durable", {"durable": True}, {"durable": False}),
    ("durable", {"durable": False}, {"durable": True}),
    ("auto_delete", {"auto_delete": False}, {"auto_delete": True}),
])
def test_redeclare_with_different_flag_is_406(connection: BlockingConnection, qname: str, flag: str,
                                              first: dict, second: dict, cleanup: list[str]) -> None:
    cleanup.append(qname)
    ch = connection.channel()
    ch.queue_declare(qname, **first)
    err = closed_with(ch, ch.queue_declare, qname, **second)
    assert err.reply_code == 406
    want, have = (("true" if v else "false") for v in (second[flag], first[flag]))
    assert err.reply_text == (f"PRECONDITION_FAILED - inequivalent arg '{flag}' for queue '{qname}' in "
                              f"vhost '/': received '{want}' but current is '{have}'")


def test_redeclare_with_different_message_ttl_is_406(connection: BlockingConnection, qname: str,
                                                     cleanup: list[str]) -> None:
    cleanup.append(qname)
    ch = connection.channel()
    ch.queue_declare(qname, arguments={"x-message-ttl": 1000})
    ch.queue_declare(qname, arguments={"x-message-ttl": 1000})  # the same is fine
    err = closed_with(ch, ch.queue_declare, qname, arguments={"x-message-ttl": 2000})
    assert err.reply_code == 406
    assert err.reply_text == (  # RabbitMQ 3.10.8's text when both values are present
        f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{qname}' in vhost '/': "
        "received '2000' but current is '1000'")
    ch = connection.channel()
    err = closed_with(ch, ch.queue_declare, qname)  # omitting it differs too
    assert err.reply_code == 406
    assert "inequivalent arg 'x-message-ttl'" in err.reply_text
    assert err.reply_text.endswith("received none but current is the value '1000' of type 'signedint'")


def test_redeclare_exclusive_queue_from_same_connection_is_ok(channel: BlockingChannel,
                                                              qname: str) -> None:
    ok = channel.queue_declare(qname, exclusive=True)
    channel.basic_publish("", qname, b"m")
    again = channel.queue_declare(qname, exclusive=True)
    assert (again.method.queue, again.method.message_count) == (ok.method.queue, 1)


def test_exclusive_queue_is_never_durable(channel: BlockingChannel, qname: str) -> None:
    channel.queue_declare(qname, exclusive=True, durable=True)
    channel.queue_declare(qname, exclusive=True, durable=False)  # RabbitMQ stored it non-durable
    assert channel.is_open


def test_exclusive_queue_is_locked_to_other_connections(connection: BlockingConnection,
                                                        other_connection: BlockingConnection,
                                                        qname: str) -> None:
    connection.channel().queue_declare(qname, exclusive=True)
    locked = (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{qname}' in vhost '/'."
              " It could be originally declared on another connection or the exclusive property value "
              "does not match that of the original declaration.")
    attempts: list[Callable[[BlockingChannel], object]] = [
        lambda ch: ch.queue_declare(qname, exclusive=True),
        lambda ch: ch.queue_declare(qname),
        lambda ch: ch.queue_declare(qname, passive=True),
        lambda ch: ch.basic_get(qname),
        lambda ch: ch.basic_consume(qname, lambda *a: None),
        lambda ch: ch.queue_bind(qname, "amq.fanout"),
        lambda ch: ch.queue_purge(qname),
        lambda ch: ch.queue_delete(qname),
    ]
    for attempt in attempts:
        ch = other_connection.channel()
        err = closed_with(ch, attempt, ch)
        assert (err.reply_code, err.reply_text) == (405, locked)
    assert exists(connection, qname)


def test_non_exclusive_queue_redeclared_exclusive_is_405(connection: BlockingConnection, qname: str,
                                                         cleanup: list[str]) -> None:
    cleanup.append(qname)
    ch = connection.channel()
    ch.queue_declare(qname)
    err = closed_with(ch, ch.queue_declare, qname, exclusive=True)
    assert err.reply_code == 405


def test_exclusive_queue_redeclared_non_exclusive_by_owner_is_405(channel: BlockingChannel,
                                                                  qname: str) -> None:
    channel.queue_declare(qname, exclusive=True)
    err = closed_with(channel, channel.queue_declare, qname, exclusive=False, durable=True)
    assert err.reply_code == 405  # the exclusive check comes before the durable one


def test_exclusive_queue_is_deleted_when_its_connection_closes(connection: BlockingConnection,
                                                               other_connection: BlockingConnection,
                                                               qname: str) -> None:
    other_connection.channel().queue_declare(qname, exclusive=True)
    assert exists(other_connection, qname)
    other_connection.close()
    assert not exists(connection, qname)


def test_auto_delete_queue_goes_after_its_last_consumer_cancels(connection: BlockingConnection,
                                                                qname: str) -> None:
    ch = connection.channel()
    ch.queue_declare(qname, auto_delete=True)
    assert exists(connection, qname)  # never had a consumer: stays
    tag1 = ch.basic_consume(qname, lambda *a: None)
    tag2 = ch.basic_consume(qname, lambda *a: None)
    ch.basic_cancel(tag1)
    assert exists(connection, qname)  # one consumer left
    ch.basic_cancel(tag2)
    assert gone_soon(connection, qname)


def test_auto_delete_queue_goes_when_consumer_channel_closes(connection: BlockingConnection,
                                                             qname: str) -> None:
    ch = connection.channel()
    ch.queue_declare(qname, auto_delete=True)
    ch.basic_consume(qname, lambda *a: None)
    ch.close()
    assert gone_soon(connection, qname)


# -- bind / unbind --------------------------------------------------------------------------------------


def test_bind_missing_queue_is_404(channel: BlockingChannel, qname: str) -> None:
    err = closed_with(channel, channel.queue_bind, qname, "amq.direct", "k")
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{qname}' in vhost '/'"


def test_bind_to_missing_exchange_is_404(channel: BlockingChannel) -> None:
    q = channel.queue_declare("", exclusive=True).method.queue
    err = closed_with(channel, channel.queue_bind, q, "test-no-such-exchange", "k")
    assert err.reply_code == 404
    assert err.reply_text == "NOT_FOUND - no exchange 'test-no-such-exchange' in vhost '/'"


def test_bind_with_both_missing_names_the_exchange(channel: BlockingChannel, qname: str) -> None:
    err = closed_with(channel, channel.queue_bind, qname, "test-no-such-exchange", "k")
    assert err.reply_code == 404
    assert err.reply_text == "NOT_FOUND - no exchange 'test-no-such-exchange' in vhost '/'"


def test_unbind_of_missing_queue_exchange_or_binding_is_ok(channel: BlockingChannel, qname: str) -> None:
    channel.queue_unbind(qname, "amq.direct", "k")
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_unbind(q, "test-no-such-exchange", "k")
    channel.queue_unbind(q, "amq.direct", "never-bound")
    assert channel.is_open


def test_unbind_stops_routing(channel: BlockingChannel) -> None:
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(q, "amq.direct", q + "-k")
    channel.basic_publish("amq.direct", q + "-k", b"before")
    assert drain(channel, q) == [b"before"]
    channel.queue_unbind(q, "amq.direct", q + "-k")
    channel.basic_publish("amq.direct", q + "-k", b"after")
    assert drain(channel, q) == []


# -- purge ----------------------------------------------------------------------------------------------


def test_purge_returns_ready_count_and_empties(connection: BlockingConnection, qname: str,
                                              cleanup: list[str]) -> None:
    cleanup.append(qname)
    ch = connection.channel()
    ch.queue_declare(qname)
    for i in range(4):
        ch.basic_publish("", qname, b"%d" % i)
    method, _, _ = ch.basic_get(qname, auto_ack=False)  # one unacked: not purged
    assert method is not None
    ok = ch.queue_purge(qname)
    assert ok.method.message_count == 3
    assert ch.queue_declare(qname, passive=True).method.message_count == 0
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert drain(ch, qname) == [b"0"]
    assert ch.queue_purge(qname).method.message_count == 0


def test_purge_missing_queue_is_404(channel: BlockingChannel, qname: str) -> None:
    err = closed_with(channel, channel.queue_purge, qname)
    assert err.reply_code == 404


# -- delete ---------------------------------------------------------------------------------------------


def test_delete_returns_message_count(connection: BlockingConnection, qname: str) -> None:
    ch = connection.channel()
    ch.queue_declare(qname)
    for i in range(5):
        ch.basic_publish("", qname, b"%d" % i)
    ok = ch.queue_delete(qname)
    assert ok.method.message_count == 5
    assert not exists(connection, qname)


def test_delete_missing_queue_is_ok(channel: BlockingChannel, qname: str) -> None:
    ok = channel.queue_delete(qname)
    assert ok.method.message_count == 0
    assert channel.is_open


def test_delete_if_unused_with_consumer_is_406(connection: BlockingConnection, qname: str,
                                               cleanup: list[str]) -> None:
    cleanup.append(qname)
    ch = connection.channel()
    ch.queue_declare(qname)
    consumer_ch = connection.channel()
    consumer_ch.basic_consume(qname, lambda *a: None)
    err = closed_with(ch, ch.queue_delete, qname, if_unused=True)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - queue '{qname}' in vhost '/' in use"
    consumer_ch.close()
    connection.channel().queue_delete(qname, if_unused=True)
    assert not exists(connection, qname)


def test_delete_if_empty_with_messages_is_406(connection: BlockingConnection, qname: str,
                                              cleanup: list[str]) -> None:
    cleanup.append(qname)
    ch = connection.channel()
    ch.queue_declare(qname)
    ch.basic_publish("", qname, b"m")
    err = closed_with(ch, ch.queue_delete, qname, if_empty=True)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - queue '{qname}' in vhost '/' not empty"
    ch = connection.channel()
    assert drain(ch, qname) == [b"m"]
    assert ch.queue_delete(qname, if_empty=True).method.message_count == 0
    assert not exists(connection, qname)


def test_delete_if_empty_is_checked_before_if_unused(connection: BlockingConnection, qname: str,
                                                     cleanup: list[str]) -> None:
    cleanup.append(qname)
    ch = connection.channel()
    ch.queue_declare(qname)
    ch.basic_publish("", qname, b"m")
    consumer_ch = connection.channel()
    consumer_ch.basic_qos(prefetch_count=1)
    consumer_ch.basic_consume(qname, lambda *a: None)
    ch.basic_publish("", qname, b"n")  # one of the two stays ready (prefetch 1, never acked)
    ch.queue_declare(qname, passive=True)  # a round trip so both publishes are in
    err = closed_with(ch, ch.queue_delete, qname, if_unused=True, if_empty=True)
    assert err.reply_code == 406
    assert err.reply_text.endswith("not empty")


def test_deleted_queue_loses_its_bindings(connection: BlockingConnection, qname: str) -> None:
    ch = connection.channel()
    ch.queue_declare(qname)
    ch.queue_bind(qname, "amq.direct", qname)
    ch.queue_delete(qname)
    ch.queue_declare(qname)
    try:
        ch.basic_publish("amq.direct", qname, b"m")
        assert drain(ch, qname) == []
    finally:
        ch.queue_delete(qname)


# -- the empty queue name: the channel's last declared queue ----------------------------------------


def test_empty_name_means_last_declared_queue(channel: BlockingChannel) -> None:
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind("", "amq.direct", "shortcut-key")
    channel.basic_publish("amq.direct", "shortcut-key", b"one")
    method, _, body = channel.basic_get("", auto_ack=True)
    assert method is not None and body == b"one"
    channel.basic_publish("", q, b"two")
    assert channel.queue_purge("").method.message_count == 1
    got: list[bytes] = []
    tag = channel.basic_consume("", lambda ch, m, p, b: got.append(b), auto_ack=True)
    channel.basic_publish("", q, b"three")
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=0.05)
    assert got == [b"three"]
    channel.basic_cancel(tag)
    assert channel.queue_delete("").method.message_count == 0
    assert not exists(channel.connection, q)


def test_bind_with_empty_queue_and_key_uses_queue_name_as_key(channel: BlockingChannel) -> None:
    q = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind("", "amq.direct", "")
    channel.basic_publish("amq.direct", q, b"by-name")
    channel.basic_publish("amq.direct", "", b"empty-key")
    assert drain(channel, q) == [b"by-name"]
    channel.queue_unbind("", "amq.direct", "")
    channel.basic_publish("amq.direct", q, b"after-unbind")
    assert drain(channel, q) == []


def test_last_declared_queue_includes_passive_declare(connection: BlockingConnection, qname: str,
                                                      cleanup: list[str]) -> None:
    cleanup.append(qname)
    ch = connection.channel()
    ch.queue_declare(qname)
    other = connection.channel()
    other.queue_declare(qname, passive=True)
    other.basic_publish("", qname, b"m")
    method, _, body = other.basic_get("", auto_ack=True)
    assert method is not None and body == b"m"


def test_empty_name_without_declared_queue_is_404(connection: BlockingConnection) -> None:
    for attempt in (lambda ch: ch.queue_bind("", "amq.direct", "k"),
                    lambda ch: ch.basic_get(""),
                    lambda ch: ch.queue_purge(""),
                    lambda ch: ch.queue_delete("")):
        ch = connection.channel()
        err = closed_with(ch, attempt, ch)
        assert (err.reply_code, err.reply_text) == (404, "NOT_FOUND - no previously declared queue")


def test_last_declared_queue_is_per_channel(connection: BlockingConnection) -> None:
    ch1 = connection.channel()
    ch1.queue_declare("", exclusive=True)
    ch2 = connection.channel()
    err = closed_with(ch2, ch2.basic_get, "")
    assert err.reply_code == 404
