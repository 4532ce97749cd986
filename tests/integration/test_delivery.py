"""The receive side, as RabbitMQ 3.10 does it: basic.consume / cancel, consumer cancel
notifications, basic.qos, round-robin and consumer priorities, delivery tags and basic.deliver
fields, channel.flow. (Acks, gets, recover and requeueing: test_acks.py.)"""

from __future__ import annotations

import re
from collections.abc import Callable

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker
from rawamqp import raw_client, raw_deliveries
from support import Inbox, connect, get_all, publish, ready, wait_total

from hare.amqp import spec


def locked_text(queue: str) -> str:
    return (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost '/'. "
            "It could be originally declared on another connection or the exclusive property value "
            "does not match that of the original declaration.")


# -- basic.consume ---------------------------------------------------------------------------------


def test_server_generated_consumer_tags(hare_url: str, queue: str) -> None:
    with raw_client(hare_url) as c:
        tags = []
        for _ in range(3):
            c.send_method(1, spec.BasicConsume(queue=queue))
            ok = c.expect(spec.BasicConsumeOk)
            tags.append(ok.consumer_tag)
    assert len(set(tags)) == 3
    for tag in tags:
        assert re.fullmatch(r"amq\.ctag-[A-Za-z0-9_-]{22}", tag), tag


def test_client_consumer_tag_is_used_in_consume_ok_and_deliveries(connection: BlockingConnection,
                                                                  channel: BlockingChannel,
                                                                  pub: BlockingChannel, queue: str) -> None:
    inbox = Inbox(connection)
    assert channel.basic_consume(queue, inbox, consumer_tag="my-consumer") == "my-consumer"
    publish(pub, queue, b"a", b"b")
    got = inbox.wait_for(2)
    assert [d.method.consumer_tag for d in got] == ["my-consumer", "my-consumer"]
    assert inbox.bodies == [b"a", b"b"]


def test_reusing_a_consumer_tag_on_a_channel_is_530(hare_url: str, queue: str) -> None:
    with raw_client(hare_url, channels=2) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="dup"))
        c.expect(spec.BasicConsumeOk)
        c.send_method(2, spec.BasicConsume(queue=queue, consumer_tag="dup"))  # other channel: fine
        assert c.expect(spec.BasicConsumeOk).consumer_tag == "dup"
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="dup"))
        channel, close = c.read_method()
        assert channel == 0 and isinstance(close, spec.ConnectionClose)
        assert close.reply_code == 530
        assert close.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"
        assert (close.class_id, close.method_id) == (60, 20)
        c.send_method(0, spec.ConnectionCloseOk())
        assert c.is_closed()


def test_consumer_tag_reuse_is_checked_before_the_queue(hare_url: str, queue: str, qname: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="t"))
        c.expect(spec.BasicConsumeOk)
        c.send_method(1, spec.BasicConsume(queue=qname, consumer_tag="t"))  # a queue that does not exist
        close = c.expect(spec.ConnectionClose)
        assert close.reply_code == 530
        assert close.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 't'"


def test_consume_with_empty_queue_name_uses_the_last_declared_queue(hare_url: str) -> None:
    with raw_client(hare_url, channels=2) as c:
        c.send_method(1, spec.BasicConsume(queue=""))
        close = c.expect(spec.ChannelClose)
        assert (close.reply_code, close.reply_text) == (404, "NOT_FOUND - no previously declared queue")
        c.send_method(2, spec.QueueDeclare(queue="", exclusive=True))
        name = c.expect(spec.QueueDeclareOk).queue
        c.send_method(2, spec.BasicConsume(queue="", consumer_tag="last"))
        c.expect(spec.BasicConsumeOk)
        c.publish(2, "", name, b"x")
        [(deliver, _)] = raw_deliveries(c, 1)
        assert (deliver.consumer_tag, deliver.routing_key) == ("last", name)


def test_consume_on_missing_queue_is_404(channel: BlockingChannel, qname: str) -> None:
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.basic_consume(qname, lambda *a: None)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no queue '{qname}' in vhost '/'"


def test_exclusive_consume_on_queue_with_consumers_is_403(connection: BlockingConnection,
                                                          queue: str) -> None:
    first = connection.channel()
    first.basic_consume(queue, lambda *a: None)
    ch = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.basic_consume(queue, lambda *a: None, exclusive=True)
    assert info.value.reply_code == 403
    assert info.value.reply_text == f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"
    assert first.is_open


def test_consume_on_queue_with_exclusive_consumer_is_403(hare_url: str, connection: BlockingConnection,
                                                         queue: str) -> None:
    owner = connection.channel()
    tag = owner.basic_consume(queue, lambda *a: None, exclusive=True)
    other = connect(hare_url)
    try:
        for ch in (other.channel(), connection.channel(), owner):  # other connection, same, same channel
            with pytest.raises(ChannelClosedByBroker) as info:
                ch.basic_consume(queue, lambda *a: None)
            assert info.value.reply_code == 403
            assert info.value.reply_text == f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"
        ch = connection.channel()
        tag = ch.basic_consume(queue, lambda *a: None, exclusive=True)  # the first one went with its channel
        ch.basic_cancel(tag)
        other.channel().basic_consume(queue, lambda *a: None)  # free again
    finally:
        other.close()


def test_consume_on_another_connections_exclusive_queue_is_405(admin: BlockingConnection,
                                                               channel: BlockingChannel) -> None:
    name = admin.channel().queue_declare("", exclusive=True).method.queue
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.basic_consume(name, lambda *a: None)
    assert info.value.reply_code == 405
    assert info.value.reply_text == locked_text(name)


def test_no_ack_consumer_ignores_prefetch_and_settles_on_delivery(
        connection: BlockingConnection, admin: BlockingConnection, pub: BlockingChannel, queue: str) -> None:
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1)
    inbox = Inbox(connection)
    ch.basic_consume(queue, inbox, auto_ack=True)
    publish(pub, queue, *[b"%d" % i for i in range(5)])
    inbox.wait_for(5)
    assert inbox.bodies == [b"0", b"1", b"2", b"3", b"4"]
    assert inbox.tags == [1, 2, 3, 4, 5]
    ch.close()  # nothing was unacked: nothing comes back
    assert ready(admin, queue) == 0


def test_nowait_consume_sends_no_consume_ok_but_delivers(hare_url: str, queue: str) -> None:
    with raw_client(hare_url, channels=2) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="quiet", nowait=True))
        c.send_method(1, spec.BasicQos(prefetch_count=10))
        c.expect(spec.BasicQosOk)  # the first answer: no consume-ok came before it
        c.publish(2, "", queue, b"hello")
        [(deliver, body)] = raw_deliveries(c, 1)
        assert (deliver.consumer_tag, deliver.delivery_tag, body) == ("quiet", 1, b"hello")


def test_nowait_consume_without_tag_uses_a_server_tag(hare_url: str, queue: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, nowait=True))
        c.publish(1, "", queue, b"x")
        [(deliver, _)] = raw_deliveries(c, 1)
        assert deliver.consumer_tag.startswith("amq.ctag-")


# -- basic.cancel ------------------------------------------------------------------------------------


def test_cancel_stops_deliveries(connection: BlockingConnection, channel: BlockingChannel,
                                 admin: BlockingConnection, pub: BlockingChannel, queue: str) -> None:
    inbox = Inbox(connection)
    tag = channel.basic_consume(queue, inbox, auto_ack=True)
    publish(pub, queue, b"1")
    inbox.wait_for(1)
    channel.basic_cancel(tag)
    publish(pub, queue, b"2")
    assert inbox.quiet() and inbox.bodies == [b"1"]
    assert ready(admin, queue) == 1


def test_cancel_of_unknown_tag_is_cancel_ok(hare_url: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicCancel(consumer_tag="never-was"))
        assert c.expect(spec.BasicCancelOk).consumer_tag == "never-was"
        c.send_method(1, spec.BasicQos(prefetch_count=1))  # the channel is still fine
        c.expect(spec.BasicQosOk)


def test_nowait_cancel(hare_url: str, admin: BlockingConnection, queue: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="c"))
        c.expect(spec.BasicConsumeOk)
        c.send_method(1, spec.BasicCancel(consumer_tag="c", nowait=True))
        c.send_method(1, spec.BasicQos(prefetch_count=1))
        c.expect(spec.BasicQosOk)
        c.send_method(1, spec.ConfirmSelect())
        c.expect(spec.ConfirmSelectOk)
        c.publish(1, "", queue, b"x")
        assert c.expect(spec.BasicAck).delivery_tag == 1  # confirmed, not delivered
    assert ready(admin, queue) == 1


def test_unacked_deliveries_survive_cancel(connection: BlockingConnection, admin: BlockingConnection,
                                           pub: BlockingChannel, queue: str) -> None:
    ch = connection.channel()
    inbox = Inbox(connection)
    tag = ch.basic_consume(queue, inbox)
    publish(pub, queue, b"1", b"2")
    inbox.wait_for(2)
    ch.basic_cancel(tag)
    assert ready(admin, queue) == 0  # cancel does not requeue
    ch.basic_ack(inbox.tags[0])  # the tags stay valid
    ch.close()  # the unacked one goes back now
    assert get_all(admin.channel(), queue) == [(b"2", True)]


# -- consumer cancel notification -------------------------------------------------------------------


def test_queue_delete_cancels_consumers_of_clients_that_asked(hare_url: str, make_queue: Callable[[], str],
                                                              admin: BlockingConnection) -> None:
    queue = make_queue()
    with raw_client(hare_url) as notified, raw_client(hare_url, capabilities={}) as unaware:
        notified.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="told"))
        notified.expect(spec.BasicConsumeOk)
        unaware.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="not-told"))
        unaware.expect(spec.BasicConsumeOk)
        assert admin.channel().queue_delete(queue).method.message_count == 0
        cancel = notified.expect(spec.BasicCancel)
        assert (cancel.consumer_tag, cancel.nowait) == ("told", True)
        # the client without the capability is told nothing; its channel stays usable
        unaware.send_method(1, spec.BasicQos(prefetch_count=1))
        unaware.expect(spec.BasicQosOk)
        # the cancelled tag is free again on both
        queue2 = make_queue()
        for c, tag in ((notified, "told"), (unaware, "not-told")):
            c.send_method(1, spec.BasicConsume(queue=queue2, consumer_tag=tag))
            assert c.expect(spec.BasicConsumeOk).consumer_tag == tag
        notified.send_method(1, spec.BasicCancel(consumer_tag="told"))
        notified.expect(spec.BasicCancelOk)


def test_queue_delete_on_the_consumers_own_channel_answers_delete_ok_first(hare_url: str,
                                                                           queue: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="mine"))
        c.expect(spec.BasicConsumeOk)
        c.send_method(1, spec.QueueDelete(queue=queue))
        c.expect(spec.QueueDeleteOk)
        assert c.expect(spec.BasicCancel).consumer_tag == "mine"


def test_pika_on_cancel_callback_runs_when_queue_is_deleted(connection: BlockingConnection,
                                                            admin: BlockingConnection, queue: str) -> None:
    ch = connection.channel()
    cancelled: list[str] = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(queue, lambda *a: None)
    admin.channel().queue_delete(queue)
    inbox = Inbox(connection)
    for _ in range(100):
        if cancelled:
            break
        inbox.quiet(0.05)
    assert cancelled == [tag]
    assert ch.is_open


# -- basic.qos ---------------------------------------------------------------------------------------


def test_per_consumer_prefetch_limits_unacked_deliveries(
        connection: BlockingConnection, admin: BlockingConnection, pub: BlockingChannel, queue: str) -> None:
    ch = connection.channel()
    ch.basic_qos(prefetch_count=2)
    inbox = Inbox(connection)
    ch.basic_consume(queue, inbox)
    publish(pub, queue, *[b"%d" % i for i in range(5)])
    inbox.wait_for(2)
    assert len(inbox.quiet()) == 2
    assert ready(admin, queue) == 3
    ch.basic_ack(inbox.tags[0])
    inbox.wait_for(3)
    assert len(inbox.quiet()) == 3
    ch.basic_ack(inbox.tags[2], multiple=True)
    inbox.wait_for(5)
    assert inbox.bodies == [b"0", b"1", b"2", b"3", b"4"]


def test_qos_global_false_applies_to_consumers_created_after_it(
        connection: BlockingConnection, pub: BlockingChannel, make_queue: Callable[[], str]) -> None:
    q1, q2 = make_queue(), make_queue()
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1)
    first = Inbox(connection)
    first_tag = ch.basic_consume(q1, first)
    ch.basic_qos(prefetch_count=3)  # only for consumers from now on
    second = Inbox(connection)
    ch.basic_consume(q2, second)
    for q in (q1, q2):
        publish(pub, q, *[b"%d" % i for i in range(5)])
    second.wait_for(3)
    first.wait_for(1)
    first.quiet()
    assert (len(first.got), len(second.got)) == (1, 3)
    ch.basic_ack(first.tags[0])
    first.wait_for(2)
    first.quiet()
    assert (len(first.got), len(second.got)) == (2, 3)
    ch.basic_cancel(first_tag)


def test_qos_global_true_is_shared_by_the_channels_consumers(
        connection: BlockingConnection, pub: BlockingChannel, make_queue: Callable[[], str]) -> None:
    q1, q2 = make_queue(), make_queue()
    ch = connection.channel()
    ch.basic_qos(prefetch_count=3, global_qos=True)
    a, b = Inbox(connection), Inbox(connection)
    ch.basic_consume(q1, a)
    ch.basic_consume(q2, b)
    for q in (q1, q2):
        publish(pub, q, *[b"%d" % i for i in range(5)])
    wait_total([a, b], 3)
    a.quiet()
    assert len(a.got) + len(b.got) == 3
    ch.basic_ack(0, multiple=True)
    wait_total([a, b], 6)
    a.quiet()
    assert len(a.got) + len(b.got) == 6


def test_global_and_per_consumer_limits_both_apply(connection: BlockingConnection, pub: BlockingChannel,
                                                   make_queue: Callable[[], str]) -> None:
    q1, q2 = make_queue(), make_queue()
    ch = connection.channel()
    ch.basic_qos(prefetch_count=2)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    a, b = Inbox(connection), Inbox(connection)
    ch.basic_consume(q1, a)
    ch.basic_consume(q2, b)
    for q in (q1, q2):
        publish(pub, q, *[b"%d" % i for i in range(4)])
    wait_total([a, b], 3)
    a.quiet()
    assert len(a.got) + len(b.got) == 3
    assert max(len(a.got), len(b.got)) == 2


def test_raising_global_qos_while_consuming_opens_the_window(connection: BlockingConnection,
                                                             pub: BlockingChannel, queue: str) -> None:
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1, global_qos=True)
    inbox = Inbox(connection)
    ch.basic_consume(queue, inbox)
    publish(pub, queue, *[b"%d" % i for i in range(6)])
    inbox.wait_for(1)
    assert len(inbox.quiet()) == 1
    ch.basic_qos(prefetch_count=3, global_qos=True)
    inbox.wait_for(3)
    assert len(inbox.quiet()) == 3
    ch.basic_qos(prefetch_count=0, global_qos=True)  # 0: no limit
    inbox.wait_for(6)
    assert inbox.bodies == [b"%d" % i for i in range(6)]


def test_per_consumer_qos_change_leaves_existing_consumers_alone(connection: BlockingConnection,
                                                                 pub: BlockingChannel, queue: str) -> None:
    ch = connection.channel()
    ch.basic_qos(prefetch_count=1)
    inbox = Inbox(connection)
    ch.basic_consume(queue, inbox)
    publish(pub, queue, b"0", b"1", b"2")
    inbox.wait_for(1)
    ch.basic_qos(prefetch_count=10)
    assert len(inbox.quiet()) == 1
    ch.basic_ack(inbox.tags[0])
    inbox.wait_for(2)
    assert len(inbox.quiet()) == 2


def test_prefetch_count_zero_is_unlimited(connection: BlockingConnection, pub: BlockingChannel,
                                          queue: str) -> None:
    publish(pub, queue, *[b"%d" % i for i in range(50)])
    ch = connection.channel()
    ch.basic_qos(prefetch_count=5)
    ch.basic_qos(prefetch_count=0)
    inbox = Inbox(connection)
    ch.basic_consume(queue, inbox)
    inbox.wait_for(50)
    assert inbox.bodies == [b"%d" % i for i in range(50)]


@pytest.mark.parametrize("global_qos", [False, True])
def test_prefetch_size_is_not_implemented(hare_url: str, global_qos: bool) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicQos(prefetch_size=1000, prefetch_count=5, global_=global_qos))
        channel, close = c.read_method()
        assert channel == 0 and isinstance(close, spec.ConnectionClose)
        assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)")
        assert (close.class_id, close.method_id) == (60, 10)


# -- competing consumers, priorities ------------------------------------------------------------------


def test_competing_consumers_get_messages_round_robin(connection: BlockingConnection, pub: BlockingChannel,
                                                      queue: str) -> None:
    a, b = Inbox(connection), Inbox(connection)
    connection.channel().basic_consume(queue, a, auto_ack=True)
    connection.channel().basic_consume(queue, b, auto_ack=True)
    publish(pub, queue, *[b"%d" % i for i in range(10)])
    wait_total([a, b], 10)
    assert len(a.got) == len(b.got) == 5
    assert {int(x) % 2 for x in a.bodies} != {int(x) % 2 for x in b.bodies}
    assert len({int(x) % 2 for x in a.bodies}) == 1


def test_highest_priority_consumer_gets_everything_it_can_take(connection: BlockingConnection,
                                                               pub: BlockingChannel, queue: str) -> None:
    low, default, high = Inbox(connection), Inbox(connection), Inbox(connection)
    connection.channel().basic_consume(queue, low, auto_ack=True, arguments={"x-priority": -5})
    connection.channel().basic_consume(queue, default, auto_ack=True)
    connection.channel().basic_consume(queue, high, auto_ack=True, arguments={"x-priority": 10})
    publish(pub, queue, *[b"%d" % i for i in range(6)])
    high.wait_for(6)
    high.quiet()
    assert (len(low.got), len(default.got)) == (0, 0)


def test_lower_priority_consumer_gets_messages_when_higher_prefetch_is_full(
        connection: BlockingConnection, admin: BlockingConnection, pub: BlockingChannel, queue: str) -> None:
    low_ch, high_ch = connection.channel(), connection.channel()
    low_ch.basic_qos(prefetch_count=2)
    high_ch.basic_qos(prefetch_count=2)
    low, high = Inbox(connection), Inbox(connection)
    low_ch.basic_consume(queue, low, arguments={"x-priority": 1})
    high_ch.basic_consume(queue, high, arguments={"x-priority": 5})
    publish(pub, queue, *[b"%d" % i for i in range(6)])
    wait_total([low, high], 4)
    low.quiet()
    assert (high.bodies, low.bodies) == ([b"0", b"1"], [b"2", b"3"])
    assert ready(admin, queue) == 2
    high_ch.basic_ack(high.tags[0])
    high.wait_for(3)
    low.quiet()
    assert (high.bodies, low.bodies) == ([b"0", b"1", b"4"], [b"2", b"3"])


@pytest.mark.parametrize("value, type_name", [
    ("high", "longstr"), (1.5, "double"), (True, "bool"), ({"a": 1}, "table"), ([1], "array"),
    (None, "void"),
])
def test_non_integer_x_priority_is_406(hare_url: str, queue: str, value: object, type_name: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, arguments={"x-priority": value}))
        close = c.expect(spec.ChannelClose)
        assert close.reply_code == 406
        assert close.reply_text == (f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{queue}' "
                                    f"in vhost '/': \"expected integer, got {type_name}\"")
        assert (close.class_id, close.method_id) == (60, 20)


def test_consumer_arguments_are_checked_before_exclusive_use(hare_url: str, queue: str) -> None:
    with raw_client(hare_url) as owner, raw_client(hare_url) as c:
        owner.send_method(1, spec.BasicConsume(queue=queue, exclusive=True))
        owner.expect(spec.BasicConsumeOk)
        c.send_method(1, spec.BasicConsume(queue=queue, arguments={"x-priority": "x"}))
        assert c.expect(spec.ChannelClose).reply_code == 406


# -- delivery tags and basic.deliver -----------------------------------------------------------------


def test_delivery_tags_are_per_channel_and_start_at_1(connection: BlockingConnection, pub: BlockingChannel,
                                                      make_queue: Callable[[], str]) -> None:
    q1, q2, q3 = make_queue(), make_queue(), make_queue()
    ch1, ch2 = connection.channel(), connection.channel()
    a, b = Inbox(connection), Inbox(connection)
    ch1.basic_consume(q1, a)
    ch2.basic_consume(q2, b)
    for q in (q1, q2):
        publish(pub, q, b"x", b"y", b"z")
    a.wait_for(3)
    b.wait_for(3)
    assert a.tags == b.tags == [1, 2, 3]
    publish(pub, q3, b"w")
    method, _, body = ch1.basic_get(q3)  # basic.get shares the channel's counter
    assert (method.delivery_tag, body) == (4, b"w")


def test_deliver_carries_the_publish_exchange_routing_key_and_properties(
        connection: BlockingConnection, channel: BlockingChannel, pub: BlockingChannel, queue: str) -> None:
    channel.queue_bind(queue, "amq.topic", "a.*.c")
    inbox = Inbox(connection)
    channel.basic_consume(queue, inbox)
    props = pika.BasicProperties(content_type="text/plain", correlation_id="c-1", message_id="m-1",
                                 headers={"k": "v", "n": 7}, delivery_mode=2, priority=3)
    publish(pub, "a.b.c", b"via topic", exchange="amq.topic", properties=props)
    publish(pub, queue, b"direct")
    first, second = inbox.wait_for(2)
    assert (first.method.exchange, first.method.routing_key, first.method.redelivered) == (
        "amq.topic", "a.b.c", False)
    assert first.body == b"via topic"
    p = first.properties
    assert (p.content_type, p.correlation_id, p.message_id, p.headers, p.delivery_mode, p.priority) == (
        "text/plain", "c-1", "m-1", {"k": "v", "n": 7}, 2, 3)
    assert (second.method.exchange, second.method.routing_key, second.body) == ("", queue, b"direct")


# -- channel.flow --------------------------------------------------------------------------------------


def test_channel_flow_active_false_is_not_implemented(hare_url: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.ChannelFlow(active=False))
        channel, close = c.read_method()
        assert channel == 0 and isinstance(close, spec.ConnectionClose)
        assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - active=false")
        assert (close.class_id, close.method_id) == (20, 20)
        c.send_method(0, spec.ConnectionCloseOk())
        assert c.is_closed()


def test_channel_flow_active_true_is_acknowledged_and_deliveries_go_on(hare_url: str, queue: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="c", no_ack=True))
        c.expect(spec.BasicConsumeOk)
        c.send_method(1, spec.ChannelFlow(active=True))
        assert c.expect(spec.ChannelFlowOk).active is True
        c.publish(1, "", queue, b"still flowing")
        [(deliver, body)] = raw_deliveries(c, 1)
        assert (deliver.consumer_tag, body) == ("c", b"still flowing")


def test_pika_channel_flow_true(channel: BlockingChannel) -> None:
    assert channel.flow(True) is True
