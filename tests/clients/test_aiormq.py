"""aiormq, the low-level asyncio client under aio-pika, unchanged: handshake (it reads the server's
capabilities table), confirms, consume, get, acks, queue/exchange methods and typed channel errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiormq
import aiormq.abc
import pytest
from aiormq import spec
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)
from support import run, unique_name

TIMEOUT = 5.0


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[aiormq.abc.AbstractConnection]:
    conn = await aiormq.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


def test_connect_reads_capabilities_and_publish_confirm_get_ack(hare_url: str) -> None:
    async def main() -> None:
        async with connect(hare_url) as conn:
            caps = conn.server_capabilities
            assert conn.publisher_confirms is True
            assert conn.basic_nack and conn.consumer_cancel_notify and conn.exchange_exchange_bindings
            assert caps["per_consumer_qos"] is True and caps["authentication_failure_close"] is True
            assert conn.connection_tune.frame_max == 131072
            assert conn.connection_tune.channel_max == 2047
            ch = await conn.channel()
            declare_ok = await ch.queue_declare("", exclusive=True)
            q = declare_ok.queue
            assert q.startswith("amq.gen-") and declare_ok.message_count == 0
            props = spec.Basic.Properties(content_type="application/json", headers={"a": 1},
                                          delivery_mode=2, message_id="m1")
            confirm = await ch.basic_publish(b'{"x": 1}', routing_key=q, properties=props)
            assert isinstance(confirm, spec.Basic.Ack) and confirm.delivery_tag == 1
            confirm = await ch.basic_publish(b"second", routing_key=q)
            assert isinstance(confirm, spec.Basic.Ack) and confirm.delivery_tag == 2

            msg = await ch.basic_get(q)
            assert isinstance(msg.delivery, spec.Basic.GetOk)
            assert (msg.body, msg.delivery.delivery_tag, msg.delivery.message_count) == (b'{"x": 1}', 1, 1)
            assert (msg.delivery.exchange, msg.delivery.routing_key, msg.delivery.redelivered) == ("", q,
                                                                                                   False)
            p = msg.header.properties
            assert (p.content_type, p.headers, p.delivery_mode, p.message_id) == (
                "application/json", {"a": 1}, 2, "m1")
            await ch.basic_ack(msg.delivery.delivery_tag)
            msg = await ch.basic_get(q, no_ack=True)
            assert (msg.body, msg.delivery.message_count) == (b"second", 0)
            empty = await ch.basic_get(q)
            assert isinstance(empty.delivery, spec.Basic.GetEmpty)
            await ch.close()
            assert ch.is_closed

    run(main)


def test_consume_ack_nack_reject(hare_url: str) -> None:
    async def main() -> None:
        async with connect(hare_url) as conn:
            ch = await conn.channel()
            q = (await ch.queue_declare("", exclusive=True)).queue
            for i in range(5):
                await ch.basic_publish(b"c%d" % i, routing_key=q)
            await ch.basic_qos(prefetch_count=10)
            inbox: asyncio.Queue[aiormq.abc.DeliveredMessage] = asyncio.Queue()

            async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
                await inbox.put(message)

            consume_ok = await ch.basic_consume(q, on_message)
            tag = consume_ok.consumer_tag
            got = [await asyncio.wait_for(inbox.get(), TIMEOUT) for _ in range(5)]
            assert [m.body for m in got] == [b"c%d" % i for i in range(5)]
            assert [m.delivery.delivery_tag for m in got] == [1, 2, 3, 4, 5]
            assert {m.delivery.consumer_tag for m in got} == {tag}
            await ch.basic_ack(2, multiple=True)  # c0, c1
            await ch.basic_nack(3, requeue=True)  # c2 comes back
            again = await asyncio.wait_for(inbox.get(), TIMEOUT)
            assert (again.body, again.delivery.redelivered, again.delivery.delivery_tag) == (b"c2", True, 6)
            await ch.basic_reject(4, requeue=False)  # c3 dropped
            await ch.basic_nack(0, multiple=True, requeue=False)  # c4 and the redelivered c2 dropped
            await ch.basic_cancel(tag)
            ok = await ch.queue_declare(q, passive=True)
            assert (ok.message_count, ok.consumer_count) == (0, 0)

            # basic.recover requeues what is unacked
            await ch.basic_publish(b"recover-me", routing_key=q)
            msg = await ch.basic_get(q)
            assert msg.body == b"recover-me"
            await ch.basic_recover(requeue=True)
            msg = await ch.basic_get(q, no_ack=True)
            assert (msg.body, msg.delivery.redelivered) == (b"recover-me", True)

    run(main)


def test_exchange_and_queue_methods_with_exchange_bind(hare_url: str) -> None:
    src, dst, fan = unique_name("src"), unique_name("dst"), unique_name("fan")

    async def main() -> None:
        async with connect(hare_url) as conn:
            ch = await conn.channel()
            assert isinstance(await ch.exchange_declare(src, exchange_type="topic"), spec.Exchange.DeclareOk)
            await ch.exchange_declare(dst, exchange_type="direct")
            await ch.exchange_declare(fan, exchange_type="fanout", auto_delete=True)
            q1 = (await ch.queue_declare("", exclusive=True)).queue
            q2 = (await ch.queue_declare("", exclusive=True)).queue
            assert isinstance(await ch.exchange_bind(dst, src, routing_key="a.#"), spec.Exchange.BindOk)
            await ch.queue_bind(q1, dst, routing_key="a.b")
            await ch.exchange_bind(fan, src, routing_key="#")
            await ch.queue_bind(q2, fan)
            for rk in ("a.b", "a.c", "z"):
                await ch.basic_publish(rk.encode(), exchange=src, routing_key=rk)
            assert (await ch.queue_declare(q1, passive=True)).message_count == 1  # a.b only
            assert (await ch.queue_declare(q2, passive=True)).message_count == 3
            assert isinstance(await ch.exchange_unbind(dst, src, routing_key="a.#"), spec.Exchange.UnbindOk)
            await ch.basic_publish(b"a.b", exchange=src, routing_key="a.b")
            assert (await ch.queue_declare(q1, passive=True)).message_count == 1
            assert isinstance(await ch.queue_unbind(q2, fan), spec.Queue.UnbindOk)
            await ch.basic_publish(b"z", exchange=src, routing_key="z")
            assert (await ch.queue_declare(q2, passive=True)).message_count == 4
            purge = await ch.queue_purge(q2)
            assert purge.message_count == 4
            delete = await ch.queue_delete(q1)
            assert delete.message_count == 1
            assert isinstance(await ch.exchange_delete(dst), spec.Exchange.DeleteOk)
            await ch.exchange_delete(src)
            await ch.exchange_delete(fan)
            with pytest.raises(ChannelNotFoundEntity):
                await ch.exchange_declare(src, exchange_type="topic", passive=True)

    run(main)


def test_large_message_spans_frames(hare_url: str) -> None:
    body = bytes(range(256)) * 1200  # 307200 bytes: three body frames at frame_max 131072

    async def main() -> None:
        async with connect(hare_url) as conn:
            ch = await conn.channel()
            q = (await ch.queue_declare("", exclusive=True)).queue
            await ch.basic_publish(body, routing_key=q)
            got: asyncio.Future[aiormq.abc.DeliveredMessage] = asyncio.get_running_loop().create_future()

            async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
                got.set_result(message)

            await ch.basic_consume(q, on_message, no_ack=True)
            message = await asyncio.wait_for(got, TIMEOUT)
            assert message.body == body
            assert message.header.body_size == len(body)

    run(main)


def test_empty_and_frame_boundary_bodies(hare_url: str) -> None:
    async def main() -> None:
        async with connect(hare_url) as conn:
            ch = await conn.channel()
            q = (await ch.queue_declare("", exclusive=True)).queue
            frame_body = conn.connection_tune.frame_max - 8  # the most one body frame carries
            sizes = [0, 1, frame_body - 1, frame_body, frame_body + 1, 2 * frame_body, 2 * frame_body + 1]
            for i, size in enumerate(sizes):
                await ch.basic_publish(bytes([i]) * size, routing_key=q)
            for i, size in enumerate(sizes):
                msg = await ch.basic_get(q, no_ack=True)
                assert msg.header.body_size == size
                assert msg.body == bytes([i]) * size

    run(main)


def test_channel_errors_map_to_typed_exceptions(hare_url: str) -> None:
    qn, xn = unique_name("aiormq"), unique_name("x")

    async def main() -> None:
        async with connect(hare_url) as conn, connect(hare_url) as other:
            ch = await conn.channel()
            with pytest.raises(ChannelNotFoundEntity) as info:
                await ch.queue_declare(qn, passive=True)
            assert info.value.args[0] == f"NOT_FOUND - no queue '{qn}' in vhost '/'"
            assert ch.is_closed

            ch = await conn.channel()
            await ch.queue_declare(qn, exclusive=True)
            with pytest.raises(ChannelPreconditionFailed) as info:
                await ch.queue_declare(qn, exclusive=True, arguments={"x-max-length": 2**40})
            assert info.value.args[0] == (f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for "
                                          f"queue '{qn}' in vhost '/': received the value "
                                          f"'{2**40}' of type 'long' but current is none")

            och = await other.channel()
            with pytest.raises(ChannelLockedResource) as info:
                await och.queue_declare(qn, passive=True)
            assert info.value.args[0] == (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked "
                                          f"queue '{qn}' in vhost '/'. It could be originally declared "
                                          "on another connection or the exclusive property value does "
                                          "not match that of the original declaration.")

            ch = await conn.channel()
            with pytest.raises(ChannelAccessRefused) as info:
                await ch.exchange_declare("amq.mine", exchange_type="direct")
            assert info.value.args[0] == ("ACCESS_REFUSED - exchange name 'amq.mine' contains reserved "
                                          "prefix 'amq.*'")

            ch = await conn.channel()
            await ch.exchange_declare(xn, exchange_type="fanout")
            await ch.queue_bind(qn, xn)
            with pytest.raises(ChannelPreconditionFailed) as info:
                await ch.exchange_delete(xn, if_unused=True)
            assert info.value.args[0] == f"PRECONDITION_FAILED - exchange '{xn}' in vhost '/' in use"
            ch = await conn.channel()
            await ch.exchange_delete(xn)

            # an ack of an unknown tag closes the channel asynchronously
            ch = await conn.channel()
            await ch.basic_ack(99)
            with pytest.raises(ChannelPreconditionFailed) as info:
                await ch.queue_declare("", exclusive=True)
            assert info.value.args[0] == "PRECONDITION_FAILED - unknown delivery tag 99"
            assert ch.is_closed
            assert not conn.is_closed

    run(main)
