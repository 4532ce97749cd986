"""Common kombu patterns built on broker features: delayed retries through a TTL queue that
dead-letters back to the work queue (giving up on the x-death count), publishing with a retry policy
across a dropped connection, a length-limited SimpleQueue, and per-message expiration."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message
from support import unique_name

TIMEOUT = 5.0


@pytest.fixture
def conn(hare_url: str) -> Iterator[Connection]:
    with Connection(hare_url) as c:
        c.connect()
        yield c


@pytest.fixture
def names(hare_url: str) -> Iterator[list[str]]:
    """Names of queues and exchanges to delete (each as both) after the test."""
    made: list[str] = []
    yield made
    with Connection(hare_url) as c:
        ch = c.channel()
        for name in made:
            ch.queue_delete(name)
            ch.exchange_delete(name)


def fresh(names: list[str], prefix: str) -> str:
    name = unique_name(prefix)
    names.append(name)
    return name


def drain_until(conn: Connection, cond: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("condition not met")
        try:
            conn.drain_events(timeout=min(remaining, 0.1))
        except TimeoutError:
            pass


def ready_count(conn: Connection, queue: str) -> int:
    return conn.default_channel.queue_declare(queue, passive=True).message_count


def wait_count(conn: Connection, queue: str, n: int, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while (have := ready_count(conn, queue)) != n:
        assert time.monotonic() < deadline, f"{have} messages in {queue}, expected {n}"
        time.sleep(0.02)


def death_count(message: Message, queue: str, reason: str) -> int:
    for death in (message.headers or {}).get("x-death") or []:
        if death["queue"] == queue and death["reason"] == reason:
            return int(death["count"])
    return 0


# -- retry with a delay: a TTL queue dead-letters back to the work queue ---------------------------


def test_delayed_retry_through_ttl_and_dead_letter_exchange(conn: Connection, names: list[str]) -> None:
    max_attempts, delay_ms = 3, 200
    work_x, retry_x = Exchange(fresh(names, "work-x"), "direct"), Exchange(fresh(names, "retry-x"), "direct")
    work_name, retry_name, parked_name = fresh(names, "work"), fresh(names, "retry"), fresh(names, "parked")
    # a rejected work message goes to the retry queue; there it waits out its TTL, then goes back
    work = Queue(work_name, work_x, routing_key="task",
                 queue_arguments={"x-dead-letter-exchange": retry_x.name})
    retry = Queue(retry_name, retry_x, routing_key="task",
                  queue_arguments={"x-message-ttl": delay_ms, "x-dead-letter-exchange": work_x.name})
    parked = Queue(parked_name, work_x, routing_key="parked")
    ch = conn.default_channel
    for q in (work, retry, parked):
        q(ch).declare()
    producer = Producer(ch, exchange=work_x, serializer="json")
    producer.publish({"job": "doomed"}, routing_key="task", message_id="doomed")
    producer.publish({"job": "second-time-lucky"}, routing_key="task", message_id="lucky")

    attempts: dict[str, list[float]] = {}
    done: list[str] = []

    def handle(body: Any, message: Message) -> None:
        job = body["job"]
        attempts.setdefault(job, []).append(time.monotonic())
        failures = death_count(message, work_name, "rejected")
        assert failures == len(attempts[job]) - 1
        if job == "second-time-lucky" and failures == 1:
            message.ack()
            done.append(job)
        elif failures + 1 >= max_attempts:  # give up: park it with its history, out of the loop
            Producer(ch, exchange=work_x).publish(message.body, routing_key="parked", headers=message.headers,
                                                  content_type=message.content_type,
                                                  content_encoding=message.content_encoding)
            message.ack()
            done.append(job)
        else:
            message.reject(requeue=False)  # dead-lettered to the retry queue

    with Consumer(conn, [work], callbacks=[handle], accept=["json"]):
        drain_until(conn, lambda: len(done) == 2, timeout=10)

    assert len(attempts["doomed"]) == max_attempts and len(attempts["second-time-lucky"]) == 2
    for times in attempts.values():  # each retry waited out the retry queue's TTL
        assert all(b - a >= delay_ms / 1000 * 0.9 for a, b in zip(times, times[1:], strict=False))
    assert ready_count(conn, work_name) == 0 and ready_count(conn, retry_name) == 0
    m = parked(ch).get(no_ack=True)
    assert m is not None and m.payload == {"job": "doomed"}
    deaths = m.headers["x-death"]
    # one entry per (queue, reason), counted; the latest first
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        (retry_name, "expired", 2), (work_name, "rejected", 2)]
    assert deaths[0]["exchange"] == retry_x.name and deaths[0]["routing-keys"] == ["task"]
    assert "original-expiration" not in deaths[0]  # the TTL was the queue's, not the message's
    assert deaths[1]["exchange"] == work_x.name
    assert m.headers["x-first-death-queue"] == work_name
    assert m.headers["x-first-death-reason"] == "rejected"
    assert m.headers["x-first-death-exchange"] == work_x.name
    assert parked(ch).get() is None


# -- publish with a retry policy across a dropped connection ---------------------------------------


def test_publish_with_retry_policy_survives_a_dropped_connection(hare_url: str, names: list[str]) -> None:
    qname = fresh(names, "kombu-retry")
    q = Queue(qname)
    errors: list[tuple[BaseException, float]] = []
    policy = {"max_retries": 5, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.3,
              "errback": lambda exc, interval: errors.append((exc, interval))}
    with Connection(hare_url, transport_options={"confirm_publish": True}) as c:
        producer = c.Producer(serializer="json")
        producer.publish({"n": 1}, routing_key=qname, declare=[q], retry=True, retry_policy=policy)
        first = c.connection
        # the network goes away under the connection: the broker sees the socket close
        first.transport.sock.shutdown(socket.SHUT_RDWR)
        producer.publish({"n": 2}, routing_key=qname, declare=[q], retry=True, retry_policy=policy)
        assert c.connection is not first and c.connected  # kombu reconnected and published again
        assert len(errors) == 1 and isinstance(errors[0][0], c.recoverable_connection_errors)
        producer.publish({"n": 3}, routing_key=qname, retry=True, retry_policy=policy)
        bound = q(c.default_channel)
        got = []
        while (m := bound.get(no_ack=True)) is not None:
            got.append(m.payload)
        assert got == [{"n": 1}, {"n": 2}, {"n": 3}]  # each exactly once, in order


# -- SimpleQueue with a length limit ---------------------------------------------------------------


def test_simple_queue_with_max_length_drops_the_oldest(conn: Connection, names: list[str]) -> None:
    qname = fresh(names, "kombu-simple")
    with conn.SimpleQueue(qname, queue_args={"x-max-length": 3}) as sq:
        for i in range(5):
            sq.put({"i": i})
        wait_count(conn, qname, 3)
        assert sq.qsize() == 3
        got = []
        for _ in range(3):
            m = sq.get(block=True, timeout=TIMEOUT)
            got.append(m.payload)
            m.ack()
        assert got == [{"i": 2}, {"i": 3}, {"i": 4}]
        with pytest.raises(sq.Empty):
            sq.get_nowait()


def test_simple_queue_with_reject_publish_nacks_the_overflow(hare_url: str, names: list[str]) -> None:
    qname = fresh(names, "kombu-simple")
    with Connection(hare_url, transport_options={"confirm_publish": True}) as c:
        sq = c.SimpleQueue(qname, queue_args={"x-max-length": 2, "x-overflow": "reject-publish"})
        sq.put("a")
        sq.put("b")
        with pytest.raises(amqp.exceptions.MessageNacked):
            sq.put("c")
        assert sq.qsize() == 2
        got = [sq.get(timeout=TIMEOUT) for _ in range(2)]
        for m in got:
            m.ack()
        assert [m.payload for m in got] == ["a", "b"]
        sq.put("d")  # room again
        m = sq.get(timeout=TIMEOUT)
        assert m.payload == "d"
        m.ack()
        sq.close()


# -- per-message expiration --------------------------------------------------------------------------


def test_per_message_expiration_through_kombu(conn: Connection, names: list[str]) -> None:
    dlx = Exchange(fresh(names, "dlx"), "fanout")
    dead = Queue(fresh(names, "expired"), dlx)
    q = Queue(fresh(names, "kombu-exp"), queue_arguments={"x-dead-letter-exchange": dlx.name})
    ch = conn.default_channel
    dead(ch).declare()
    q(ch).declare()
    producer = Producer(ch, serializer="json")
    producer.publish("short", routing_key=q.name, expiration=0.15)  # kombu: seconds, sent as ms
    producer.publish("long", routing_key=q.name, expiration=60)
    producer.publish("forever", routing_key=q.name)
    # the expired head is removed although nobody consumes, and dead-lettered
    wait_count(conn, q.name, 2)
    wait_count(conn, dead.name, 1)
    m = dead(ch).get(no_ack=True)
    assert m is not None and m.payload == "short"
    assert "expiration" not in m.properties  # dead-lettering drops it: the copy must not expire again
    (death,) = m.headers["x-death"]
    assert (death["queue"], death["reason"], death["count"]) == (q.name, "expired", 1)
    assert death["original-expiration"] == "150"
    bound = q(ch)
    m1, m2 = bound.get(no_ack=True), bound.get(no_ack=True)
    assert m1 is not None and m2 is not None
    assert (m1.payload, m1.properties["expiration"]) == ("long", "60000")
    assert m2.payload == "forever" and "expiration" not in m2.properties
    # a message that expires while another one blocks the head waits until it reaches the head
    # (RabbitMQ expires from the head only) but is never delivered once expired
    producer.publish("blocker", routing_key=q.name)
    producer.publish("brief", routing_key=q.name, expiration=0.05)
    time.sleep(0.2)
    m = bound.get(no_ack=True)
    assert m is not None and m.payload == "blocker"
    assert bound.get(no_ack=True) is None
    wait_count(conn, dead.name, 1)
    m = dead(ch).get(no_ack=True)
    assert m is not None and m.payload == "brief"
