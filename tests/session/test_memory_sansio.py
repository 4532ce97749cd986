"""Memory a client controls, without sockets (issue 12, findings 4 and 5): stored messages keep
no decoded properties; under memory pressure a channel holds a bounded share of unacked bytes."""

from __future__ import annotations

import gc
from typing import Any

from hare.amqp import spec
from hare.amqp.frames import body_frames, header_frame, method_frame
from hare.amqp.properties import encode_properties
from hare.broker.broker import Broker
from hare.session.connection import Connection

MiB = 1 << 20


def _open(broker: Broker) -> Connection:
    conn = Connection(broker, ("127.0.0.1", 40000))
    conn.receive_data(
        spec.PROTOCOL_HEADER
        + method_frame(0, spec.ConnectionStartOk(client_properties={}, mechanism="PLAIN",
                                                 response=b"\x00guest\x00guest"))
        + method_frame(0, spec.ConnectionTuneOk(channel_max=2047, frame_max=131072, heartbeat=0))
        + method_frame(0, spec.ConnectionOpen(virtual_host="/"))
        + method_frame(1, spec.ChannelOpen()))
    conn.data_to_send()
    return conn


def _publish(exchange: str, routing_key: str, body: bytes, props: dict[str, Any] | None = None) -> bytes:
    out = [method_frame(1, spec.BasicPublish(exchange=exchange, routing_key=routing_key)),
           header_frame(1, len(body), encode_properties(props or {}))]
    body_frames(out, 1, body, 131072)
    return b"".join(out)


def test_a_message_routed_by_its_headers_keeps_no_decoded_headers() -> None:
    broker = Broker()
    conn = _open(broker)
    conn.receive_data(
        method_frame(1, spec.QueueDeclare(queue="q"))
        + method_frame(1, spec.QueueBind(queue="q", exchange="amq.headers",
                                         arguments={"x-match": "any", "h1": 1})))
    headers = {f"h{i}": i for i in range(2000)}
    conn.receive_data(b"".join(_publish("amq.headers", "", b"x", {"headers": headers})
                               for _ in range(20)))
    q = broker.vhosts["/"].queues["q"]
    assert q.message_count == 20
    gc.collect()
    for _seq, msg, _exp in q.store.mem:  # type: ignore[attr-defined]
        assert msg.headers["h1999"] == 1999  # still readable (decoded on demand) ...
        kept = [r for r in gc.get_referents(msg) if isinstance(r, dict)]
        assert kept == []  # ... but not kept decoded on the stored message


def _drain(conn: Connection) -> None:
    """The client reads everything the broker has for it (deliveries resume as output drains)."""
    while conn.data_to_send():
        pass


def _consume(conn: Connection, queue: str) -> None:
    conn.receive_data(method_frame(1, spec.QueueDeclare(queue=queue))
                      + method_frame(1, spec.BasicConsume(queue=queue, consumer_tag="c")))
    conn.data_to_send()


def test_under_memory_pressure_a_channel_holds_only_its_share_of_unacked_bytes() -> None:
    broker = Broker()
    consumer = _open(broker)
    _consume(consumer, "q")
    publisher = _open(broker)
    body = b"x" * 65536
    watermark = 32 * MiB  # a share of max(4 MiB, watermark / 16) = 4 MiB
    broker.set_memory_pressure(watermark // 10, watermark)  # no pressure: no limit
    publisher.receive_data(b"".join(_publish("", "q", body) for _ in range(100)))
    _drain(consumer)
    ch = consumer.channels[1]
    assert len(ch.unacked) == 100
    q = broker.vhosts["/"].queues["q"]
    assert q.message_count == 0

    broker.set_memory_pressure(watermark * 6 // 10, watermark)  # over half the watermark
    publisher.receive_data(b"".join(_publish("", "q", body) for _ in range(100)))
    _drain(consumer)
    assert len(ch.unacked) == 100  # over its share already: nothing more
    assert q.message_count == 100  # kept in the queue for other consumers

    consumer.receive_data(method_frame(1, spec.BasicAck(delivery_tag=100, multiple=True)))
    _drain(consumer)
    # acked: it gets deliveries again, up to about its share
    assert 4 * MiB <= len(ch.unacked) * len(body) <= 4 * MiB + len(body)
    assert q.message_count == 200 - 100 - len(ch.unacked)

    broker.set_memory_pressure(watermark * 45 // 100, watermark)  # between 40 % and 50 %: still on
    _drain(consumer)
    assert q.message_count == 200 - 100 - len(ch.unacked)
    broker.set_memory_pressure(watermark * 3 // 10, watermark)  # under 40 %: no limit
    _drain(consumer)
    assert q.message_count == 0
    assert len(ch.unacked) == 100


def test_a_no_ack_consumer_is_not_held_back() -> None:
    broker = Broker()
    consumer = _open(broker)
    consumer.receive_data(method_frame(1, spec.QueueDeclare(queue="q"))
                          + method_frame(1, spec.BasicConsume(queue="q", consumer_tag="c", no_ack=True)))
    _drain(consumer)
    broker.set_memory_pressure(30 * MiB, 32 * MiB)
    publisher = _open(broker)
    publisher.receive_data(b"".join(_publish("", "q", b"x" * 65536) for _ in range(200)))
    _drain(consumer)
    assert broker.vhosts["/"].queues["q"].message_count == 0
