"""pika's callback adapters, unchanged: AsyncioConnection (on an asyncio loop) and SelectConnection.

Each callback chain is turned into awaitables with small futures so the tests read top to bottom.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pika
import pytest
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByClient
from pika.spec import Basic, BasicProperties
from support import run, unique_name

TIMEOUT = 5.0


class Conn:
    """An AsyncioConnection on the running loop, with awaitable helpers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.get_running_loop()
        self.conn: AsyncioConnection = None  # type: ignore[assignment]
        self.closed: asyncio.Future[BaseException] = self.loop.create_future()

    async def open(self) -> Conn:
        opened: asyncio.Future[AsyncioConnection] = self.loop.create_future()

        def on_close(_c: Any, exc: BaseException) -> None:
            if not self.closed.done():
                self.closed.set_result(exc)

        self.conn = AsyncioConnection(
            pika.URLParameters(self.url),
            on_open_callback=lambda c: opened.set_result(c),
            on_open_error_callback=lambda _c, e: opened.set_exception(e),
            on_close_callback=on_close,
            custom_ioloop=self.loop)
        await asyncio.wait_for(opened, TIMEOUT)
        return self

    async def channel(self) -> Chan:
        fut: asyncio.Future[Channel] = self.loop.create_future()
        self.conn.channel(on_open_callback=fut.set_result)
        return Chan(await asyncio.wait_for(fut, TIMEOUT))

    async def close(self) -> BaseException:
        if self.conn.is_open:
            self.conn.close()
        return await asyncio.wait_for(self.closed, TIMEOUT)


class Chan:
    def __init__(self, ch: Channel) -> None:
        self.ch = ch
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[BaseException] = self.loop.create_future()
        self.acks: list[tuple[str, int, bool]] = []
        self.ack_event = asyncio.Event()
        ch.add_on_close_callback(self._on_close)

    def _on_close(self, _ch: Channel, exc: BaseException) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a pika method taking a ``callback`` keyword; await the frame it passes."""
        fut: asyncio.Future[Any] = self.loop.create_future()

        def done(frame: Any) -> None:
            if not fut.done():
                fut.set_result(frame)

        fn(*args, callback=done, **kwargs)
        waiter = asyncio.ensure_future(asyncio.wait([fut, self.closed], timeout=TIMEOUT,
                                                    return_when=asyncio.FIRST_COMPLETED))
        await waiter
        if fut.done():
            return fut.result()
        if self.closed.done():
            raise self.closed.result()
        raise TimeoutError(f"no reply to {fn.__name__}")

    async def confirm(self) -> None:
        def on_confirm(frame: Any) -> None:
            m = frame.method
            self.acks.append((m.NAME, m.delivery_tag, m.multiple))
            self.ack_event.set()

        fut: asyncio.Future[Any] = self.loop.create_future()
        self.ch.confirm_delivery(on_confirm, callback=fut.set_result)
        await asyncio.wait_for(fut, TIMEOUT)

    async def confirmed(self, n: int) -> int:
        """Wait until publishes 1..n are confirmed; return how many acks frames came."""
        async def wait() -> None:
            while True:
                upto = max((tag for _, tag, _ in self.acks), default=0)
                if upto >= n:
                    return
                self.ack_event.clear()
                await self.ack_event.wait()

        await asyncio.wait_for(wait(), TIMEOUT)
        return len(self.acks)


def test_asyncio_connection_confirmed_publish_and_consume_with_ack(hare_url: str) -> None:
    name = unique_name("pika-aio")

    async def main() -> None:
        c = await Conn(hare_url).open()
        caps = c.conn.server_capabilities
        assert caps["publisher_confirms"] is True and caps["basic.nack"] is True
        ch = await c.channel()
        ok = await ch.call(ch.ch.queue_declare, name, auto_delete=False)
        assert ok.method.queue == name and ok.method.message_count == 0
        await ch.confirm()
        props = BasicProperties(content_type="text/plain", delivery_mode=2, headers={"n": 1},
                                correlation_id="corr", message_id="m-1")
        for i in range(10):
            ch.ch.basic_publish("", name, b"msg-%d" % i, props)
        await ch.confirmed(10)
        assert all(kind == "Basic.Ack" for kind, _, _ in ch.acks)
        ok = await ch.call(ch.ch.queue_declare, name, passive=True)
        assert ok.method.message_count == 10

        got: list[tuple[bytes, BasicProperties, Basic.Deliver]] = []
        all_in = asyncio.Event()

        def on_message(chan: Channel, method: Basic.Deliver, properties: BasicProperties,
                       body: bytes) -> None:
            got.append((body, properties, method))
            chan.basic_ack(method.delivery_tag)
            if len(got) == 10:
                all_in.set()

        await ch.call(ch.ch.basic_qos, prefetch_count=3)
        tag = ch.ch.basic_consume(name, on_message)
        await asyncio.wait_for(all_in.wait(), TIMEOUT)
        assert [b for b, _, _ in got] == [b"msg-%d" % i for i in range(10)]
        assert [m.delivery_tag for _, _, m in got] == list(range(1, 11))
        body, p, m = got[0]
        assert (m.consumer_tag, m.exchange, m.routing_key, m.redelivered) == (tag, "", name, False)
        assert (p.content_type, p.delivery_mode, p.headers, p.correlation_id, p.message_id) == (
            "text/plain", 2, {"n": 1}, "corr", "m-1")
        cancel_ok = await ch.call(ch.ch.basic_cancel, tag)
        assert cancel_ok.method.consumer_tag == tag
        ok = await ch.call(ch.ch.queue_declare, name, passive=True)
        assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)
        delete_ok = await ch.call(ch.ch.queue_delete, name)
        assert delete_ok.method.message_count == 0
        reason = await c.close()
        assert isinstance(reason, ConnectionClosedByClient)
        assert (reason.reply_code, reason.reply_text) == (200, "Normal shutdown")

    run(main)


def test_asyncio_volume_confirms_and_multiple_acks(hare_url: str) -> None:
    """Thousands of confirmed publishes and a consumer acking with multiple=True in batches."""
    name = unique_name("pika-aio")
    n = 3000

    async def main() -> None:
        pub = await Conn(hare_url).open()
        con = await Conn(hare_url).open()
        pch = await pub.channel()
        cch = await con.channel()
        await pch.call(pch.ch.queue_declare, name, auto_delete=True)
        await cch.call(cch.ch.basic_qos, prefetch_count=200)
        bodies: list[bytes] = []
        done = asyncio.Event()

        def on_message(chan: Channel, method: Basic.Deliver, _p: BasicProperties, body: bytes) -> None:
            bodies.append(body)
            if len(bodies) % 50 == 0 or len(bodies) == n:
                chan.basic_ack(method.delivery_tag, multiple=True)
            if len(bodies) == n:
                done.set()

        cch.ch.basic_consume(name, on_message)
        await pch.confirm()
        payload = b"x" * 200
        for i in range(n):
            pch.ch.basic_publish("", name, b"%05d" % i + payload)
        await pch.confirmed(n)
        await asyncio.wait_for(done.wait(), TIMEOUT * 2)
        assert bodies == [b"%05d" % i + payload for i in range(n)]
        # confirms may be batched (multiple=True) but never skip or repeat a tag
        tags = [tag for _, tag, _ in pch.acks]
        assert tags == sorted(set(tags)) and tags[-1] == n
        assert all(kind == "Basic.Ack" for kind, _, _ in pch.acks)
        ok = await pch.call(pch.ch.queue_declare, name, passive=True)
        assert (ok.method.message_count, ok.method.consumer_count) == (0, 1)
        await con.close()
        await pub.close()

    run(main)


def test_asyncio_passive_declare_of_missing_queue_closes_channel_404(hare_url: str) -> None:
    name = unique_name("pika-aio")

    async def main() -> None:
        c = await Conn(hare_url).open()
        ch = await c.channel()
        with pytest.raises(ChannelClosedByBroker) as info:
            await ch.call(ch.ch.queue_declare, name, passive=True)
        assert info.value.reply_code == 404
        assert info.value.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"
        assert not ch.ch.is_open
        # the connection survives a channel error: a new channel works
        ch2 = await c.channel()
        ok = await ch2.call(ch2.ch.queue_declare, "", exclusive=True)
        assert ok.method.queue.startswith("amq.gen-")
        # a 406 arrives the same way
        await ch2.call(ch2.ch.queue_declare, name, exclusive=True)
        with pytest.raises(ChannelClosedByBroker) as info:
            await ch2.call(ch2.ch.queue_declare, name, auto_delete=True, exclusive=True)
        assert info.value.reply_code == 406
        assert info.value.reply_text == (f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for "
                                         f"queue '{name}' in vhost '/': received 'true' but current is "
                                         "'false'")
        assert c.conn.is_open
        await c.close()

    run(main)


def test_asyncio_unroutable_mandatory_publish_is_returned_then_acked(hare_url: str) -> None:
    async def main() -> None:
        c = await Conn(hare_url).open()
        ch = await c.channel()
        await ch.confirm()
        returned: asyncio.Future[tuple[Basic.Return, BasicProperties, bytes]] = c.loop.create_future()
        ch.ch.add_on_return_callback(lambda _ch, m, p, b: returned.set_result((m, p, b)))
        ch.ch.basic_publish("amq.direct", unique_name("nowhere"), b"lost",
                            BasicProperties(message_id="r1"), mandatory=True)
        method, props, body = await asyncio.wait_for(returned, TIMEOUT)
        assert (method.reply_code, method.reply_text, method.exchange) == (312, "NO_ROUTE", "amq.direct")
        assert (body, props.message_id) == (b"lost", "r1")
        await ch.confirmed(1)
        assert ch.acks == [("Basic.Ack", 1, False)]
        await c.close()

    run(main)


def test_asyncio_nack_requeue_redelivers_and_queue_delete_cancels_consumer(hare_url: str) -> None:
    name = unique_name("pika-aio")

    async def main() -> None:
        c = await Conn(hare_url).open()
        ch = await c.channel()
        await ch.call(ch.ch.queue_declare, name)
        ch.ch.basic_publish("", name, b"again")
        deliveries: asyncio.Queue[tuple[Basic.Deliver, bytes]] = asyncio.Queue()
        cancelled: asyncio.Future[Any] = c.loop.create_future()
        ch.ch.add_on_cancel_callback(lambda frame: cancelled.set_result(frame.method))
        tag = ch.ch.basic_consume(name, lambda _c, m, _p, b: deliveries.put_nowait((m, b)))
        first, body = await asyncio.wait_for(deliveries.get(), TIMEOUT)
        assert (body, first.redelivered) == (b"again", False)
        ch.ch.basic_nack(first.delivery_tag, requeue=True)
        second, body = await asyncio.wait_for(deliveries.get(), TIMEOUT)
        assert (body, second.redelivered, second.delivery_tag) == (b"again", True, 2)
        ch.ch.basic_reject(second.delivery_tag, requeue=False)
        # deleting the queue from another channel cancels the consumer (consumer_cancel_notify)
        other = await c.channel()
        ok = await other.call(other.ch.queue_delete, name)
        assert ok.method.message_count == 0
        method = await asyncio.wait_for(cancelled, TIMEOUT)
        assert method.consumer_tag == tag
        assert ch.ch.is_open
        await c.close()

    run(main)


# -- SelectConnection ---------------------------------------------------------------------------------


class SelectFlow:
    """Drive a SelectConnection through a list of steps, each started by the previous callback."""

    def __init__(self, url: str) -> None:
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self.closed_reason: BaseException | None = None
        self.conn = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=self.on_open,
            on_open_error_callback=self.on_open_error,
            on_close_callback=self.on_close)
        self.ch: Channel = None  # type: ignore[assignment]
        self.start: Callable[[], None] = lambda: None

    def on_open(self, _conn: Any) -> None:
        self.conn.channel(on_open_callback=self.on_channel)

    def on_channel(self, ch: Channel) -> None:
        self.ch = ch
        self.start()

    def on_open_error(self, _conn: Any, exc: BaseException) -> None:
        self.error = exc
        self.conn.ioloop.stop()

    def on_close(self, _conn: Any, reason: BaseException) -> None:
        self.closed_reason = reason
        self.conn.ioloop.stop()

    def fail(self, msg: str) -> None:
        self.error = AssertionError(msg)
        if self.conn.is_open:
            self.conn.close()
        else:
            self.conn.ioloop.stop()

    def run(self, start: Callable[[], None]) -> None:
        self.start = start
        self.conn.ioloop.call_later(TIMEOUT * 2, lambda: self.fail("timed out"))
        self.conn.ioloop.start()
        if self.error is not None:
            raise self.error


def test_select_connection_publish_confirm_consume_ack_close(hare_url: str) -> None:
    name = unique_name("pika-select")
    flow = SelectFlow(hare_url)
    confirms: list[int] = []
    bodies: list[bytes] = []
    n = 20

    def start() -> None:
        flow.ch.queue_declare(name, exclusive=True, callback=declared)

    def declared(frame: Any) -> None:
        assert frame.method.queue == name
        flow.ch.confirm_delivery(on_confirm, callback=lambda _f: publish())

    def publish() -> None:
        for i in range(n):
            flow.ch.basic_publish("", name, b"s-%d" % i, BasicProperties(priority=i % 10))

    def on_confirm(frame: Any) -> None:
        assert isinstance(frame.method, Basic.Ack)
        confirms.append(frame.method.delivery_tag)
        if frame.method.delivery_tag == n:
            flow.ch.basic_qos(prefetch_count=5, callback=lambda _f: flow.ch.basic_consume(name, on_msg))

    def on_msg(ch: Channel, method: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        bodies.append(body)
        assert props.priority == (len(bodies) - 1) % 10
        ch.basic_ack(method.delivery_tag)
        if len(bodies) == n:
            ch.queue_declare(name, passive=True, callback=check)

    def check(frame: Any) -> None:
        assert (frame.method.message_count, frame.method.consumer_count) == (0, 1)
        flow.ch.close()
        flow.conn.close()

    flow.run(start)
    assert bodies == [b"s-%d" % i for i in range(n)]
    assert confirms and confirms[-1] == n
    assert isinstance(flow.closed_reason, ConnectionClosedByClient)
    assert flow.closed_reason.reply_code == 200


def test_select_connection_channel_error_callback(hare_url: str) -> None:
    name = unique_name("pika-select")
    flow = SelectFlow(hare_url)
    closes: list[BaseException] = []

    def start() -> None:
        flow.ch.add_on_close_callback(lambda _ch, exc: on_channel_closed(exc))
        flow.ch.queue_declare(name, passive=True, callback=lambda _f: flow.fail("declare-ok for a "
                                                                                 "missing queue"))

    def on_channel_closed(exc: BaseException) -> None:
        closes.append(exc)
        # the connection is still usable
        flow.conn.channel(on_open_callback=lambda ch: ch.queue_declare(
            "", exclusive=True, callback=lambda f: (closes.append(f.method.queue), flow.conn.close())))

    flow.run(start)
    err = closes[0]
    assert isinstance(err, ChannelClosedByBroker)
    assert (err.reply_code, err.reply_text) == (404, f"NOT_FOUND - no queue '{name}' in vhost '/'")
    assert isinstance(closes[1], str) and closes[1].startswith("amq.gen-")
    assert isinstance(flow.closed_reason, ConnectionClosedByClient)
