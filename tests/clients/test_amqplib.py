"""Node's amqplib (the npm package, pinned in amqplib/package-lock.json), unchanged, with its promise
API: the RabbitMQ tutorials (hello world, work queue, publish/subscribe, topics, RPC with a callback
queue and with direct reply-to), confirms, mandatory returns, dead-lettering with x-death, every
message property and header type, channel errors, qos global, basic.cancel and a 3 MB message.

Each test runs one scenario of amqplib/scenarios.js in a node process and asserts on the JSON it
prints. The module is skipped when ``node`` is not on PATH; ``npm ci`` installs amqplib (into
``amqplib/node_modules``, inside the source tree) on first use, and the module is skipped with
npm's message when that fails (offline, no registry access)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).parent / "amqplib"
NPM_CI_TIMEOUT = 120
SCENARIO_TIMEOUT = 30

# npm ci (up to 120 s) runs inside the first test's setup, past the suite's 60 s default.
pytestmark = pytest.mark.timeout(NPM_CI_TIMEOUT + SCENARIO_TIMEOUT + 30)


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with amqplib installed beside scenarios.js."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("node is on PATH but npm is not: cannot install amqplib")
    if not (NODE_DIR / "node_modules" / "amqplib" / "package.json").is_file():
        why_not = npm_ci(npm, NODE_DIR)
        if why_not is not None:  # offline, no registry access: nothing to test against, not a failure
            pytest.skip(why_not)
    return node


def npm_ci(npm: str, where: Path, env: dict[str, str] | None = None) -> str | None:
    """Run ``npm ci`` in ``where``: None when it installed the packages, else why it did not (the
    first lines of npm's error)."""
    try:
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=where, capture_output=True,
                              text=True, timeout=NPM_CI_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        return f"npm ci could not install amqplib within {NPM_CI_TIMEOUT} s (offline?)"
    if done.returncode == 0:
        return None
    said = []
    for line in (done.stderr or done.stdout).splitlines():
        line = line.removeprefix("npm error").removeprefix("npm ERR!").strip()
        if line and not line.startswith("at "):
            said.append(line)
    return f"npm ci could not install amqplib (exit {done.returncode}): {' | '.join(said[:4])}"


def test_npm_ci_without_registry_access_is_a_skip_reason_with_npms_message(tmp_path: Path) -> None:
    """As offline: the same package files, an empty npm cache, a registry that refuses connections."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not on PATH")
    for name in ("package.json", "package-lock.json"):
        shutil.copy(NODE_DIR / name, tmp_path / name)
    env = {**os.environ, "npm_config_cache": str(tmp_path / "cache"), "npm_config_fetch_retries": "0",
           "npm_config_registry": "http://127.0.0.1:9/"}
    why_not = npm_ci(npm, tmp_path, env)
    assert why_not is not None and why_not.startswith("npm ci could not install amqplib (exit 1): ")
    assert "ECONNREFUSED" in why_not  # npm's own words
    assert not (tmp_path / "node_modules" / "amqplib").exists()


@pytest.fixture
def scenario(node: str, hare_url: str) -> Any:
    def run(name: str) -> Any:
        done = subprocess.run([node, "scenarios.js", hare_url, name], cwd=NODE_DIR, capture_output=True,
                              text=True, timeout=SCENARIO_TIMEOUT)
        assert done.returncode == 0, f"scenario {name} failed:\n{done.stderr}"
        return json.loads(done.stdout)

    return run


def test_hello_world(scenario: Any) -> None:
    r = scenario("hello")
    assert r == {
        "declared": {"queue": True, "messageCount": 0, "consumerCount": 0},
        "sent": True,
        "body": "Hello World!",
        "fields": {"exchange": "", "routingKey": True, "redelivered": False, "deliveryTag": 1,
                   "consumerTag": True},
        "consumerTagIsString": True,
        "deletedMessageCount": 0,
    }


def test_work_queue_prefetch_one_two_workers(scenario: Any) -> None:
    r = scenario("work_queue")
    assert sum(r["counts"]) == 20 and min(r["counts"]) > 0, r["counts"]
    assert (r["total"], r["distinct"], r["everyTaskOnce"]) == (20, 20, True)
    assert r["inOrderPerWorker"] == [True, True]
    assert r["maxInFlight"] == [1, 1]  # prefetch(1): never a second delivery before the ack
    assert r["redelivered"] == [0, 0]
    assert r["queueWhileConsuming"] == {"messageCount": 0, "consumerCount": 2}
    assert r["queueAfter"] == {"messageCount": 0, "consumerCount": 0}


def test_publish_subscribe_fanout(scenario: Any) -> None:
    r = scenario("pubsub")
    assert r["exchange"] is True
    assert r["serverNamed"] == [True, True] and r["distinctNames"] is True
    assert r["got"] == [["log-0", "log-1", "log-2"]] * 2
    assert all(f["exchange"] is True for f in r["fields"]) and len(r["fields"]) == 6
    assert sorted(f["routingKey"] for f in r["fields"]) == sorted(["info", "warning", ""] * 2)


def test_topic_routing(scenario: Any) -> None:
    r = scenario("topic")
    assert r == {
        "orange": ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"],
        # lazy.pink.rabbit matches both bindings and arrives once; 'lazy.#' takes plain 'lazy'
        "rabbitOrLazy": ["quick.orange.rabbit", "lazy.orange.elephant", "lazy.brown.fox", "lazy.pink.rabbit",
                         "lazy.orange.male.rabbit", "lazy"],
        "everything": ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox", "lazy.brown.fox",
                       "lazy.pink.rabbit", "quick.brown.fox", "orange", "quick.orange.male.rabbit",
                       "lazy.orange.male.rabbit", "lazy", "kern.critical", "kern", "kern.info.x",
                       "a.critical", "(empty)"],
        "kernel": ["kern.critical", "a.critical"],
        "afterUnbind": [],
    }


def test_rpc_callback_queue_and_direct_reply_to(scenario: Any) -> None:
    r = scenario("rpc")

    def replies(*pairs: tuple[int, int]) -> list[dict[str, Any]]:
        return [{"n": n, "result": fib, "correlationId": True, "exchange": "", "redelivered": False}
                for n, fib in pairs]

    assert r["classic"] == {"results": replies((10, 55), (20, 6765), (30, 832040)), "unknown": []}
    assert r["direct"] == {
        "results": replies((1, 1), (2, 1), (40, 102334155), (50, 12586269025)),
        "unknown": [], "errors": [], "consumerTag": True,
    }
    # the server saw the callback queue's name, then amq.rabbitmq.reply-to.<its channel's key>
    assert r["serverSawReplyTo"] == ["callback-queue"] * 3 + ["direct-reply-to"] * 4


def test_confirm_channel_wait_for_confirms_1000(scenario: Any) -> None:
    r = scenario("confirms")
    assert r == {"acked": 1000, "nacked": 0, "messageCount": 1000, "received": 1000, "inOrder": True,
                 "deletedMessageCount": 0}


def test_mandatory_publish_to_nowhere_is_returned(scenario: Any) -> None:
    r = scenario("mandatory")
    assert r == {
        "returnsAtConfirm": 2,  # each basic.return comes before its basic.ack
        "returned": [
            {"replyCode": 312, "replyText": "NO_ROUTE", "exchange": "the-exchange",
             "routingKey": "unbound-key", "body": "lost-1", "messageId": "id-1", "headers": {"attempt": 1}},
            {"replyCode": 312, "replyText": "NO_ROUTE", "exchange": "", "routingKey": "the-missing-queue",
             "body": "lost-2", "messageId": "id-3", "headers": {}},
        ],
    }


def test_nack_and_reject_dead_letter_with_x_death(scenario: Any) -> None:
    r = scenario("dead_letter")
    assert r["requeued"] == {"body": "requeued", "redelivered": True}
    assert r["workQueueLeft"] == 0

    def dead(body: str) -> dict[str, Any]:
        return {
            "body": body, "messageId": body, "exchange": "the-dlx", "routingKey": "the-queue",
            "original": body,
            "xDeath": [{"keys": ["count", "exchange", "queue", "reason", "routing-keys", "time"],
                        "count": 1, "reason": "rejected", "queue": "the-queue", "exchange": "",
                        "routingKeys": ["the-queue"], "timeIsTimestamp": True, "timeIsNow": True}],
            "firstDeath": {"reason": "rejected", "queue": "the-queue", "exchange": ""},
        }

    assert r["dead"] == [dead("nacked"), dead("rejected")]


def test_properties_and_headers_round_trip(scenario: Any) -> None:
    r = scenario("properties")
    headers = {
        "string": "héllo ✓",
        "byte": 7, "short": 1000, "int": 100000, "long": 2**40, "negative": -42, "negLong": -(2**35),
        "double": 3.25, "true": True, "false": False, "void": None,
        "array": [1, "two", False, 2.5, {"inner": "x"}, [3, [4]], None],
        "emptyArray": [],
        "nested": {"level1": {"level2": {"deep": "yes", "n": 9}}, "list": ["a", "b"], "empty": {}},
        "bytes": {"type": "Buffer", "data": [0, 1, 2, 255]},
        "timestamp": {"!": "timestamp", "value": 1700000000},
        "float": 1.5,  # amqplib reads 'f' and 'i' back as plain numbers
        "uint32": 4000000000,
        "decimal": {"!": "decimal", "value": {"places": 2, "digits": 12345}},
    }
    props = {
        "contentType": "application/json", "contentEncoding": "utf-8", "headers": headers,
        "deliveryMode": 2, "priority": 7, "correlationId": "corr-42", "replyTo": "reply-here",
        "expiration": "60000", "messageId": "msg-42", "timestamp": 1700000123, "type": "order.created",
        "appId": "hare-tests",
    }
    assert r["viaGet"] == {"body": '{"id": 42}', "properties": props}
    assert r["viaDeliver"] == {"body": '{"id": 42}', "properties": props}
    # amqplib always sends a headers table, empty here; nothing else is set
    assert r["bare"] == {"body": "bare", "properties": {"headers": {}}}


def test_channel_error_404_and_connection_stays_usable(scenario: Any) -> None:
    r = scenario("channel_error")
    queue, exchange = r["names"]["queue"], r["names"]["exchange"]
    not_found_queue = f"404 (NOT-FOUND) with message \"NOT_FOUND - no queue '{queue}' in vhost '/'\""
    not_found_exchange = f"404 (NOT-FOUND) with message \"NOT_FOUND - no exchange '{exchange}' in vhost '/'\""
    assert r["queue"] == {
        "error": {"code": 404, "classId": 50, "methodId": 10,
                  "message": f"Operation failed: QueueDeclare; {not_found_queue}"},
        "emitted": [{"code": 404, "message": f"Channel closed by server: {not_found_queue}"}],
        "afterCloseRejected": True, "mentionsName": True,
    }
    assert r["exchange"] == {
        "error": {"code": 404, "classId": 40, "methodId": 10,
                  "message": f"Operation failed: ExchangeDeclare; {not_found_exchange}"},
        "emitted": [{"code": 404, "message": f"Channel closed by server: {not_found_exchange}"}],
        "afterCloseRejected": True, "mentionsName": True,
    }
    assert r["newChannel"] == {"body": "still-usable", "checkQueueAfter": True}
    assert r["connErrors"] == []


def test_prefetch_global(scenario: Any) -> None:
    r = scenario("prefetch_global")
    # two consumers on one channel, on queues of 10 messages each, none acked
    assert r["globalOnly"]["first"] == [3, 0]  # the channel's window of 3 is shared
    assert r["globalOnly"]["totalAfterOneAck"] == 4
    assert r["both"]["first"] == [2, 1]  # 2 per consumer, 3 for the channel
    assert r["both"]["totalAfterOneAck"] == 4
    assert r["perConsumer"]["first"] == [2, 2]  # global=false alone: 2 each
    assert r["perConsumer"]["afterOneAck"] == [3, 2]
    assert r["readyAfter"] == [7, 10]  # one message of the first queue acked per run, the rest back


def test_cancel_consumer_gets_no_more(scenario: Any) -> None:
    r = scenario("cancel")
    assert r == {
        "got": ["before-cancel"],
        "afterCancel": {"messageCount": 3, "consumerCount": 0},
        "rest": ["after-cancel-0", "after-cancel-1", "after-cancel-2"],
    }


def test_large_message_3mb(scenario: Any) -> None:
    r = scenario("large_message")
    size = 3 * 1024 * 1024
    assert r == {
        "sent": size,
        "viaGet": {"length": size, "equal": True, "sha256Equal": True, "messageId": "big-1"},
        "viaDeliver": {"length": size, "equal": True, "sha256Equal": True, "messageId": "big-2"},
    }
