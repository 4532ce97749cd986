"""The disk alarm: under ``disk_free_limit`` free bytes, publishers are blocked (connection.blocked,
no longer read) while consumers go on; when space returns they are unblocked and read again."""

from __future__ import annotations

import os
import time

import pytest
from rawamqp import RawClient
from support import wait_until

from hare.amqp import spec
from hare.broker.broker import BrokerConfig
from hare.testing import EmbeddedBroker

pytestmark = pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="sets a private hare's limit")

ALWAYS = 10**18  # more free bytes than any disk has: the alarm is on


def client(broker: EmbeddedBroker) -> RawClient:
    c = RawClient("127.0.0.1", broker.port)
    c.handshake()
    c.open_channel(1)
    return c


def set_limit(broker: EmbeddedBroker, limit: int) -> None:
    broker.call(lambda: setattr(broker.broker.config, "disk_free_limit", limit))


def consume(c: RawClient, queue: str) -> None:
    c.send_method(1, spec.QueueDeclare(queue=queue))
    c.expect(spec.QueueDeclareOk)
    c.send_method(1, spec.BasicConsume(queue=queue, no_ack=True))
    c.expect(spec.BasicConsumeOk)


def deliveries(c: RawClient, seconds: float) -> list[bytes]:
    """Bodies delivered within ``seconds``."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            c.expect(spec.BasicDeliver, timeout=left)
        except TimeoutError:
            break
        out.append(c.read_content()[1])
    return out


def test_publishers_are_blocked_and_consumers_go_on(hare_broker_factory) -> None:
    broker = hare_broker_factory(config=BrokerConfig(disk_free_limit=ALWAYS))
    wait_until(lambda: "disk" in broker.broker.alarms)
    consumer = client(broker)
    consume(consumer, "alarm-q")
    publisher = client(broker)
    publisher.publish(1, "", "alarm-q", b"first")  # taken, then the connection is not read
    blocked = publisher.expect(spec.ConnectionBlocked)
    assert blocked.reason == "low on disk"
    publisher.publish(1, "", "alarm-q", b"second")
    publisher.publish(1, "", "alarm-q", b"third")
    assert deliveries(consumer, 0.5) == [b"first"]  # the consumer is served; nothing more comes
    set_limit(broker, 0)
    publisher.expect(spec.ConnectionUnblocked, timeout=5)
    assert deliveries(consumer, 2) == [b"second", b"third"]
    publisher.close()
    consumer.close()


def test_a_publisher_is_blocked_at_its_next_publish_not_when_the_alarm_goes_on(
        hare_broker_factory) -> None:
    """As RabbitMQ 3.10.8 (checked with rabbitmqctl set_vm_memory_high_watermark): an alarm going
    on tells nobody, not even a connection that published before; its next publish's content
    blocks it (after the method frame, at the content header)."""
    broker = hare_broker_factory()
    publisher = client(broker)
    publisher.send_method(1, spec.QueueDeclare(queue="q"))
    publisher.expect(spec.QueueDeclareOk)
    publisher.publish(1, "", "q", b"before")
    bystander = client(broker)  # never publishes: not blocked, never told
    set_limit(broker, ALWAYS)
    wait_until(lambda: "disk" in broker.broker.alarms)
    publisher.send_method(1, spec.BasicPublish(exchange="", routing_key="q"))
    with pytest.raises(TimeoutError):  # not told, even after the method frame of a publish
        publisher.read_method(timeout=0.5)
    publisher.send_content(1, b"during")
    assert publisher.expect(spec.ConnectionBlocked, timeout=5).reason == "low on disk"
    bystander.send_method(1, spec.QueueDeclare(queue="q", passive=True))
    assert bystander.expect(spec.QueueDeclareOk).message_count == 2  # it is still read
    set_limit(broker, 0)
    publisher.expect(spec.ConnectionUnblocked, timeout=5)
    publisher.send_method(1, spec.QueueDeclare(queue="q", passive=True))
    assert publisher.expect(spec.QueueDeclareOk).message_count == 2
    publisher.close()
    bystander.close()
