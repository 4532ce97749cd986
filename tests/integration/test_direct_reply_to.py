"""Direct reply-to (``amq.rabbitmq.reply-to``): RPC without reply queues, as RabbitMQ 3.10 does it.

The requester consumes the pseudo-queue (no-ack) and publishes with reply_to amq.rabbitmq.reply-to;
the broker rewrites that to a name of the requesting channel, and a reply published to the default
exchange with that name as routing key goes straight to the channel. RabbitMQ's quirks are kept:
such a reply reaches no queue, so a mandatory one is returned (312 NO_ROUTE) even when delivered;
replies carry the channel's next delivery tag without taking it. (One is not: a passive declare of
a channel's own reply name on that channel crashes RabbitMQ's channel (541); hare answers it.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aio_pika
import pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import UnroutableError
from rawamqp import RawClient, ping, raw_deliveries
from support import Inbox, closed_with, hare_only, run, unique_name

from hare.amqp import spec
from hare.amqp.properties import decode_properties

R = "amq.rabbitmq.reply-to"
NO_CONSUMER = (406, "PRECONDITION_FAILED - fast reply consumer does not exist")
Props = pika.BasicProperties
TIMEOUT = 5.0


class Server:
    """An RPC server on its own connection: an exclusive request queue whose requests are answered
    (the body upper-cased, same correlation id) on the default exchange with their reply_to as
    routing key, or, with ``answer=False``, kept for the test to answer."""

    def __init__(self, conn: BlockingConnection, answer: bool = True) -> None:
        self.conn = conn
        self.ch = conn.channel()
        self.queue = self.ch.queue_declare("", exclusive=True).method.queue
        self.answer = answer
        self.requests: list[tuple[Props, bytes]] = []
        self.ch.basic_consume(self.queue, self._on_request, auto_ack=True)

    def _on_request(self, ch: BlockingChannel, method: Any, props: Props, body: bytes) -> None:
        self.requests.append((props, body))
        if self.answer:
            ch.basic_publish("", props.reply_to, body.upper(), Props(correlation_id=props.correlation_id))

    def serve(self, n: int) -> list[tuple[Props, bytes]]:
        """Pump until ``n`` requests arrived (and were answered)."""
        deadline = time.monotonic() + TIMEOUT
        while len(self.requests) < n:
            assert time.monotonic() < deadline, f"{len(self.requests)} requests, expected {n}"
            self.conn.process_data_events(time_limit=0.02)
        return self.requests


def requester(conn: BlockingConnection) -> tuple[BlockingChannel, Inbox, str]:
    """A channel consuming amq.rabbitmq.reply-to: (channel, its inbox, its consumer tag)."""
    ch = conn.channel()
    inbox = Inbox(conn)
    tag = ch.basic_consume(R, inbox, auto_ack=True)
    return ch, inbox, tag


def request(ch: BlockingChannel, queue: str, body: bytes, cid: str = "", **props: Any) -> None:
    ch.basic_publish("", queue, body, Props(reply_to=R, correlation_id=cid or None, **props))


def reply_name(conn: BlockingConnection) -> tuple[BlockingChannel, Inbox, str, str]:
    """A requester channel, its inbox and consumer tag, and the reply name the broker gave it (as
    a server sees it)."""
    ch, inbox, tag = requester(conn)
    server = Server(conn, answer=False)
    request(ch, server.queue, b"?")
    props, _ = server.serve(1)[0]
    server.ch.close()
    return ch, inbox, tag, props.reply_to


# -- round trips ------------------------------------------------------------------------------------


def test_pika_rpc_round_trip(connection: BlockingConnection, other_connection: BlockingConnection) -> None:
    server = Server(other_connection)
    ch, inbox, tag = requester(connection)
    request(ch, server.queue, b"hello", "c-1", headers={"h": 1}, content_type="text/plain")
    [(props, body)] = server.serve(1)
    name = props.reply_to
    assert name.startswith(R + ".") and len(name) > len(R) + 20
    # only reply_to is rewritten
    assert (body, props.correlation_id, props.headers, props.content_type) == (
        b"hello", "c-1", {"h": 1}, "text/plain")
    [got] = inbox.wait_for(1)
    assert got.body == b"HELLO" and got.properties.correlation_id == "c-1"
    assert got.properties.reply_to is None
    m = got.method
    assert (m.consumer_tag, m.exchange, m.routing_key, m.redelivered) == (tag, "", name, False)
    # the same channel keeps its name for the next request
    request(ch, server.queue, b"again", "c-2")
    assert server.serve(2)[1][0].reply_to == name
    assert inbox.wait_for(2)[1].body == b"AGAIN"


def test_aio_pika_rpc(hare_url: str) -> None:
    async def main() -> None:
        async with await aio_pika.connect(hare_url) as server_conn, \
                await aio_pika.connect(hare_url) as client_conn:
            server_ch = await server_conn.channel()
            requests = await server_ch.declare_queue("", exclusive=True)
            seen: set[str] = set()

            async def serve(message: AbstractIncomingMessage) -> None:
                assert message.reply_to is not None
                seen.add(message.reply_to)
                n = int(message.body)
                await server_ch.default_exchange.publish(
                    aio_pika.Message(str(n * n).encode(), correlation_id=message.correlation_id),
                    routing_key=message.reply_to)

            await requests.consume(serve, no_ack=True)

            client_ch = await client_conn.channel()
            replies = await client_ch.declare_queue(R)  # RabbitMQ answers declare-ok
            assert replies.name == R
            assert replies.declaration_result.consumer_count == 1
            futures: dict[str, asyncio.Future[bytes]] = {}

            async def on_reply(message: AbstractIncomingMessage) -> None:
                assert message.routing_key in seen and message.exchange == ""
                futures.pop(str(message.correlation_id)).set_result(message.body)

            await replies.consume(on_reply, no_ack=True)
            loop = asyncio.get_running_loop()

            async def call(n: int) -> int:
                cid = str(uuid.uuid4())
                futures[cid] = loop.create_future()
                await client_ch.default_exchange.publish(
                    aio_pika.Message(str(n).encode(), correlation_id=cid, reply_to=R), requests.name)
                return int(await asyncio.wait_for(futures[cid], TIMEOUT))

            results = await asyncio.gather(*(call(n) for n in range(50)))
            assert results == [n * n for n in range(50)]
            assert not futures
            assert len(seen) == 1 and next(iter(seen)).startswith(R + ".")

    run(main)


def test_many_concurrent_requests_from_several_channels(connection: BlockingConnection,
                                                        other_connection: BlockingConnection) -> None:
    server = Server(other_connection)
    clients = [requester(connection) for _ in range(3)]
    n = 100
    for i in range(n):
        for k, (ch, _, _) in enumerate(clients):
            request(ch, server.queue, b"req-%d-%d" % (k, i), f"{k}-{i}")
    requests = server.serve(3 * n)
    names = {k: {props.reply_to for props, body in requests if body.startswith(b"req-%d-" % k)}
             for k in range(3)}
    assert all(len(v) == 1 for v in names.values())
    assert len(set.union(*names.values())) == 3  # one name per channel
    for k, (_, inbox, tag) in enumerate(clients):
        got = inbox.wait_for(n)
        assert [d.properties.correlation_id for d in got] == [f"{k}-{i}" for i in range(n)]
        assert [d.body for d in got] == [b"REQ-%d-%d" % (k, i) for i in range(n)]
        assert {(d.method.consumer_tag, d.method.routing_key) for d in got} == {(tag, *names[k])}
    assert sum(len(inbox.quiet(0.2)) for _, inbox, _ in clients) == 3 * n  # nothing more


# -- replies that find no consumer ------------------------------------------------------------------


def test_reply_after_requester_channel_closed_is_dropped(connection: BlockingConnection,
                                                         other_connection: BlockingConnection) -> None:
    server = Server(other_connection, answer=False)
    ch, inbox, _ = requester(connection)
    request(ch, server.queue, b"late", "c")
    [(props, _)] = server.serve(1)
    ch.close()
    sch = server.ch
    sch.confirm_delivery()
    sch.basic_publish("", props.reply_to, b"dropped")  # confirmed (ack), no error
    with pytest.raises(UnroutableError) as info:  # mandatory: returned, as for an unknown queue
        sch.basic_publish("", props.reply_to, b"dropped", mandatory=True)
    [returned] = info.value.messages
    assert (returned.method.reply_code, returned.method.reply_text, returned.method.exchange,
            returned.method.routing_key) == (312, "NO_ROUTE", "", props.reply_to)
    assert sch.is_open
    assert inbox.quiet(0.2) == []
    err = closed_with(sch, sch.queue_declare, props.reply_to, passive=True)
    assert (err.reply_code, err.reply_text) == (404, f"NOT_FOUND - no queue '{props.reply_to}' in vhost '/'")


def test_mandatory_reply_is_returned_though_delivered(connection: BlockingConnection,
                                                      other_connection: BlockingConnection) -> None:
    """RabbitMQ 3.10 routes a reply to no queue: mandatory brings basic.return 312 as well."""
    _, inbox, _, name = reply_name(connection)
    sch = other_connection.channel()
    sch.confirm_delivery()
    with pytest.raises(UnroutableError) as info:
        sch.basic_publish("", name, b"reply", Props(correlation_id="m"), mandatory=True)
    assert info.value.messages[0].method.reply_code == 312
    [got] = inbox.wait_for(1)
    assert (got.body, got.properties.correlation_id) == (b"reply", "m")


def test_cancelled_reply_consumer(connection: BlockingConnection,
                                  other_connection: BlockingConnection) -> None:
    ch, inbox, tag, old = reply_name(connection)
    ch.basic_cancel(tag)
    sch = other_connection.channel()
    sch.confirm_delivery()
    sch.basic_publish("", old, b"to nobody")
    assert inbox.quiet(0.2) == []
    # a request wants a reply consumer again
    ch.confirm_delivery()
    err = closed_with(ch, request, ch, "anything", b"x")
    assert (err.reply_code, err.reply_text) == NO_CONSUMER
    # a new reply consumer has a new name; the old one stays dead
    _, inbox2, _, new = reply_name(connection)
    assert new != old and new.startswith(R + ".")
    sch.basic_publish("", old, b"old")
    sch.basic_publish("", new, b"new")
    assert [d.body for d in inbox2.wait_for(1)] == [b"new"]
    assert len(inbox2.quiet(0.2)) == 1


# -- errors -----------------------------------------------------------------------------------------


def test_reply_consumer_must_be_no_ack(channel: BlockingChannel) -> None:
    err = closed_with(channel, channel.basic_consume, R, lambda *a: None, auto_ack=False)
    assert (err.reply_code, err.reply_text) == (406, "PRECONDITION_FAILED - reply consumer cannot "
                                                     "acknowledge")


def test_one_reply_consumer_per_channel(connection: BlockingConnection) -> None:
    ch, _, _ = requester(connection)
    err = closed_with(ch, ch.basic_consume, R, lambda *a: None, auto_ack=True)
    assert (err.reply_code, err.reply_text) == (406, "PRECONDITION_FAILED - reply consumer already set")
    # other channels may have theirs
    requester(connection)


def test_request_needs_reply_consumer_on_its_channel(connection: BlockingConnection) -> None:
    requester(connection)  # another channel's consumer does not count
    ch = connection.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x", Props(reply_to=R + ".x"))  # other reply_to values are left alone
    ch.basic_publish("", q, b"x", Props(reply_to="amq.rabbitmq.reply-t"))
    err = closed_with(ch, ch.basic_publish, "", q, b"x", Props(reply_to=R))
    assert (err.reply_code, err.reply_text) == NO_CONSUMER


def test_consume_ok_tag_and_errors_raw(raw: RawClient) -> None:
    raw.send_method(1, spec.BasicConsume(queue=R, no_ack=True))
    ok = raw.expect(spec.BasicConsumeOk)
    assert isinstance(ok, spec.BasicConsumeOk) and ok.consumer_tag.startswith("amq.ctag-")
    raw.open_channel(2)
    raw.send_method(2, spec.BasicConsume(queue=R, consumer_tag="mine", no_ack=True))
    assert raw.expect(spec.BasicConsumeOk) == spec.BasicConsumeOk(consumer_tag="mine")
    raw.send_method(2, spec.BasicCancel(consumer_tag="mine"))
    assert raw.expect(spec.BasicCancelOk) == spec.BasicCancelOk(consumer_tag="mine")
    raw.send_method(2, spec.BasicConsume(queue=R, consumer_tag="again", no_ack=True, nowait=True))
    ping(raw, 2)
    # errors name basic.consume (60, 20); reusing a queue consumer's tag is the usual 530
    raw.send_method(2, spec.BasicConsume(queue=R, no_ack=False))
    assert raw.expect(spec.ChannelClose) == spec.ChannelClose(
        reply_code=406, reply_text="PRECONDITION_FAILED - reply consumer cannot acknowledge",
        class_id=60, method_id=20)
    raw.send_method(2, spec.ChannelCloseOk())
    raw.send_method(1, spec.QueueDeclare(queue="", exclusive=True))
    q = raw.expect(spec.QueueDeclareOk).queue  # type: ignore[attr-defined]
    raw.send_method(1, spec.BasicConsume(queue=q, consumer_tag="x"))
    raw.expect(spec.BasicConsumeOk)
    raw.send_method(1, spec.BasicConsume(queue=R, consumer_tag="x", no_ack=True))
    assert raw.expect(spec.ConnectionClose) == spec.ConnectionClose(
        reply_code=530, reply_text="NOT_ALLOWED - attempt to reuse consumer tag 'x'", class_id=60,
        method_id=20)


# -- queue operations on the names ------------------------------------------------------------------


def test_declare_pseudo_queue(channel: BlockingChannel) -> None:
    """Passive or not, whatever the flags, with or without a reply consumer: 0 messages, 1 consumer."""
    odd: dict[str, Any] = {"exclusive": True, "durable": True, "arguments": {"x-max-length": "x"}}
    for kwargs in ({"passive": True}, {}, odd):
        ok = channel.queue_declare(R, **kwargs).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (R, 0, 1)


def test_declare_reply_names(connection: BlockingConnection, other_connection: BlockingConnection) -> None:
    _, _, _, name = reply_name(connection)
    ch = other_connection.channel()
    for passive in (True, False):
        ok = ch.queue_declare(name, passive=passive).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (name, 0, 1)
    for bad in (name + "x", name[: name.rindex(".")] + ".AAAA", R + ".", R + ".nope", R + "x"):
        err = closed_with(ch, ch.queue_declare, bad, passive=True)
        assert (err.reply_code, err.reply_text) == (404, f"NOT_FOUND - no queue '{bad}' in vhost '/'")
        ch = other_connection.channel()
    err = closed_with(ch, ch.queue_declare, "amq.rabbitmq.reply-t")
    assert err.reply_code == 403


@hare_only
def test_declare_own_reply_name_on_its_channel_is_answered(raw: RawClient) -> None:
    """DIFFERENCE: RabbitMQ's channel asks itself whether the name is live and crashes
    (connection.close 541 INTERNAL_ERROR); hare answers declare-ok, as on any other channel."""
    raw.send_method(1, spec.BasicConsume(queue=R, consumer_tag="r", no_ack=True))
    raw.expect(spec.BasicConsumeOk)
    raw.open_channel(2)
    raw.send_method(2, spec.QueueDeclare(queue="", exclusive=True))
    q = raw.expect(spec.QueueDeclareOk).queue  # type: ignore[attr-defined]
    raw.publish(1, "", q, b"x", {"reply_to": R})
    raw.send_method(2, spec.BasicGet(queue=q, no_ack=True))
    raw.expect(spec.BasicGetOk)
    name = decode_properties(raw.read_content()[0])["reply_to"]
    raw.send_method(2, spec.QueueDeclare(queue=name, passive=True))  # another channel: fine
    assert raw.expect(spec.QueueDeclareOk) == spec.QueueDeclareOk(queue=name, message_count=0,
                                                                   consumer_count=1)
    raw.send_method(1, spec.QueueDeclare(queue=name, passive=True))
    assert raw.expect(spec.QueueDeclareOk) == spec.QueueDeclareOk(queue=name, message_count=0,
                                                                   consumer_count=1)


@pytest.mark.parametrize("which", ["pseudo", "name"])
def test_other_queue_operations(connection: BlockingConnection, which: str) -> None:
    """No queue stands behind the names: get, consume (of a name), bind and purge find none;
    unbind and delete, of a queue that does not exist, succeed."""
    _, _, _, name = reply_name(connection)
    qn = R if which == "pseudo" else name
    missing = f"NOT_FOUND - no queue '{qn}' in vhost '/'"
    ops: list[tuple[str, Any]] = [
        ("get", lambda ch: ch.basic_get(qn)),
        ("bind", lambda ch: ch.queue_bind(qn, "amq.direct", "k")),
        ("purge", lambda ch: ch.queue_purge(qn)),
    ]
    if which == "name":
        ops.append(("consume", lambda ch: ch.basic_consume(qn, lambda *a: None, auto_ack=True)))
    for _what, op in ops:
        ch = connection.channel()
        err = closed_with(ch, op, ch)
        assert (err.reply_code, err.reply_text) == (404, missing)
    ch = connection.channel()
    ch.queue_unbind(qn, "amq.direct", "k")
    assert ch.queue_delete(qn).method.message_count == 0
    ok = ch.queue_declare(qn, passive=True).method  # still there
    assert ok.consumer_count == 1


# -- how replies travel -----------------------------------------------------------------------------


def test_reply_by_cc_header_keeps_the_publish_routing_key(connection: BlockingConnection,
                                                          other_connection: BlockingConnection) -> None:
    _, inbox, _, name = reply_name(connection)
    sch = other_connection.channel()
    key = unique_name("no-such-queue")
    sch.basic_publish("", key, b"cc", Props(headers={"CC": [name]}))
    [got] = inbox.wait_for(1)
    assert (got.body, got.method.exchange, got.method.routing_key) == (b"cc", "", key)


def test_reply_in_transaction_is_delivered_at_publish(connection: BlockingConnection,
                                                      other_connection: BlockingConnection) -> None:
    """RabbitMQ routes a transactional publish when it arrives: the reply goes out then."""
    _, inbox, _, name = reply_name(connection)
    sch = other_connection.channel()
    sch.tx_select()
    sch.basic_publish("", name, b"tx")
    other_connection.process_data_events(time_limit=0.05)
    assert [d.body for d in inbox.wait_for(1)] == [b"tx"]
    sch.tx_commit()
    assert len(inbox.quiet(0.2)) == 1


def test_reply_delivery_tags_raw(raw: RawClient) -> None:
    """As RabbitMQ 3.10: a reply carries the channel's next delivery tag without taking it."""
    raw.open_channel(2)
    raw.send_method(1, spec.BasicConsume(queue=R, consumer_tag="r", no_ack=True))
    raw.expect(spec.BasicConsumeOk)
    raw.send_method(1, spec.QueueDeclare(queue="", exclusive=True))
    q = raw.expect(spec.QueueDeclareOk).queue  # type: ignore[attr-defined]
    raw.publish(1, "", q, b"request", {"reply_to": R})
    raw.send_method(2, spec.BasicGet(queue=q, no_ack=True))
    raw.expect(spec.BasicGetOk)
    name = decode_properties(raw.read_content()[0])["reply_to"]
    raw.send_method(1, spec.BasicConsume(queue=q, consumer_tag="q", no_ack=True))
    raw.expect(spec.BasicConsumeOk)
    raw.publish(2, "", name, b"r1")
    raw.publish(2, "", name, b"r2")
    got = raw_deliveries(raw, 2)
    raw.publish(2, "", q, b"m1")
    got += raw_deliveries(raw, 1)
    raw.publish(2, "", name, b"r3")
    got += raw_deliveries(raw, 1)
    got = [(m.consumer_tag, m.delivery_tag, m.exchange, m.routing_key, body) for m, body in got]
    assert got == [("r", 1, "", name, b"r1"), ("r", 1, "", name, b"r2"), ("q", 1, "", q, b"m1"),
                   ("r", 2, "", name, b"r3")]
