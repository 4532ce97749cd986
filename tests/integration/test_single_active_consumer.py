"""Single active consumer (``x-single-active-consumer``), as RabbitMQ 3.10's classic queues do it:
one consumer gets the messages, the others wait; when it goes (cancel, channel close, connection
loss) the next takes over, and the messages it had not acked go to the next one first, in order.
Every test here passes against RabbitMQ 3.10 too."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from rawamqp import raw_client, raw_deliveries
from support import (
    Inbox,
    closed_with,
    connect,
    deleted_after,
    publish,
    unique_name,
    wait_ready,
    wait_total,
)

from hare.amqp import spec

SAC = {"x-single-active-consumer": True}


@pytest.fixture
def sac(admin: BlockingConnection) -> Iterator[str]:
    """A single-active-consumer queue, deleted after the test."""
    with deleted_after(admin, "queue") as names:
        name = unique_name("sac")
        ch = admin.channel()
        ch.queue_declare(name, arguments=SAC)
        ch.close()
        names.append(name)
        yield name


def numbered(*ns: int) -> list[bytes]:
    return [b"m%d" % i for i in ns]


def consumer(conn: BlockingConnection, queue: str, prefetch: int = 0,
             priority: int | None = None) -> tuple[BlockingChannel, Inbox, str]:
    """A consumer with manual acks on a channel of its own: (channel, inbox, consumer tag)."""
    ch = conn.channel()
    if prefetch:
        ch.basic_qos(prefetch_count=prefetch)
    inbox = Inbox(conn)
    args = {"x-priority": priority} if priority is not None else None
    tag = ch.basic_consume(queue, inbox, arguments=args)
    return ch, inbox, tag


def received(inbox: Inbox) -> list[tuple[bytes, bool]]:
    return [(d.body, d.method.redelivered) for d in inbox.got]


def test_the_first_consumer_gets_every_message_the_others_wait(connection: BlockingConnection,
                                                               pub: BlockingChannel, sac: str) -> None:
    _, first, _ = consumer(connection, sac)
    _, second, _ = consumer(connection, sac)
    _, third, _ = consumer(connection, sac)
    assert pub.queue_declare(sac, passive=True).method.consumer_count == 3  # waiting ones count
    publish(pub, sac, *numbered(*range(10)))
    assert first.wait_for(10) and first.bodies == numbered(*range(10))
    assert second.quiet() == [] and third.got == []


def test_a_higher_priority_consumer_does_not_displace_the_active_one(connection: BlockingConnection,
                                                                    pub: BlockingChannel, sac: str) -> None:
    _, low, _ = consumer(connection, sac, priority=0)
    _, high, _ = consumer(connection, sac, priority=10)
    publish(pub, sac, *numbered(0, 1, 2))
    assert low.wait_for(3) and low.bodies == numbered(0, 1, 2)
    assert high.quiet() == []


def test_the_successor_is_the_highest_priority_then_the_earliest(connection: BlockingConnection,
                                                                 pub: BlockingChannel, sac: str) -> None:
    """RabbitMQ 3.10 picks the next active consumer by x-priority, then by registration order."""
    chans, inboxes = [], []
    for priority in (0, 5, 0, 10, 5):
        ch, inbox, _ = consumer(connection, sac, priority=priority)
        chans.append(ch)
        inboxes.append(inbox)
    order = []
    for round_ in range(5):
        publish(pub, sac, b"r%d" % round_)
        wait_total(inboxes, round_ + 1)
        active = [i for i, inbox in enumerate(inboxes) if inbox.got]
        assert len(active) == 1, [len(inbox.got) for inbox in inboxes]
        order.append(active[0])
        # the messages the previous ones left unacked, then the new one
        assert inboxes[active[0]].bodies == [b"r%d" % i for i in range(round_ + 1)]
        chans[active[0]].close()  # its unacked messages go to the next one
        inboxes[active[0]].got.clear()
    assert order == [0, 3, 1, 4, 2]


def test_hand_over_on_channel_close_redelivers_the_unacked_first(connection: BlockingConnection,
                                                                 pub: BlockingChannel, sac: str) -> None:
    first_ch, first, _ = consumer(connection, sac, prefetch=3)
    _, second, _ = consumer(connection, sac)
    publish(pub, sac, *numbered(*range(6)))
    first.wait_for(3)
    assert second.quiet() == []
    first_ch.basic_ack(first.tags[0])
    first.wait_for(4)  # the ack made room for m3
    first_ch.close()
    second.wait_for(5)
    assert received(second) == [(b"m1", True), (b"m2", True), (b"m3", True), (b"m4", False),
                                (b"m5", False)]


def test_hand_over_on_connection_loss(hare_url: str, connection: BlockingConnection,
                                      pub: BlockingChannel, sac: str) -> None:
    c = raw_client(hare_url)
    c.send_method(1, spec.BasicQos(prefetch_count=2))
    c.expect(spec.BasicQosOk)
    c.send_method(1, spec.BasicConsume(queue=sac, consumer_tag="lost"))
    c.expect(spec.BasicConsumeOk)
    _, second, _ = consumer(connection, sac)
    publish(pub, sac, *numbered(*range(5)))
    assert [body for _, body in raw_deliveries(c, 2)] == numbered(0, 1)
    assert second.quiet() == []
    c.sock.shutdown(socket.SHUT_RDWR)  # no connection.close: the socket just goes
    c.close()
    second.wait_for(5)
    assert received(second) == [(b"m0", True), (b"m1", True), (b"m2", False), (b"m3", False),
                                (b"m4", False)]


def test_hand_over_on_connection_close(hare_url: str, connection: BlockingConnection,
                                       pub: BlockingChannel, sac: str) -> None:
    other = connect(hare_url)
    _, first, _ = consumer(other, sac, prefetch=2)
    _, second, _ = consumer(connection, sac)
    publish(pub, sac, *numbered(*range(4)))
    first.wait_for(2)
    other.close()
    second.wait_for(4)
    assert received(second) == [(b"m0", True), (b"m1", True), (b"m2", False), (b"m3", False)]


def test_hand_over_on_cancel_keeps_the_order(connection: BlockingConnection, pub: BlockingChannel,
                                             sac: str) -> None:
    """A cancelled consumer keeps its unacked messages (its channel is open): the next one gets
    nothing until they are settled or a message arrives; one it returns goes out first."""
    first_ch, first, tag = consumer(connection, sac, prefetch=2)
    _, second, _ = consumer(connection, sac)
    publish(pub, sac, *numbered(*range(4)))
    first.wait_for(2)
    first_ch.basic_cancel(tag)
    assert second.quiet() == []
    first_ch.basic_ack(first.tags[0])
    assert second.quiet() == []
    first_ch.basic_nack(first.tags[1], requeue=True)
    second.wait_for(3)
    assert received(second) == [(b"m1", True), (b"m2", False), (b"m3", False)]
    assert first.bodies == numbered(0, 1)


def test_after_cancel_new_messages_go_to_the_next_consumer(connection: BlockingConnection,
                                                           pub: BlockingChannel, sac: str) -> None:
    """Even while the cancelled one still holds unacked messages, as in RabbitMQ 3.10 (which hands
    over when the queue next runs: here, the publish to the empty queue)."""
    first_ch, first, tag = consumer(connection, sac, prefetch=2)
    _, second, _ = consumer(connection, sac)
    publish(pub, sac, *numbered(0, 1))
    first.wait_for(2)
    first_ch.basic_cancel(tag)
    publish(pub, sac, b"m2", b"m3")
    second.wait_for(2)
    assert second.bodies == numbered(2, 3)
    assert first.quiet() and first.bodies == numbered(0, 1)


def test_a_consumer_alone_again_is_active_and_waiting_ones_may_leave(
        connection: BlockingConnection, pub: BlockingChannel, sac: str) -> None:
    first_ch, first, first_tag = consumer(connection, sac)
    waiting_ch, waiting, waiting_tag = consumer(connection, sac)
    waiting_ch.basic_cancel(waiting_tag)
    assert pub.queue_declare(sac, passive=True).method.consumer_count == 1
    publish(pub, sac, b"m0")
    first.wait_for(1)
    first_ch.basic_ack(first.tags[0])
    first_ch.basic_cancel(first_tag)
    assert pub.queue_declare(sac, passive=True).method.consumer_count == 0
    _, late, _ = consumer(connection, sac)
    publish(pub, sac, b"m1")
    assert late.wait_for(1) and late.bodies == [b"m1"]
    assert waiting.got == []


def test_basic_get_takes_messages_beside_the_active_consumer(connection: BlockingConnection,
                                                             pub: BlockingChannel, sac: str) -> None:
    _, first, _ = consumer(connection, sac, prefetch=1)
    publish(pub, sac, *numbered(0, 1, 2))
    first.wait_for(1)
    method, _props, body = pub.basic_get(sac, auto_ack=True)
    assert (body, method.message_count) == (b"m1", 1)
    assert first.quiet() and first.bodies == [b"m0"]


def test_an_exclusive_consumer_is_refused_even_on_an_idle_queue(channel: BlockingChannel, sac: str) -> None:
    err = closed_with(channel, channel.basic_consume, sac, lambda *a: None, exclusive=True)
    assert (err.reply_code, err.reply_text) == (
        403, f"ACCESS_REFUSED - queue '{sac}' in vhost '/' in exclusive use")


def test_deleting_the_queue_cancels_active_and_waiting_consumers(connection: BlockingConnection,
                                                                 pub: BlockingChannel, sac: str) -> None:
    cancelled: list[str] = []
    chans = []
    for _ in range(3):
        ch, _inbox, _tag = consumer(connection, sac)
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        chans.append(ch)
    publish(pub, sac, b"m0")
    pub.queue_delete(sac)
    deadline_rounds = 50
    while len(cancelled) < 3 and deadline_rounds:
        connection.process_data_events(time_limit=0.02)
        deadline_rounds -= 1
    assert len(cancelled) == 3
    assert all(ch.is_open for ch in chans)


def test_redeclaring_with_another_value_is_refused(channel: BlockingChannel, sac: str) -> None:
    err = closed_with(channel, channel.queue_declare, sac, arguments={"x-single-active-consumer": False})
    assert err.reply_code == 406
    assert err.reply_text == (f"PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for "
                              f"queue '{sac}' in vhost '/': received 'false' but current is 'true'")


def test_messages_of_an_ordinary_queue_still_go_round_robin(connection: BlockingConnection,
                                                            pub: BlockingChannel, queue: str) -> None:
    _, a, _ = consumer(connection, queue)
    _, b, _ = consumer(connection, queue)
    publish(pub, queue, *numbered(*range(4)))
    wait_ready(pub.connection, queue, 0)
    a.quiet(0.2)
    assert sorted(a.bodies + b.bodies) == numbered(*range(4)) and a.got and b.got
