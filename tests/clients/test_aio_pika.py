"""aio-pika, unchanged: plain and robust connections, confirms, consumers, get, QoS, returns, RPC,
transactions, channel errors and the round trip of message properties."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from decimal import Decimal
from typing import Any

import aio_pika
import aiormq
import pytest
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import (
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
    QueueEmpty,
)
from support import run, unique_name

TIMEOUT = 5.0


async def count(channel: aio_pika.abc.AbstractChannel, queue: str) -> tuple[int, int]:
    underlay = await channel.get_underlay_channel()  # robust channels cache passive declares
    ok = await underlay.queue_declare(queue, passive=True)
    return ok.message_count, ok.consumer_count


def test_plain_connection_declare_bind_publish_confirmed_and_iterate(hare_url: str) -> None:
    qn, xn = unique_name("aiopika"), unique_name("x")

    async def main() -> None:
        async with await aio_pika.connect(hare_url) as conn:
            ch = await conn.channel()
            assert ch.publisher_confirms
            ex = await ch.declare_exchange(xn, ExchangeType.TOPIC, auto_delete=True)
            q = await ch.declare_queue(qn, exclusive=True)
            assert q.declaration_result.queue == qn
            await q.bind(ex, "orders.*")
            for i in range(5):
                ok = await ex.publish(Message(b"order-%d" % i, message_id=str(i)), f"orders.{i}")
                assert isinstance(ok, aiormq.spec.Basic.Ack)
            ok = await ex.publish(Message(b"other"), "invoices.1", mandatory=False)  # dropped
            assert isinstance(ok, aiormq.spec.Basic.Ack)
            assert await count(ch, qn) == (5, 0)
            got = []
            async with q.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append((message.body, message.routing_key, message.message_id,
                                    message.exchange, message.redelivered))
                    if len(got) == 5:
                        break
            assert got == [(b"order-%d" % i, f"orders.{i}", str(i), xn, False) for i in range(5)]
            assert await count(ch, qn) == (0, 0)
            await q.unbind(ex, "orders.*")
            await q.delete()
            # an auto-delete exchange goes away with its last binding
            with pytest.raises(ChannelNotFoundEntity):
                await ch.get_exchange(xn)

    run(main)


def test_robust_connection_consume_callback_with_qos(hare_url: str) -> None:
    qn = unique_name("aiopika")

    async def main() -> None:
        conn = await aio_pika.connect_robust(hare_url)
        async with conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=2)
            q = await ch.declare_queue(qn, exclusive=True)
            for i in range(6):
                await ch.default_exchange.publish(Message(b"%d" % i), qn)
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

            async def on_message(message: AbstractIncomingMessage) -> None:
                await inbox.put(message)

            tag = await q.consume(on_message)
            first = [await asyncio.wait_for(inbox.get(), TIMEOUT) for _ in range(2)]
            await asyncio.sleep(0.2)
            assert inbox.qsize() == 0  # prefetch 2: nothing more until an ack
            assert await count(ch, qn) == (4, 1)
            await first[0].ack()
            third = await asyncio.wait_for(inbox.get(), TIMEOUT)
            await first[1].ack()
            await third.ack()
            rest = []
            for _ in range(3):
                rest.append(await asyncio.wait_for(inbox.get(), TIMEOUT))
                await rest[-1].ack()
            assert [m.body for m in first + [third] + rest] == [b"%d" % i for i in range(6)]
            assert [m.delivery_tag for m in first + [third] + rest] == list(range(1, 7))
            await q.cancel(tag)
            assert await count(ch, qn) == (0, 0)
        assert conn.is_closed

    run(main)


def test_robust_connection_reconnects_and_restores_consumer(hare_url: str) -> None:
    qn = unique_name("aiopika")

    async def main() -> None:
        conn = await aio_pika.connect_robust(hare_url, reconnect_interval=0.1)
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue(qn, auto_delete=True)
            inbox: asyncio.Queue[bytes] = asyncio.Queue()

            async def on_message(message: AbstractIncomingMessage) -> None:
                async with message.process():
                    await inbox.put(message.body)

            await q.consume(on_message)
            await ch.default_exchange.publish(Message(b"before"), qn)
            assert await asyncio.wait_for(inbox.get(), TIMEOUT) == b"before"
            reconnected = asyncio.Event()
            conn.reconnect_callbacks.add(lambda *_: reconnected.set())
            # channel.flow(active=false) is a connection error (540) on RabbitMQ: the broker closes
            # the connection, and the robust connection must reconnect and restore everything
            with pytest.raises(aiormq.exceptions.ConnectionNotImplemented):
                await ch.flow(active=False)
            await asyncio.wait_for(reconnected.wait(), TIMEOUT)
            await asyncio.wait_for(ch.ready(), TIMEOUT)
            await ch.default_exchange.publish(Message(b"after"), qn)
            assert await asyncio.wait_for(inbox.get(), TIMEOUT) == b"after"
            assert await count(ch, qn) == (0, 1)  # the queue and its consumer came back

    run(main)


def test_iterator_exit_requeues_prefetched_messages(hare_url: str) -> None:
    async def main() -> None:
        async with await aio_pika.connect(hare_url) as conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=5)
            q = await ch.declare_queue("", exclusive=True)
            for i in range(10):
                await ch.default_exchange.publish(Message(b"%d" % i), q.name)
            got = []
            async with q.iterator() as it:
                async for message in it:
                    await message.ack()
                    got.append(message.body)
                    if len(got) == 2:
                        break
            assert got == [b"0", b"1"]
            # the iterator cancelled its consumer and requeued what it had prefetched, in order
            m = await q.get(timeout=TIMEOUT)
            assert (m.body, m.redelivered) == (b"2", True)
            await m.ack()
            assert await count(ch, q.name) == (7, 0)

    run(main)


def test_process_context_acks_and_rejects(hare_url: str) -> None:
    qn = unique_name("aiopika")

    async def main() -> None:
        async with await aio_pika.connect(hare_url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(qn, exclusive=True)
            await ch.default_exchange.publish(Message(b"fail-then-requeue"), qn)
            msg = await q.get(timeout=TIMEOUT)
            with pytest.raises(RuntimeError):
                async with msg.process(requeue=True):
                    raise RuntimeError("boom")
            again = await q.get(timeout=TIMEOUT)
            assert (again.body, again.redelivered) == (b"fail-then-requeue", True)
            with pytest.raises(RuntimeError):
                async with again.process(requeue=False):
                    raise RuntimeError("boom")
            assert await count(ch, qn) == (0, 0)
            await ch.default_exchange.publish(Message(b"ok"), qn)
            ok = await q.get(timeout=TIMEOUT)
            async with ok.process():
                assert ok.body == b"ok"
            assert ok.processed
            assert await count(ch, qn) == (0, 0)
            # reject_on_redelivered: first failure requeues, the redelivery is dropped
            await ch.default_exchange.publish(Message(b"r"), qn)
            for expected_redelivered in (False, True):
                m = await q.get(timeout=TIMEOUT)
                assert m.redelivered is expected_redelivered
                with pytest.raises(ValueError):
                    async with m.process(requeue=True, reject_on_redelivered=True):
                        raise ValueError
            assert await count(ch, qn) == (0, 0)

    run(main)


def test_get_counts_nack_and_empty(hare_url: str) -> None:
    qn = unique_name("aiopika")

    async def main() -> None:
        async with await aio_pika.connect(hare_url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(qn, exclusive=True)
            for i in range(3):
                await ch.default_exchange.publish(Message(b"g%d" % i), qn)
            m1 = await q.get(timeout=TIMEOUT)
            assert (m1.body, m1.message_count, m1.delivery_tag, m1.routing_key) == (b"g0", 2, 1, qn)
            await m1.nack(requeue=True)
            m2 = await q.get(timeout=TIMEOUT)
            assert (m2.body, m2.redelivered, m2.message_count) == (b"g0", True, 2)
            await m2.ack()
            m3 = await q.get(no_ack=True, timeout=TIMEOUT)
            assert (m3.body, m3.message_count) == (b"g1", 1)
            m4 = await q.get(timeout=TIMEOUT)
            await m4.reject(requeue=False)
            assert await q.get(fail=False, timeout=TIMEOUT) is None
            with pytest.raises(QueueEmpty):
                await q.get(timeout=TIMEOUT)
            assert await count(ch, qn) == (0, 0)
            assert await q.purge() is not None

    run(main)


def test_mandatory_returns(hare_url: str) -> None:
    async def main() -> None:
        async with await aio_pika.connect(hare_url) as conn:
            raising = await conn.channel(on_return_raises=True)
            with pytest.raises(PublishError) as info:
                await raising.default_exchange.publish(Message(b"lost"), unique_name("nowhere"))
            assert isinstance(info.value, DeliveryError)
            assert info.value.message.body == b"lost"
            assert info.value.frame.reply_code == 312 and info.value.frame.reply_text == "NO_ROUTE"

            ch = await conn.channel()
            returned: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            ch.return_callbacks.add(lambda _ch, message: returned.set_result(message))
            rk = unique_name("nowhere")
            result = await ch.default_exchange.publish(
                Message(b"back", headers={"k": "v"}, correlation_id="c1"), rk)
            assert isinstance(result, aiormq.abc.DeliveredMessage)
            message = await asyncio.wait_for(returned, TIMEOUT)
            assert (message.body, message.routing_key, message.headers, message.correlation_id) == (
                b"back", rk, {"k": "v"}, "c1")
            # not mandatory: dropped silently and acked
            ok = await ch.default_exchange.publish(Message(b"drop"), rk, mandatory=False)
            assert isinstance(ok, aiormq.spec.Basic.Ack)
            # the channels are still fine
            await raising.declare_queue("", exclusive=True)

    run(main)


def test_rpc_with_exclusive_reply_queue_and_correlation_id(hare_url: str) -> None:
    rpc_queue = unique_name("rpc")

    async def main() -> None:
        async with await aio_pika.connect(hare_url) as server_conn, \
                await aio_pika.connect(hare_url) as client_conn:
            server_ch = await server_conn.channel()
            requests = await server_ch.declare_queue(rpc_queue, auto_delete=True)

            async def serve(message: AbstractIncomingMessage) -> None:
                async with message.process():
                    n = int(message.body)
                    await server_ch.default_exchange.publish(
                        Message(str(n * n).encode(), correlation_id=message.correlation_id),
                        routing_key=message.reply_to)

            await requests.consume(serve)

            client_ch = await client_conn.channel()
            replies = await client_ch.declare_queue("", exclusive=True)
            assert replies.name.startswith("amq.gen-")
            futures: dict[str, asyncio.Future[bytes]] = {}

            async def on_reply(message: AbstractIncomingMessage) -> None:
                await message.ack()
                futures.pop(message.correlation_id).set_result(message.body)

            await replies.consume(on_reply)
            loop = asyncio.get_running_loop()

            async def call(n: int) -> int:
                cid = str(uuid.uuid4())
                futures[cid] = loop.create_future()
                await client_ch.default_exchange.publish(
                    Message(str(n).encode(), correlation_id=cid, reply_to=replies.name), rpc_queue)
                return int(await asyncio.wait_for(futures[cid], TIMEOUT))

            results = await asyncio.gather(*(call(n) for n in range(10)))
            assert results == [n * n for n in range(10)]
            assert not futures

    run(main)


def test_transactions_commit_and_rollback(hare_url: str) -> None:
    qn = unique_name("aiopika")

    async def main() -> None:
        async with await aio_pika.connect(hare_url) as conn:
            ch = await conn.channel(publisher_confirms=False)
            q = await ch.declare_queue(qn, exclusive=True)
            async with ch.transaction():
                for i in range(3):
                    assert await ch.default_exchange.publish(Message(b"t%d" % i), qn) is None
                assert await count(ch, qn) == (0, 0)  # not before commit
            assert await count(ch, qn) == (3, 0)

            tx = ch.transaction()
            await tx.select()
            await ch.default_exchange.publish(Message(b"rolled-back"), qn)
            m = await q.get(timeout=TIMEOUT)
            await m.ack()
            await tx.rollback()
            # the publish is gone; the ack was discarded, so t0 is still unacked
            assert await count(ch, qn) == (2, 0)
            await (await ch.get_underlay_channel()).basic_ack(m.delivery_tag)  # again, committed
            await tx.commit()
            assert await count(ch, qn) == (2, 0)
            assert [(await q.get(no_ack=True, timeout=TIMEOUT)).body for _ in range(2)] == [b"t1", b"t2"]

            with pytest.raises(RuntimeError):
                (await conn.channel()).transaction()  # aio-pika: not with publisher confirms

    run(main)


def test_channel_errors_raise_typed_exceptions(hare_url: str) -> None:
    qn, xn = unique_name("aiopika"), unique_name("x")

    async def main() -> None:
        async with await aio_pika.connect(hare_url) as conn:
            ch = await conn.channel()
            with pytest.raises(ChannelNotFoundEntity) as info:
                await ch.declare_queue(qn, passive=True)
            assert info.value.args[0] == f"NOT_FOUND - no queue '{qn}' in vhost '/'"
            assert ch.is_closed

            ch = await conn.channel()
            with pytest.raises(ChannelNotFoundEntity) as info:
                await ch.get_exchange(xn)
            assert info.value.args[0] == f"NOT_FOUND - no exchange '{xn}' in vhost '/'"

            ch = await conn.channel()
            await ch.declare_exchange(xn, ExchangeType.FANOUT, auto_delete=True)
            with pytest.raises(ChannelPreconditionFailed) as info:
                await ch.declare_exchange(xn, ExchangeType.DIRECT, auto_delete=True)
            assert info.value.args[0] == (f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange "
                                          f"'{xn}' in vhost '/': received 'direct' but current is "
                                          f"'fanout'")
            ch = await conn.channel()
            await ch.exchange_delete(xn)
            # publish to a missing exchange: the channel closes and the confirm fails
            with pytest.raises(ChannelNotFoundEntity) as info:
                await _publish_to(ch, xn)
            assert info.value.args[0] == f"NOT_FOUND - no exchange '{xn}' in vhost '/'"
            assert not conn.is_closed

    run(main)


async def _publish_to(ch: aio_pika.abc.AbstractChannel, exchange: str) -> None:
    underlay = await ch.get_underlay_channel()
    await underlay.basic_publish(b"x", exchange=exchange, routing_key="k")


def test_headers_and_properties_round_trip(hare_url: str) -> None:
    qn = unique_name("aiopika")
    ts = datetime.datetime(2024, 5, 17, 12, 30, 45, tzinfo=datetime.UTC)
    headers = {
        "str": "text ünïcode",
        "int": 42,
        "negative": -7,
        "big": 2**40,
        "float": 1.5,
        "true": True,
        "false": False,
        "bytes": bytearray(b"\x00\x01raw"),
        "none": None,
        "list": [1, "two", 3.0, [4]],
        "nested": {"a": {"b": "c"}, "n": 1},
        "decimal": Decimal("3.14"),
        "when": ts,
    }

    async def main() -> None:
        async with await aio_pika.connect(hare_url) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(qn, exclusive=True, arguments={"x-max-priority": 10})
            sent = Message(
                b"\x00binary\xffbody" * 1000, headers=headers, content_type="application/octet-stream",
                content_encoding="gzip", delivery_mode=DeliveryMode.PERSISTENT, priority=7,
                correlation_id="corr-1", reply_to="replies", expiration=60, message_id="mid-1",
                timestamp=ts, type="event.created", user_id="guest", app_id="hare-tests")
            await ch.default_exchange.publish(sent, qn)
            got = await q.get(timeout=TIMEOUT)
            await got.ack()
            assert got.body == sent.body
            assert got.headers == headers
            assert got.content_type == "application/octet-stream"
            assert got.content_encoding == "gzip"
            assert got.delivery_mode == DeliveryMode.PERSISTENT
            assert got.priority == 7
            assert got.correlation_id == "corr-1"
            assert got.reply_to == "replies"
            assert got.expiration == 60
            assert got.message_id == "mid-1"
            assert got.timestamp == ts
            assert got.type == "event.created"
            assert got.user_id == "guest"
            assert got.app_id == "hare-tests"
            # a user_id other than the connection's is refused
            with pytest.raises(ChannelPreconditionFailed) as info:
                await ch.default_exchange.publish(Message(b"x", user_id="mallory"), qn)
            assert info.value.args[0] == ("PRECONDITION_FAILED - user_id property set to 'mallory' but "
                                          "authenticated user was 'guest'")

    run(main)
