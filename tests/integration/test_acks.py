"""basic.get, ack / nack / reject, basic.recover, and what happens to unacked messages when a
channel, a connection or a socket goes away, as RabbitMQ 3.10 does it."""

from __future__ import annotations

import socket

import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker
from rawamqp import raw_client, raw_deliveries
from support import Inbox, get_all, publish, ready, wait_ready

from hare.amqp import spec


def numbered(n: int) -> list[bytes]:
    return [b"m%d" % i for i in range(n)]


def closed_by_broker(ch: BlockingChannel, queue: str) -> ChannelClosedByBroker:
    """After an asynchronous method the broker refuses: the next synchronous call sees the close."""
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.queue_declare(queue, passive=True)
    assert ch.is_closed
    return info.value


# -- basic.get -----------------------------------------------------------------------------------------


def test_get_ok_reports_the_remaining_message_count(channel: BlockingChannel, pub: BlockingChannel,
                                                    queue: str) -> None:
    publish(pub, queue, *numbered(3))
    seen = []
    for _ in range(3):
        method, _props, body = channel.basic_get(queue)
        seen.append((body, method.delivery_tag, method.message_count, method.redelivered,
                     method.exchange, method.routing_key))
    assert seen == [(b"m0", 1, 2, False, "", queue), (b"m1", 2, 1, False, "", queue),
                    (b"m2", 3, 0, False, "", queue)]
    assert channel.basic_get(queue) == (None, None, None)


def test_get_empty_on_the_wire(hare_url: str, queue: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicGet(queue=queue))
        assert isinstance(c.expect(spec.BasicGetEmpty), spec.BasicGetEmpty)
        c.publish(1, "", queue, b"x")
        c.send_method(1, spec.BasicGet(queue=queue, no_ack=True))
        ok = c.expect(spec.BasicGetOk)
        assert (ok.delivery_tag, ok.redelivered, ok.exchange, ok.routing_key, ok.message_count) == (
            1, False, "", queue, 0)
        assert c.read_content()[1] == b"x"


def test_get_on_missing_queue_is_404(channel: BlockingChannel, qname: str) -> None:
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.basic_get(qname)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no queue '{qname}' in vhost '/'"


def test_get_works_beside_an_exclusive_consumer(connection: BlockingConnection, admin: BlockingConnection,
                                                pub: BlockingChannel, queue: str) -> None:
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1)
    inbox = Inbox(connection)
    ch.basic_consume(queue, inbox, exclusive=True)
    publish(pub, queue, b"m0", b"m1")
    inbox.wait_for(1)
    method, _, body = admin.channel().basic_get(queue, auto_ack=True)  # exclusive is about consumers only
    assert (body, method.message_count) == (b"m1", 0)


def test_no_ack_get_settles_at_once(connection: BlockingConnection, admin: BlockingConnection,
                                    pub: BlockingChannel, queue: str) -> None:
    publish(pub, queue, b"gone")
    ch = connection.channel()
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert (body, method.delivery_tag) == (b"gone", 1)
    ch.close()
    assert ready(admin, queue) == 0


def test_unacked_get_comes_back_redelivered(connection: BlockingConnection, channel: BlockingChannel,
                                            pub: BlockingChannel, queue: str) -> None:
    publish(pub, queue, b"once", b"twice")
    method, _, body = channel.basic_get(queue)
    assert (body, method.redelivered) == (b"once", False)
    channel.close()
    assert get_all(connection.channel(), queue) == [(b"once", True), (b"twice", False)]


# -- ack -----------------------------------------------------------------------------------------------


def gets(ch: BlockingChannel, queue: str, n: int) -> list[int]:
    tags = []
    for _ in range(n):
        method, _, _ = ch.basic_get(queue)
        tags.append(method.delivery_tag)
    return tags


def test_ack_single(connection: BlockingConnection, admin: BlockingConnection, pub: BlockingChannel,
                   queue: str) -> None:
    publish(pub, queue, *numbered(3))
    ch = connection.channel()
    assert gets(ch, queue, 3) == [1, 2, 3]
    ch.basic_ack(2)
    ch.close()
    assert get_all(admin.channel(), queue) == [(b"m0", True), (b"m2", True)]


def test_ack_multiple_acks_every_tag_up_to_it(connection: BlockingConnection, admin: BlockingConnection,
                                              pub: BlockingChannel, queue: str) -> None:
    publish(pub, queue, *numbered(5))
    ch = connection.channel()
    gets(ch, queue, 5)
    ch.basic_ack(2)
    ch.basic_ack(4, multiple=True)  # 1, 3, 4 (2 already acked)
    ch.close()
    assert get_all(admin.channel(), queue) == [(b"m4", True)]


def test_ack_multiple_with_tag_0_acks_everything(connection: BlockingConnection, admin: BlockingConnection,
                                                 pub: BlockingChannel, queue: str) -> None:
    ch = connection.channel()
    ch.basic_ack(0, multiple=True)  # nothing outstanding: fine
    publish(pub, queue, *numbered(4))
    gets(ch, queue, 4)
    ch.basic_ack(0, multiple=True)
    assert ready(admin, queue) == 0
    ch.close()
    assert ready(admin, queue) == 0


@pytest.mark.parametrize("method, method_id", [
    (spec.BasicAck(delivery_tag=7), 80),
    (spec.BasicAck(delivery_tag=0), 80),
    (spec.BasicAck(delivery_tag=7, multiple=True), 80),
    (spec.BasicReject(delivery_tag=7), 90),
    (spec.BasicNack(delivery_tag=7), 120),
    (spec.BasicNack(delivery_tag=7, multiple=True), 120),
])
def test_unknown_delivery_tag_is_406_and_closes_the_channel(hare_url: str, queue: str, method: spec.Method,
                                                            method_id: int) -> None:
    with raw_client(hare_url) as c:
        c.publish(1, "", queue, b"x")
        c.send_method(1, spec.BasicGet(queue=queue))
        c.expect(spec.BasicGetOk)
        c.read_content()
        c.send_method(1, method)
        close = c.expect(spec.ChannelClose)
        tag = method.delivery_tag  # type: ignore[attr-defined]
        assert close.reply_code == 406
        assert close.reply_text == f"PRECONDITION_FAILED - unknown delivery tag {tag}"
        assert (close.class_id, close.method_id) == (60, method_id)
        c.send_method(1, spec.ChannelCloseOk())
        c.open_channel(1)
        c.send_method(1, spec.BasicGet(queue=queue, no_ack=True))  # nothing was settled: it is back
        ok = c.expect(spec.BasicGetOk)
        assert (ok.delivery_tag, ok.redelivered) == (1, True)


def test_pika_unknown_tag_closes_the_channel(connection: BlockingConnection, queue: str) -> None:
    ch = connection.channel()
    ch.basic_ack(99)
    err = closed_by_broker(ch, queue)
    assert (err.reply_code, err.reply_text) == (406, "PRECONDITION_FAILED - unknown delivery tag 99")
    assert connection.is_open


def test_double_ack_is_406(connection: BlockingConnection, admin: BlockingConnection, pub: BlockingChannel,
                           queue: str) -> None:
    publish(pub, queue, b"x")
    ch = connection.channel()
    gets(ch, queue, 1)
    ch.basic_ack(1)
    ch.basic_ack(1)
    err = closed_by_broker(ch, queue)
    assert (err.reply_code, err.reply_text) == (406, "PRECONDITION_FAILED - unknown delivery tag 1")
    assert ready(admin, queue) == 0  # the first ack counted


def test_ack_of_a_no_ack_delivery_is_406(connection: BlockingConnection, pub: BlockingChannel,
                                         queue: str) -> None:
    ch = connection.channel()
    inbox = Inbox(connection)
    ch.basic_consume(queue, inbox, auto_ack=True)
    publish(pub, queue, b"x")
    inbox.wait_for(1)
    ch.basic_ack(inbox.tags[0])
    err = closed_by_broker(ch, queue)
    assert (err.reply_code, err.reply_text) == (406, "PRECONDITION_FAILED - unknown delivery tag 1")


def test_ack_after_the_queue_was_deleted_is_fine(connection: BlockingConnection, admin: BlockingConnection,
                                                 pub: BlockingChannel, queue: str) -> None:
    publish(pub, queue, b"x")
    ch = connection.channel()
    gets(ch, queue, 1)
    admin.channel().queue_delete(queue)
    ch.basic_ack(1)
    ch.basic_qos(prefetch_count=1)  # a round trip: the ack was accepted
    assert ch.is_open


# -- nack / reject and requeueing ----------------------------------------------------------------------


def test_requeued_messages_return_to_their_original_position(connection: BlockingConnection,
                                                             admin: BlockingConnection, pub: BlockingChannel,
                                                             queue: str) -> None:
    publish(pub, queue, *numbered(5))
    ch = connection.channel()
    assert gets(ch, queue, 3) == [1, 2, 3]
    ch.basic_reject(3, requeue=True)  # m2 first, then m0: they still come back as m0, m2
    ch.basic_nack(1, requeue=True)
    assert ready(admin, queue) == 4
    assert get_all(admin.channel(), queue) == [(b"m0", True), (b"m2", True), (b"m3", False), (b"m4", False)]
    ch.basic_ack(2)  # m1 is still ours


def test_nack_and_reject_without_requeue_drop_the_message(connection: BlockingConnection,
                                                          admin: BlockingConnection, pub: BlockingChannel,
                                                          queue: str) -> None:
    publish(pub, queue, *numbered(4))
    ch = connection.channel()
    gets(ch, queue, 4)
    ch.basic_nack(1, requeue=False)
    ch.basic_reject(2, requeue=False)
    ch.basic_nack(4, multiple=True, requeue=False)
    assert ready(admin, queue) == 0
    ch.close()
    assert ready(admin, queue) == 0


def test_nack_multiple_requeues_up_to_the_tag(connection: BlockingConnection, admin: BlockingConnection,
                                              pub: BlockingChannel, queue: str) -> None:
    publish(pub, queue, *numbered(4))
    ch = connection.channel()
    gets(ch, queue, 4)
    ch.basic_nack(3, multiple=True, requeue=True)
    assert get_all(admin.channel(), queue) == [(b"m0", True), (b"m1", True), (b"m2", True)]
    ch.basic_ack(4)
    ch.close()
    assert ready(admin, queue) == 0


def test_nack_multiple_with_tag_0_requeues_everything(connection: BlockingConnection,
                                                      admin: BlockingConnection, pub: BlockingChannel,
                                                      queue: str) -> None:
    publish(pub, queue, *numbered(3))
    ch = connection.channel()
    gets(ch, queue, 3)
    ch.basic_nack(0, multiple=True, requeue=True)
    assert get_all(admin.channel(), queue) == [(b"m0", True), (b"m1", True), (b"m2", True)]


def test_requeued_message_goes_to_the_consumer_again_ahead_of_newer_ones(
        connection: BlockingConnection, pub: BlockingChannel, queue: str) -> None:
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1)
    inbox = Inbox(connection)
    ch.basic_consume(queue, inbox)
    publish(pub, queue, *numbered(3))
    first = inbox.wait_for(1)[0]
    assert (first.body, first.method.delivery_tag, first.method.redelivered) == (b"m0", 1, False)
    ch.basic_nack(1, requeue=True)
    again = inbox.wait_for(2)[1]
    assert (again.body, again.method.delivery_tag, again.method.redelivered) == (b"m0", 2, True)
    ch.basic_reject(2, requeue=False)
    third = inbox.wait_for(3)[2]
    assert (third.body, third.method.delivery_tag, third.method.redelivered) == (b"m1", 3, False)


def test_purge_leaves_unacked_messages_alone(connection: BlockingConnection, admin: BlockingConnection,
                                             pub: BlockingChannel, queue: str) -> None:
    publish(pub, queue, *numbered(4))
    ch = connection.channel()
    gets(ch, queue, 2)
    assert admin.channel().queue_purge(queue).method.message_count == 2
    ch.basic_nack(0, multiple=True, requeue=True)
    assert get_all(admin.channel(), queue) == [(b"m0", True), (b"m1", True)]


# -- basic.recover -------------------------------------------------------------------------------------


def test_recover_redelivers_unacked_messages_in_order(connection: BlockingConnection,
                                                      admin: BlockingConnection, pub: BlockingChannel,
                                                      queue: str) -> None:
    ch = connection.channel()
    inbox = Inbox(connection)
    ch.basic_consume(queue, inbox)
    publish(pub, queue, *numbered(3))
    inbox.wait_for(3)
    ch.basic_ack(2)
    ch.basic_recover(requeue=True)
    inbox.wait_for(5)
    again = inbox.got[3:]
    assert [(d.body, d.method.delivery_tag, d.method.redelivered) for d in again] == [
        (b"m0", 4, True), (b"m2", 5, True)]
    assert len(inbox.quiet()) == 5
    ch.basic_ack(5, multiple=True)
    ch.close()
    assert ready(admin, queue) == 0


def test_recover_async_and_old_tags_are_gone(hare_url: str, queue: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="c"))
        c.expect(spec.BasicConsumeOk)
        c.publish(1, "", queue, b"a")
        c.publish(1, "", queue, b"b")
        assert [(d.delivery_tag, d.redelivered, body) for d, body in raw_deliveries(c, 2)] == [
            (1, False, b"a"), (2, False, b"b")]
        c.send_method(1, spec.BasicRecoverAsync(requeue=True))  # no answer but the redeliveries
        assert [(d.delivery_tag, d.redelivered, body) for d, body in raw_deliveries(c, 2)] == [
            (3, True, b"a"), (4, True, b"b")]
        c.send_method(1, spec.BasicRecover(requeue=True))
        c.expect(spec.BasicRecoverOk)  # recover-ok comes before the redeliveries
        assert [(d.delivery_tag, body) for d, body in raw_deliveries(c, 2)] == [(5, b"a"), (6, b"b")]
        c.send_method(1, spec.BasicAck(delivery_tag=1))
        close = c.expect(spec.ChannelClose)
        assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"


@pytest.mark.parametrize("method", [spec.BasicRecover(requeue=False), spec.BasicRecoverAsync(requeue=False)])
def test_recover_without_requeue_is_not_implemented(hare_url: str, admin: BlockingConnection, queue: str,
                                                    method: spec.Method) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="c"))
        c.expect(spec.BasicConsumeOk)
        c.publish(1, "", queue, b"a")
        raw_deliveries(c, 1)
        c.send_method(1, method)
        channel, close = c.read_method()
        assert channel == 0 and isinstance(close, spec.ConnectionClose)
        assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - requeue=false")
        assert (close.class_id, close.method_id) == (method.CLASS_ID, method.METHOD_ID)
        c.send_method(0, spec.ConnectionCloseOk())
        assert c.is_closed()
    wait_ready(admin, queue, 1)
    assert get_all(admin.channel(), queue) == [(b"a", True)]


# -- unacked messages when the channel, connection or socket goes ----------------------------------------


def consume_five_of_six(connection: BlockingConnection, pub: BlockingChannel, queue: str) -> BlockingChannel:
    """A channel that got m0 by basic.get and m1..m4 by a consumer (cancelled since), and acked m2;
    m5 is still ready."""
    publish(pub, queue, *numbered(6))
    ch = connection.channel()
    method, _, body = ch.basic_get(queue)
    assert (method.delivery_tag, body) == (1, b"m0")
    ch.basic_qos(prefetch_count=4)
    inbox = Inbox(connection)
    tag = ch.basic_consume(queue, inbox)
    inbox.wait_for(4)
    assert inbox.bodies == [b"m1", b"m2", b"m3", b"m4"]
    ch.basic_cancel(tag)
    ch.basic_ack(3)
    return ch


EXPECTED_AFTER_LOSS = [(b"m0", True), (b"m1", True), (b"m3", True), (b"m4", True), (b"m5", False)]


def test_unacked_messages_return_when_the_channel_closes(connection: BlockingConnection,
                                                         admin: BlockingConnection, pub: BlockingChannel,
                                                         queue: str) -> None:
    ch = consume_five_of_six(connection, pub, queue)
    assert ready(admin, queue) == 1
    ch.close()
    assert get_all(admin.channel(), queue) == EXPECTED_AFTER_LOSS


def test_unacked_messages_return_when_the_connection_closes(hare_url: str, admin: BlockingConnection,
                                                            pub: BlockingChannel, queue: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(hare_url))
    consume_five_of_six(conn, pub, queue)
    conn.close()
    wait_ready(admin, queue, 5)
    assert get_all(admin.channel(), queue) == EXPECTED_AFTER_LOSS


def test_unacked_messages_return_when_the_socket_drops(hare_url: str, admin: BlockingConnection,
                                                       pub: BlockingChannel, queue: str) -> None:
    publish(pub, queue, *numbered(6))
    c = raw_client(hare_url)
    c.send_method(1, spec.BasicGet(queue=queue))
    assert c.expect(spec.BasicGetOk).delivery_tag == 1
    c.read_content()
    c.send_method(1, spec.BasicQos(prefetch_count=4))
    c.expect(spec.BasicQosOk)
    c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="c"))
    c.expect(spec.BasicConsumeOk)
    assert [body for _, body in raw_deliveries(c, 4)] == [b"m1", b"m2", b"m3", b"m4"]
    c.send_method(1, spec.BasicCancel(consumer_tag="c"))
    c.expect(spec.BasicCancelOk)
    c.send_method(1, spec.BasicAck(delivery_tag=3))
    c.send_method(1, spec.BasicQos(prefetch_count=4))
    c.expect(spec.BasicQosOk)  # the ack went through
    c.sock.shutdown(socket.SHUT_RDWR)  # no connection.close: the socket just goes
    c.close()
    wait_ready(admin, queue, 5)
    assert get_all(admin.channel(), queue) == EXPECTED_AFTER_LOSS


def test_returned_messages_go_to_another_waiting_consumer(connection: BlockingConnection,
                                                          pub: BlockingChannel, queue: str) -> None:
    taker, waiter = connection.channel(), connection.channel()
    taken = Inbox(connection)
    taker.basic_consume(queue, taken)
    publish(pub, queue, *numbered(3))
    taken.wait_for(3)
    waiting = Inbox(connection)
    waiter.basic_consume(queue, waiting)
    taker.close()
    waiting.wait_for(3)
    assert [(d.body, d.method.redelivered, d.method.delivery_tag) for d in waiting.got] == [
        (b"m0", True, 1), (b"m1", True, 2), (b"m2", True, 3)]
