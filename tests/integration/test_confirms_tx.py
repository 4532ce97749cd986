"""Publisher confirms and transactions as RabbitMQ 3.10 implements them.

Confirms: confirm.select(-ok), delivery tags counted from 1 per channel, every publish confirmed
exactly once (single or multiple acks, in whatever batching the broker picks), unroutable messages
acked, a mandatory return sent before the ack. Transactions: publishes routed when they arrive but
delivered at commit, acks and rejects applied at commit, rollback, and the 406s."""

from __future__ import annotations

import struct
import time
import uuid

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker, UnroutableError
from rawamqp import RawClient, ping, raw_client

from hare.amqp import spec


def message(ch: int, exchange: str, routing_key: str, body: bytes, mandatory: bool = False,
            props_raw: bytes = b"\x00\x00") -> bytes:
    """basic.publish + content header + one body frame, as bytes."""
    method = spec.BasicPublish(exchange=exchange, routing_key=routing_key, mandatory=mandatory).encode()
    out = struct.pack(">BHI", 1, ch, len(method)) + method + b"\xce"
    out += struct.pack(">BHIHHQ", 2, ch, 12 + len(props_raw), 60, 0, len(body)) + props_raw + b"\xce"
    if body:
        out += struct.pack(">BHI", 3, ch, len(body)) + body + b"\xce"
    return out


def read_body(c: RawClient) -> bytes:
    return c.read_content()[1]


def count(c: RawClient, ch: int, queue: str) -> int:
    c.send_method(ch, spec.QueueDeclare(queue=queue, passive=True))
    ok = c.expect(spec.QueueDeclareOk)
    assert isinstance(ok, spec.QueueDeclareOk)
    return ok.message_count


class Confirms:
    """Tracks basic.ack / basic.nack from the broker: every tag must be confirmed exactly once."""

    def __init__(self) -> None:
        self.acked: set[int] = set()
        self.nacked: set[int] = set()
        self.events: list[tuple[str, object]] = []  # ("ack"/"nack", tags) and ("return", body), in order

    @property
    def confirmed(self) -> set[int]:
        return self.acked | self.nacked

    def feed(self, m: spec.Method, published: int) -> None:
        assert isinstance(m, spec.BasicAck | spec.BasicNack), m
        tag = m.delivery_tag
        assert 1 <= tag <= published, f"confirm for tag {tag}, only {published} published"
        assert tag not in self.confirmed, f"tag {tag} confirmed twice"
        tags = {t for t in range(1, tag + 1) if t not in self.confirmed} if m.multiple else {tag}
        (self.acked if isinstance(m, spec.BasicAck) else self.nacked).update(tags)
        self.events.append(("ack" if isinstance(m, spec.BasicAck) else "nack", tags))

    def wait(self, c: RawClient, published: int, timeout: float = 30) -> None:
        """Read until tags 1..published are all confirmed (returns are recorded on the way)."""
        deadline = time.monotonic() + timeout
        while len(self.confirmed) < published:
            _, m = c.read_method(max(0.1, deadline - time.monotonic()))
            if isinstance(m, spec.BasicReturn):
                self.events.append(("return", (m.reply_code, m.routing_key, read_body(c))))
                continue
            self.feed(m, published)
        assert self.confirmed == set(range(1, published + 1))


# -- confirm.select ----------------------------------------------------------------------------------


def test_confirm_select_ok_and_tags_count_from_1(raw: RawClient, queue: str) -> None:
    raw.send_method(1, spec.ConfirmSelect())
    raw.expect(spec.ConfirmSelectOk)
    raw.send(message(1, "", queue, b"one"))
    ack = raw.expect(spec.BasicAck)
    assert isinstance(ack, spec.BasicAck) and (ack.delivery_tag, ack.multiple) == (1, False)
    raw.send(message(1, "", queue, b"two"))
    ack = raw.expect(spec.BasicAck)
    assert isinstance(ack, spec.BasicAck) and (ack.delivery_tag, ack.multiple) == (2, False)


def test_confirm_select_nowait_has_no_reply_but_confirms(raw: RawClient, queue: str) -> None:
    raw.send_method(1, spec.ConfirmSelect(nowait=True))
    raw.send(message(1, "", queue, b"one"))
    ack = raw.expect(spec.BasicAck)  # the first thing back: no confirm.select-ok before it
    assert isinstance(ack, spec.BasicAck) and ack.delivery_tag == 1
    raw.send_method(1, spec.ConfirmSelect())  # selecting again is fine and keeps counting
    raw.expect(spec.ConfirmSelectOk)
    raw.send(message(1, "", queue, b"two"))
    ack = raw.expect(spec.BasicAck)
    assert isinstance(ack, spec.BasicAck) and ack.delivery_tag == 2


def test_publishes_before_confirm_select_are_not_counted(raw: RawClient, queue: str) -> None:
    raw.send(message(1, "", queue, b"a") + message(1, "", queue, b"b"))
    raw.send_method(1, spec.ConfirmSelect())
    raw.expect(spec.ConfirmSelectOk)  # and no ack for the two before it
    raw.send(message(1, "", queue, b"c"))
    ack = raw.expect(spec.BasicAck)
    assert isinstance(ack, spec.BasicAck) and ack.delivery_tag == 1
    assert count(raw, 1, queue) == 3


def test_every_tag_is_confirmed_exactly_once(hare_url: str, queue: str) -> None:
    """Many publishes in one burst, routed to one queue, to three, or to none: each tag is covered
    by exactly one ack, whether the broker acks singly or with multiple."""
    fanout = f"test-cfanout-{uuid.uuid4().hex[:12]}"
    with raw_client(hare_url) as c:
        c.send_method(1, spec.ExchangeDeclare(exchange=fanout, type="fanout"))
        c.expect(spec.ExchangeDeclareOk)
        extra = []
        for _ in range(2):
            c.send_method(1, spec.QueueDeclare(queue="", exclusive=True))
            ok = c.expect(spec.QueueDeclareOk)
            assert isinstance(ok, spec.QueueDeclareOk)
            extra.append(ok.queue)
        for name in [queue, *extra]:
            c.send_method(1, spec.QueueBind(queue=name, exchange=fanout))
            c.expect(spec.QueueBindOk)
        try:
            c.send_method(1, spec.ConfirmSelect())
            c.expect(spec.ConfirmSelectOk)
            n = 3000
            targets = [("", queue), (fanout, ""), ("amq.direct", "nobody")]
            burst = b"".join(message(1, *targets[i % 3], b"%d" % i) for i in range(n))
            c.sock.sendall(burst)
            confirms = Confirms()
            confirms.wait(c, n)
            assert confirms.acked == set(range(1, n + 1)) and not confirms.nacked
            ping(c, 1)  # and nothing more
            assert count(c, 1, queue) == 2 * n // 3
        finally:
            c.send_method(1, spec.ExchangeDelete(exchange=fanout))
            c.expect(spec.ExchangeDeleteOk)


def test_confirms_on_two_channels_count_separately(hare_url: str, queue: str) -> None:
    with raw_client(hare_url, channels=2) as c:
        for ch in (1, 2):
            c.send_method(ch, spec.ConfirmSelect())
            c.expect(spec.ConfirmSelectOk)
        c.sock.sendall(b"".join(message(1 + i % 2, "", queue, b"x") for i in range(200)))
        confirms = {1: Confirms(), 2: Confirms()}
        while any(len(t.confirmed) < 100 for t in confirms.values()):
            ch, m = c.read_method(10)
            confirms[ch].feed(m, 100)
        assert all(t.acked == set(range(1, 101)) for t in confirms.values())


def test_pika_confirm_delivery_many(channel: BlockingChannel, queue: str) -> None:
    channel.confirm_delivery()
    for i in range(500):
        channel.basic_publish("", queue, b"%d" % i)  # raises on a nack
    assert channel.queue_declare(queue, passive=True).method.message_count == 500


def test_unroutable_message_is_acked(raw: RawClient) -> None:
    raw.send_method(1, spec.ConfirmSelect())
    raw.expect(spec.ConfirmSelectOk)
    raw.send(message(1, "amq.direct", f"nobody-{uuid.uuid4().hex}", b"lost"))
    ack = raw.expect(spec.BasicAck)
    assert isinstance(ack, spec.BasicAck) and ack.delivery_tag == 1


def test_mandatory_return_comes_before_its_ack(raw: RawClient, queue: str) -> None:
    raw.send_method(1, spec.ConfirmSelect())
    raw.expect(spec.ConfirmSelectOk)
    nowhere = f"nobody-{uuid.uuid4().hex}"
    raw.sock.sendall(message(1, "", queue, b"1") + message(1, "amq.direct", nowhere, b"2", mandatory=True)
                     + message(1, "", queue, b"3") + message(1, "amq.direct", nowhere, b"4", mandatory=True))
    confirms = Confirms()
    confirms.wait(raw, 4)
    assert confirms.acked == {1, 2, 3, 4}
    returns = [i for i, (kind, _) in enumerate(confirms.events) if kind == "return"]
    assert [confirms.events[i][1] for i in returns] == [(312, nowhere, b"2"), (312, nowhere, b"4")]
    for i, tag in zip(returns, (2, 4), strict=True):
        acked_before = set().union(*(tags for kind, tags in confirms.events[:i] if kind == "ack"))
        assert tag not in acked_before, "basic.ack came before the basic.return"


def test_pika_mandatory_unroutable_with_confirms_raises_unroutable(channel: BlockingChannel,
                                                                    queue: str) -> None:
    channel.confirm_delivery()
    with pytest.raises(UnroutableError) as info:
        channel.basic_publish("amq.direct", "nobody-home", b"back", pika.BasicProperties(message_id="m"),
                              mandatory=True)
    (returned,) = info.value.messages
    assert (returned.method.reply_code, returned.method.reply_text) == (312, "NO_ROUTE")
    assert (returned.body, returned.properties.message_id) == (b"back", "m")
    channel.basic_publish("", queue, b"fine", mandatory=True)  # routable: no error
    assert channel.queue_declare(queue, passive=True).method.message_count == 1


def test_confirms_after_a_channel_error(raw: RawClient, queue: str) -> None:
    raw.send_method(1, spec.ConfirmSelect())
    raw.expect(spec.ConfirmSelectOk)
    raw.sock.sendall(b"".join(message(1, "", queue, b"x") for _ in range(3)))
    Confirms().wait(raw, 3)
    raw.send(message(1, "no-such-exchange", "", b"x"))
    number, close = raw.read_method()  # no ack or nack for the failed publish
    assert isinstance(close, spec.ChannelClose) and (number, close.reply_code) == (1, 404)
    raw.send_method(1, spec.ChannelCloseOk())
    # the same channel number opened again is a new channel: not in confirm mode
    raw.open_channel(1)
    raw.send(message(1, "", queue, b"y"))
    ping(raw, 1)  # no ack came
    raw.send_method(1, spec.TxSelect())  # and it can even become transactional
    raw.expect(spec.TxSelectOk)
    # another channel in confirm mode counts from 1 again
    raw.open_channel(2)
    raw.send_method(2, spec.ConfirmSelect())
    raw.expect(spec.ConfirmSelectOk)
    raw.send(message(2, "", queue, b"z"))
    ack = raw.expect(spec.BasicAck)
    assert isinstance(ack, spec.BasicAck) and ack.delivery_tag == 1


def test_confirm_select_on_a_tx_channel_is_406(raw: RawClient) -> None:
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send_method(1, spec.ConfirmSelect())
    close = raw.expect(spec.ChannelClose)
    assert isinstance(close, spec.ChannelClose)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode", 85, 10)


def test_tx_select_on_a_confirm_channel_is_406(raw: RawClient) -> None:
    raw.send_method(1, spec.ConfirmSelect())
    raw.expect(spec.ConfirmSelectOk)
    raw.send_method(1, spec.TxSelect())
    close = raw.expect(spec.ChannelClose)
    assert isinstance(close, spec.ChannelClose)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode", 90, 10)


def test_pika_mode_conflicts(connection: BlockingConnection) -> None:
    ch = connection.channel()
    ch.tx_select()
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.confirm_delivery()
    assert (info.value.reply_code, info.value.reply_text) == (
        406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")


def test_persistent_message_to_a_durable_queue_is_acked(raw: RawClient) -> None:
    name = f"test-durable-{uuid.uuid4().hex[:12]}"
    raw.send_method(1, spec.QueueDeclare(queue=name, durable=True))
    raw.expect(spec.QueueDeclareOk)
    try:
        raw.send_method(1, spec.ConfirmSelect())
        raw.expect(spec.ConfirmSelectOk)
        raw.sock.sendall(b"".join(message(1, "", name, b"p%d" % i, props_raw=b"\x10\x00\x02")
                                  for i in range(20)))
        confirms = Confirms()
        confirms.wait(raw, 20)
        assert confirms.acked == set(range(1, 21))
    finally:
        raw.send_method(1, spec.QueueDelete(queue=name))
        raw.expect(spec.QueueDeleteOk)


# -- transactions: publishes ---------------------------------------------------------------------------


def test_tx_select_ok_and_again(raw: RawClient) -> None:
    for _ in range(2):
        raw.send_method(1, spec.TxSelect())
        raw.expect(spec.TxSelectOk)


@pytest.mark.parametrize("method", [spec.TxCommit(), spec.TxRollback()], ids=["commit", "rollback"])
def test_commit_or_rollback_without_tx_select_is_406(raw: RawClient, method: spec.Method) -> None:
    raw.send_method(1, method)
    close = raw.expect(spec.ChannelClose)
    assert isinstance(close, spec.ChannelClose)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406, "PRECONDITION_FAILED - channel is not transactional", 90, method.METHOD_ID)


def test_publishes_are_invisible_until_commit(hare_url: str, queue: str) -> None:
    with raw_client(hare_url, channels=2) as c, raw_client(hare_url) as sub:
        sub.send_method(1, spec.BasicConsume(queue=queue, no_ack=True))
        sub.expect(spec.BasicConsumeOk)
        c.send_method(1, spec.TxSelect())
        c.expect(spec.TxSelectOk)
        c.sock.sendall(b"".join(message(1, "", queue, b"%d" % i) for i in range(3)))
        ping(c, 1)
        assert count(c, 2, queue) == 0
        c.send_method(2, spec.BasicGet(queue=queue, no_ack=True))
        c.expect(spec.BasicGetEmpty)
        ping(sub, 1)  # the consumer got nothing either
        c.send_method(1, spec.TxCommit())
        c.expect(spec.TxCommitOk)
        bodies = []
        for _ in range(3):
            sub.expect(spec.BasicDeliver)
            bodies.append(read_body(sub))
        assert bodies == [b"0", b"1", b"2"]


def test_rollback_discards_publishes(raw: RawClient, queue: str) -> None:
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send(message(1, "", queue, b"dropped") + message(1, "", queue, b"dropped too"))
    raw.send_method(1, spec.TxRollback())
    raw.expect(spec.TxRollbackOk)
    raw.send(message(1, "", queue, b"kept"))
    raw.send_method(1, spec.TxCommit())
    raw.expect(spec.TxCommitOk)
    raw.send_method(1, spec.BasicGet(queue=queue, no_ack=True))
    raw.expect(spec.BasicGetOk)
    assert read_body(raw) == b"kept"
    assert count(raw, 1, queue) == 0


def test_several_commits_in_a_row(raw: RawClient, queue: str) -> None:
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    for n in (0, 1, 0, 2, 0):
        raw.send(b"".join(message(1, "", queue, b"x") for _ in range(n)))
        raw.send_method(1, spec.TxCommit())
        raw.expect(spec.TxCommitOk)
    assert count(raw, 1, queue) == 3
    raw.send_method(1, spec.TxRollback())  # nothing to roll back: fine
    raw.expect(spec.TxRollbackOk)
    assert count(raw, 1, queue) == 3


def test_closing_a_tx_channel_discards_uncommitted_publishes(hare_url: str, queue: str) -> None:
    with raw_client(hare_url, channels=2) as c:
        c.send_method(1, spec.TxSelect())
        c.expect(spec.TxSelectOk)
        c.send(message(1, "", queue, b"never"))
        c.send_method(1, spec.ChannelClose(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        c.expect(spec.ChannelCloseOk)
        assert count(c, 2, queue) == 0


def test_tx_publish_errors_at_publish_not_at_commit(raw: RawClient) -> None:
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send(message(1, "no-such-exchange", "", b"x"))
    close = raw.expect(spec.ChannelClose)
    assert isinstance(close, spec.ChannelClose)
    assert (close.reply_code, close.class_id, close.method_id) == (404, 60, 40)


def test_mandatory_return_in_tx_comes_at_commit_before_commit_ok(raw: RawClient) -> None:
    nowhere = f"nobody-{uuid.uuid4().hex}"
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send(message(1, "amq.direct", nowhere, b"back", mandatory=True, props_raw=b"\x00\x80\x02id"))
    ping(raw, 1)  # nothing returned at publish time
    raw.send_method(1, spec.TxCommit())
    ret = raw.expect(spec.BasicReturn)
    assert isinstance(ret, spec.BasicReturn)
    assert (ret.reply_code, ret.reply_text, ret.exchange, ret.routing_key) == (312, "NO_ROUTE", "amq.direct",
                                                                               nowhere)
    assert raw.read_content() == (b"\x00\x80\x02id", b"back")
    raw.expect(spec.TxCommitOk)


def test_rolled_back_mandatory_publish_is_not_returned(raw: RawClient) -> None:
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send(message(1, "amq.direct", f"nobody-{uuid.uuid4().hex}", b"x", mandatory=True))
    raw.send_method(1, spec.TxRollback())
    raw.expect(spec.TxRollbackOk)
    raw.send_method(1, spec.TxCommit())
    raw.expect(spec.TxCommitOk)


def test_tx_publish_is_routed_when_published(hare_url: str) -> None:
    """A queue bound between publish and commit does not get the message (it is returned); a queue
    deleted between them does not get it either."""
    name = f"test-late-{uuid.uuid4().hex[:12]}"
    with raw_client(hare_url, channels=2) as c:
        c.send_method(1, spec.TxSelect())
        c.expect(spec.TxSelectOk)
        c.send(message(1, "amq.direct", name, b"early", mandatory=True))
        ping(c, 1)
        c.send_method(2, spec.QueueDeclare(queue=name, exclusive=True))
        c.expect(spec.QueueDeclareOk)
        c.send_method(2, spec.QueueBind(queue=name, exchange="amq.direct", routing_key=name))
        c.expect(spec.QueueBindOk)
        c.send_method(1, spec.TxCommit())
        ret = c.expect(spec.BasicReturn)
        assert isinstance(ret, spec.BasicReturn) and ret.routing_key == name
        assert read_body(c) == b"early"
        c.expect(spec.TxCommitOk)
        assert count(c, 2, name) == 0

        c.send(message(1, "amq.direct", name, b"routed", mandatory=True))
        ping(c, 1)
        c.send_method(2, spec.QueueDelete(queue=name))
        c.expect(spec.QueueDeleteOk)
        c.send_method(1, spec.TxCommit())
        ret = c.expect(spec.BasicReturn)
        assert isinstance(ret, spec.BasicReturn) and ret.routing_key == name
        assert read_body(c) == b"routed"
        c.expect(spec.TxCommitOk)


def test_pika_transactions(connection: BlockingConnection, queue: str) -> None:
    ch = connection.channel()
    observer = connection.channel()
    ch.tx_select()
    ch.basic_publish("", queue, b"a")
    assert observer.queue_declare(queue, passive=True).method.message_count == 0
    ch.tx_commit()
    assert observer.queue_declare(queue, passive=True).method.message_count == 1
    ch.basic_publish("", queue, b"b")
    ch.tx_rollback()
    ch.tx_commit()
    assert observer.queue_declare(queue, passive=True).method.message_count == 1


# -- transactions: acks -------------------------------------------------------------------------------


def fill_and_get(c: RawClient, queue: str, n: int) -> None:
    """Put n messages in the queue and take them unacked on channel 1 (tags 1..n)."""
    c.sock.sendall(b"".join(message(1, "", queue, b"m%d" % i) for i in range(n)))
    for i in range(n):
        c.send_method(1, spec.BasicGet(queue=queue, no_ack=False))
        ok = c.expect(spec.BasicGetOk)
        assert isinstance(ok, spec.BasicGetOk) and ok.delivery_tag == i + 1
        assert read_body(c) == b"m%d" % i


def recover_and_count(c: RawClient, queue: str) -> int:
    """Requeue channel 1's unacked messages and count the ready ones."""
    c.send_method(1, spec.BasicRecover(requeue=True))
    c.expect(spec.BasicRecoverOk)
    return count(c, 1, queue)


def test_acks_in_tx_take_effect_on_commit(raw: RawClient, queue: str) -> None:
    fill_and_get(raw, queue, 3)
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send_method(1, spec.BasicAck(delivery_tag=1))
    raw.send_method(1, spec.BasicAck(delivery_tag=3, multiple=True))
    raw.send_method(1, spec.TxCommit())
    raw.expect(spec.TxCommitOk)
    assert recover_and_count(raw, queue) == 0


def test_rollback_puts_acked_deliveries_back(raw: RawClient, queue: str) -> None:
    fill_and_get(raw, queue, 3)
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send_method(1, spec.BasicAck(delivery_tag=2))
    raw.send_method(1, spec.BasicAck(delivery_tag=0, multiple=True))
    raw.send_method(1, spec.TxRollback())
    raw.expect(spec.TxRollbackOk)
    raw.send_method(1, spec.BasicAck(delivery_tag=2))  # unacked again: may be acked again
    raw.send_method(1, spec.TxCommit())
    raw.expect(spec.TxCommitOk)
    assert recover_and_count(raw, queue) == 2  # 1 and 3 were only rolled back


def test_uncommitted_acks_are_undone_when_the_channel_closes(hare_url: str, queue: str) -> None:
    with raw_client(hare_url, channels=2) as c:
        fill_and_get(c, queue, 2)
        c.send_method(1, spec.TxSelect())
        c.expect(spec.TxSelectOk)
        c.send_method(1, spec.BasicAck(delivery_tag=0, multiple=True))
        c.send_method(1, spec.ChannelClose(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        c.expect(spec.ChannelCloseOk)
        deadline = time.monotonic() + 5  # RabbitMQ requeues a closed channel's messages asynchronously
        while count(c, 2, queue) != 2:
            assert time.monotonic() < deadline, "the messages did not come back"
            time.sleep(0.02)


def test_acking_twice_in_one_tx_is_406(raw: RawClient, queue: str) -> None:
    fill_and_get(raw, queue, 2)
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send_method(1, spec.BasicAck(delivery_tag=1))
    raw.send_method(1, spec.BasicAck(delivery_tag=1))
    close = raw.expect(spec.ChannelClose)
    assert isinstance(close, spec.ChannelClose)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406, "PRECONDITION_FAILED - unknown delivery tag 1", 60, 80)


def test_reject_in_tx_after_a_multiple_ack_is_406(raw: RawClient, queue: str) -> None:
    fill_and_get(raw, queue, 2)
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send_method(1, spec.BasicAck(delivery_tag=2, multiple=True))
    raw.send_method(1, spec.BasicReject(delivery_tag=1, requeue=True))
    close = raw.expect(spec.ChannelClose)
    assert isinstance(close, spec.ChannelClose)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        406, "PRECONDITION_FAILED - unknown delivery tag 1", 60, 90)


def test_reject_with_requeue_in_tx_requeues_on_commit(raw: RawClient, queue: str) -> None:
    fill_and_get(raw, queue, 2)
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send_method(1, spec.BasicReject(delivery_tag=2, requeue=True))
    assert count(raw, 1, queue) == 0  # not yet
    raw.send_method(1, spec.TxCommit())
    raw.expect(spec.TxCommitOk)
    assert count(raw, 1, queue) == 1
    raw.send_method(1, spec.BasicGet(queue=queue, no_ack=True))
    ok = raw.expect(spec.BasicGetOk)
    assert isinstance(ok, spec.BasicGetOk) and ok.redelivered and ok.delivery_tag == 3
    assert read_body(raw) == b"m1"


def test_nack_without_requeue_in_tx_drops_on_commit(raw: RawClient, queue: str) -> None:
    fill_and_get(raw, queue, 3)
    raw.send_method(1, spec.TxSelect())
    raw.expect(spec.TxSelectOk)
    raw.send_method(1, spec.BasicNack(delivery_tag=2, multiple=True, requeue=False))
    raw.send_method(1, spec.TxCommit())
    raw.expect(spec.TxCommitOk)
    assert recover_and_count(raw, queue) == 1  # only m2 was left unacked


def test_prefetch_credit_comes_back_only_on_commit(hare_url: str, queue: str) -> None:
    with raw_client(hare_url) as c:
        c.sock.sendall(message(1, "", queue, b"first") + message(1, "", queue, b"second"))
        ping(c, 1)
        c.send_method(1, spec.BasicQos(prefetch_count=1))
        c.expect(spec.BasicQosOk)
        c.send_method(1, spec.TxSelect())
        c.expect(spec.TxSelectOk)
        c.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="c"))
        c.expect(spec.BasicConsumeOk)
        deliver = c.expect(spec.BasicDeliver)
        assert isinstance(deliver, spec.BasicDeliver) and read_body(c) == b"first"
        c.send_method(1, spec.BasicAck(delivery_tag=deliver.delivery_tag))
        ping(c, 1)
        with pytest.raises(TimeoutError):  # the window stays full until the ack is committed
            c.read_frame(timeout=0.5)
        c.send_method(1, spec.TxCommit())
        got = []
        for _ in range(2):
            _, m = c.read_method()
            got.append(type(m))
            if isinstance(m, spec.BasicDeliver):
                assert read_body(c) == b"second"
        assert sorted(t.NAME for t in got) == ["basic.deliver", "tx.commit-ok"]
