"""Celery over ``amqp://`` (py-amqp through kombu) with the ``rpc://`` result backend: one in-process
worker (solo pool, in a thread) serves the module; tasks return results, retry with a countdown,
run at an eta, are routed to a named queue, are re-delivered under ``acks_late``, are revoked by
remote control and run as groups and chains."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery.contrib.testing.worker import start_worker
from celery.exceptions import Ignore, Reject, TaskRevokedError
from kombu import Connection, Exchange, Queue
from support import unique_name

TIMEOUT = 10.0

# queue names of this run: tests of other runs (or a crashed one) never see our messages
DEFAULT_Q = unique_name("celery")
ROUTED_Q = unique_name("celery-routed")

app = Celery("hare_celery_tests", set_as_current=False)
# what the tasks saw, by the token the test passed in
seen: dict[str, list[dict[str, Any]]] = {}


def _record(task: Any, token: str, **extra: Any) -> list[dict[str, Any]]:
    info = task.request.delivery_info or {}
    seen.setdefault(token, []).append({
        "at": time.monotonic(), "retries": task.request.retries, "redelivered": info.get("redelivered"),
        "routing_key": info.get("routing_key"), "exchange": info.get("exchange"), **extra,
    })
    return seen[token]


@app.task(name="hare.add")
def add(x: int, y: int) -> int:
    return x + y


def _stamp(self: Any, token: str) -> float:
    """Returns when it ran (time.monotonic in this process)."""
    return _record(self, token)[-1]["at"]


stamp = app.task(name="hare.stamp", bind=True)(_stamp)


@app.task(name="hare.flaky", bind=True, max_retries=5)
def flaky(self: Any, token: str, fail_times: int) -> int:
    runs = _record(self, token)
    if len(runs) <= fail_times:
        raise self.retry(countdown=0.2, exc=RuntimeError(f"attempt {len(runs)} failed"))
    return len(runs)


@app.task(name="hare.hopeless", bind=True, max_retries=2)
def hopeless(self: Any, token: str) -> None:
    _record(self, token)
    raise self.retry(countdown=0.1, exc=ValueError("never works"))


@app.task(name="hare.routed", bind=True)
def routed(self: Any, token: str) -> str:
    return _record(self, token)[-1]["routing_key"]


@app.task(name="hare.requeue_once", bind=True, acks_late=True)
def requeue_once(self: Any, token: str) -> int:
    runs = _record(self, token)
    if len(runs) == 1:
        raise Reject("not now", requeue=True)  # basic.reject requeue=true: the broker gives it back
    return len(runs)


@app.task(name="hare.lose_connection_once", bind=True, acks_late=True)
def lose_connection_once(self: Any, token: str) -> int:
    runs = _record(self, token)
    if len(runs) == 1:
        # the worker's broker connection dies while it holds the unacked task (as when the worker
        # host goes away): the broker must hand the task out again, flagged redelivered
        worker_sock().shutdown(socket.SHUT_RDWR)
        raise Ignore()  # no result for this run; the ack it attempts goes nowhere
    return len(runs)


def configure(celery: Celery, default_q: str, *others: str) -> None:
    celery.conf.update(
        broker_url="amqp://",  # replaced by the fixtures
        result_backend="rpc://",
        task_default_queue=default_q,
        task_default_exchange=default_q,
        task_default_routing_key=default_q,
        task_queues=[Queue(q, Exchange(q), routing_key=q) for q in (default_q, *others)],
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,  # the Celery 6 default
    )


configure(app, DEFAULT_Q, ROUTED_Q)
app.conf.task_routes = {"hare.routed": {"queue": ROUTED_Q}}


def delete(url: str, *names: str) -> None:
    with Connection(url) as conn:
        ch = conn.channel()
        for name in names:
            ch.queue_delete(name)
            ch.exchange_delete(name)


_worker: Any = None


def worker_sock() -> socket.socket:
    return _worker.consumer.connection.connection.transport.sock


@pytest.fixture(scope="module")
def worker(hare_url: str) -> Iterator[Any]:
    global _worker
    app.conf.broker_url = hare_url
    try:
        threads = set(threading.enumerate())
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=15,
                          hostname=f"{unique_name('w')}@hare-tests") as w:
            _worker = w
            yield w
            # the remote-control shutdown (a fanout to the worker's pidbox queue) wakes the worker's
            # event loop at once; start_worker's own flag is only seen when the loop next wakes up
            stopping = time.monotonic()
            app.control.shutdown(destination=[w.hostname])
        # the worker stopped cleanly and promptly, and left no thread behind (the embedded broker's
        # own threads, hare-*, start when it first needs them: they are not the worker's)
        assert time.monotonic() - stopping < 3
        assert {t for t in threading.enumerate() if t.is_alive() and not t.name.startswith("hare-")} \
            - threads == set()
    finally:
        _worker = None
        delete(hare_url, DEFAULT_Q, ROUTED_Q)
        app.close()


def test_task_result_through_rpc_backend(worker: Any) -> None:
    results = [add.delay(i, 10) for i in range(5)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [10, 11, 12, 13, 14]
    assert all(r.successful() for r in results)
    # the results came back on the client's own reply queue, under each task's id
    task_id = unique_name("task-id")
    r = add.apply_async((2, 3), task_id=task_id)
    assert r.id == task_id and r.get(timeout=TIMEOUT) == 5


def test_task_exception_comes_back(worker: Any) -> None:
    r = add.delay(1, "x")
    with pytest.raises(TypeError):
        r.get(timeout=TIMEOUT)
    assert r.failed() and r.state == "FAILURE"


def test_retry_with_countdown(worker: Any) -> None:
    token = unique_name("t")
    assert flaky.delay(token, 2).get(timeout=TIMEOUT) == 3
    runs = seen[token]
    assert [run["retries"] for run in runs] == [0, 1, 2]
    # each retry is a new message, sent back to the queue with an eta 0.2 s later
    assert all(b["at"] - a["at"] >= 0.15 for a, b in zip(runs, runs[1:], strict=False))
    assert {run["routing_key"] for run in runs} == {DEFAULT_Q}


def test_retry_gives_up_after_max_retries(worker: Any) -> None:
    token = unique_name("t")
    with pytest.raises(ValueError, match="never works"):
        hopeless.delay(token).get(timeout=TIMEOUT)
    assert [run["retries"] for run in seen[token]] == [0, 1, 2]


def test_countdown_is_held_by_the_worker(worker: Any) -> None:
    token = unique_name("t")
    sent = time.monotonic()
    later = stamp.apply_async((token,), countdown=1)
    now = stamp.delay(unique_name("t"))
    # the worker took the eta task at once and keeps it unacked while it serves the others
    ran_now = now.get(timeout=TIMEOUT)
    assert ran_now - sent < 0.9
    with app.connection_for_write() as conn:
        assert conn.default_channel.queue_declare(DEFAULT_Q, passive=True).message_count == 0
    assert 0.9 <= later.get(timeout=TIMEOUT) - sent < 5
    assert seen[token][0]["redelivered"] is False


def test_more_eta_tasks_than_the_prefetch_window(worker: Any) -> None:
    """Each eta task the worker holds raises its basic.qos prefetch by one (global=true on RabbitMQ
    3.x), so more of them than the window (4 here) do not hold up the tasks behind them."""
    token = unique_name("t")
    sent = time.monotonic()
    later = [stamp.apply_async((token,), countdown=1) for _ in range(6)]
    now = stamp.delay(unique_name("t"))
    try:
        # (on hare the worker either stalls, or runs this only after the eta tasks)
        assert now.get(timeout=3) - sent < 0.9
    finally:
        # leave the worker idle for the next tests. A stuck one acks the eta tasks it ran only
        # when its event loop next wakes up (Celery defers those acks): a ping wakes it
        app.control.ping(destination=[worker.hostname], timeout=1)
        for r in [*later, now]:
            r.get(timeout=TIMEOUT)
    assert all(0.9 <= r.get() - sent < 5 for r in later)


def test_remote_control_ping_inspect_and_revoke(worker: Any) -> None:
    # broadcasts go through the celery.pidbox fanout exchange, replies through reply.celery.pidbox
    assert app.control.ping(destination=[worker.hostname], timeout=2) == [{worker.hostname: {"ok": "pong"}}]
    active = app.control.inspect(destination=[worker.hostname], timeout=2).active_queues()
    assert sorted(q["name"] for q in active[worker.hostname]) == sorted([DEFAULT_Q, ROUTED_Q])
    token = unique_name("t")
    doomed = stamp.apply_async((token,), countdown=1)
    app.control.revoke(doomed.id)
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=TIMEOUT)
    assert token not in seen


def test_routing_to_a_named_queue(worker: Any) -> None:
    token = unique_name("t")
    assert routed.delay(token).get(timeout=TIMEOUT) == ROUTED_Q
    # an explicit queue= overrides the route
    token2 = unique_name("t")
    assert routed.apply_async((token2,), queue=DEFAULT_Q).get(timeout=TIMEOUT) == DEFAULT_Q


def test_acks_late_reject_requeue_redelivers(worker: Any) -> None:
    token = unique_name("t")
    assert requeue_once.delay(token).get(timeout=TIMEOUT) == 2
    assert [run["redelivered"] for run in seen[token]] == [False, True]


def test_acks_late_task_redelivered_after_worker_connection_loss(worker: Any) -> None:
    token = unique_name("t")
    assert lose_connection_once.delay(token).get(timeout=TIMEOUT) == 2
    assert [run["redelivered"] for run in seen[token]] == [False, True]
    # the worker reconnected and serves new tasks
    assert add.delay(20, 22).get(timeout=TIMEOUT) == 42


def test_group_and_chain(worker: Any) -> None:
    g = group(add.s(i, i) for i in range(6))()
    assert g.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8, 10]
    c = chain(add.s(1, 2), add.s(3), add.s(4))()
    assert c.get(timeout=TIMEOUT) == 10
    assert c.parent.get(timeout=TIMEOUT) == 6
    # chords need a result backend that can count the header's results: not rpc://
    with pytest.raises(NotImplementedError):
        chord([add.s(1, 1)], add.s(1))()

