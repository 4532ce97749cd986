"""Permissions enforced where RabbitMQ 3.10 enforces them, with its reply codes and texts.

A user 'app' may configure ``^app\\.``, write ``^amq\\.default$|^app\\.`` and read ``^app\\.`` in
vhost '/' (the case of issue 9); 'guest' (all permissions) sets up the other resources. Each rule
of rabbit_channel has an allowed and a refused case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import quote

import pika
import pytest
from pika.exceptions import ConnectionClosedByBroker, ProbableAccessDeniedError, ProbableAuthenticationError
from support import closed_with, hare_only

from hare.testing import EmbeddedBroker

pytestmark = hare_only

CONF, WRITE, READ = r"^app\.", r"^amq\.default$|^app\.", r"^app\."


def refused(what: str, kind: str, name: str, user: str = "app") -> str:
    # RabbitMQ 3.10.8 names the resource, not the permission (``what``: the one the case needs)
    return f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user '{user}'"


def url(b: EmbeddedBroker, user: str, password: str, vhost: str = "/") -> str:
    return f"amqp://{user}:{password}@127.0.0.1:{b.port}/{quote(vhost, safe='')}"


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker().start()
    c = b.broker.commands
    b.call(c.add_user, "app", "pw", [])
    b.call(c.set_permissions, "app", "/", CONF, WRITE, READ)
    with pika.BlockingConnection(pika.URLParameters(b.url)) as conn:
        ch = conn.channel()
        ch.queue_declare("other")
        ch.queue_declare("app.mine")
        ch.exchange_declare("other.x", "direct")
        ch.exchange_declare("app.x", "direct")
        ch.exchange_declare("app.t", "topic")
        ch.basic_publish("", "other", b"secret")
    yield b
    b.stop()


@pytest.fixture
def app(broker: EmbeddedBroker) -> Iterator[pika.BlockingConnection]:
    conn = pika.BlockingConnection(pika.URLParameters(url(broker, "app", "pw")))
    yield conn
    if conn.is_open:
        conn.close()


@pytest.fixture
def ch(app: pika.BlockingConnection) -> pika.adapters.blocking_connection.BlockingChannel:
    return app.channel()


def open_refused(target: str) -> str:
    """Open a connection that the broker refuses at connection.open: the close's text."""
    with pytest.raises(ProbableAccessDeniedError) as info:
        pika.BlockingConnection(pika.URLParameters(target))
    return str(info.value)


def refusal(ch: object, call: Callable, *args: object, **kwargs: object) -> tuple[int, str]:
    err = closed_with(ch, call, *args, **kwargs)  # type: ignore[arg-type]
    return err.reply_code, err.reply_text


# -- the defect of issue 9: patterns were ignored ----------------------------------------------------

def test_queue_declare_needs_configure(ch) -> None:
    assert ch.queue_declare("app.q1").method.queue == "app.q1"
    assert refusal(ch, ch.queue_declare, "other") == (403, refused("configure", "queue", "other"))


def test_basic_get_needs_read(ch, app) -> None:
    assert ch.basic_get("app.mine") == (None, None, None)
    assert refusal(ch, ch.basic_get, "other") == (403, refused("read", "queue", "other"))


def test_server_named_queue_needs_configure_on_its_generated_name(ch) -> None:
    code, text = refusal(ch, ch.queue_declare, "", exclusive=True)
    assert code == 403 and text.startswith("ACCESS_REFUSED - access to queue 'amq.gen-")


def test_passive_declares_need_no_permission(ch) -> None:
    assert ch.queue_declare("other", passive=True).method.message_count == 1
    ch.exchange_declare("other.x", passive=True)


# -- configure: declare and delete ------------------------------------------------------------------

def test_exchange_declare_and_delete_need_configure(ch, app) -> None:
    ch.exchange_declare("app.x2", "fanout")
    ch.exchange_delete("app.x2")
    assert refusal(ch, ch.exchange_declare, "other.y", "fanout") == (
        403, refused("configure", "exchange", "other.y"))
    ch = app.channel()
    assert refusal(ch, ch.exchange_delete, "other.x") == (403, refused("configure", "exchange", "other.x"))


def test_amq_prefix_and_default_exchange_are_refused_before_permissions(ch, app) -> None:
    assert refusal(ch, ch.queue_declare, "amq.q") == (
        403, "ACCESS_REFUSED - queue name 'amq.q' contains reserved prefix 'amq.*'")
    ch = app.channel()
    assert refusal(ch, ch.exchange_delete, "amq.direct") == (
        403, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed")


def test_queue_delete_needs_configure(ch, app) -> None:
    ch.queue_declare("app.gone")
    assert ch.queue_delete("app.gone").method.message_count == 0
    assert refusal(ch, ch.queue_delete, "other") == (403, refused("configure", "queue", "other"))


def test_dead_letter_exchange_needs_write_on_it(ch, app) -> None:
    ch.queue_declare("app.dl1", arguments={"x-dead-letter-exchange": "app.x"})
    assert refusal(ch, ch.queue_declare, "app.dl2", arguments={"x-dead-letter-exchange": "other.x"}) == (
        403, refused("write", "exchange", "other.x"))


def test_alternate_exchange_needs_write_on_it(ch) -> None:
    ch.exchange_declare("app.ae1", "direct", arguments={"alternate-exchange": "app.x"})
    assert refusal(ch, ch.exchange_declare, "app.ae2", "direct", arguments={
        "alternate-exchange": "other.x"}) == (403, refused("write", "exchange", "other.x"))


# -- write: publish ---------------------------------------------------------------------------------

def test_publish_needs_write_on_the_exchange(ch, app) -> None:
    ch.confirm_delivery()
    ch.basic_publish("", "app.mine", b"1")  # amq.default is in the write pattern
    ch.basic_publish("app.x", "k", b"2")
    assert refusal(ch, ch.basic_publish, "amq.direct", "k", b"3") == (
        403, refused("write", "exchange", "amq.direct"))
    ch = app.channel()
    ch.confirm_delivery()
    # before the exchange is looked up: a missing one is refused as well, not 404
    assert refusal(ch, ch.basic_publish, "nope", "k", b"4") == (403, refused("write", "exchange", "nope"))


def test_default_exchange_is_matched_as_amq_default(broker: EmbeddedBroker) -> None:
    c = broker.broker.commands
    broker.call(c.add_user, "nodefault", "pw", [])
    broker.call(c.set_permissions, "nodefault", "/", ".*", r"^app\.", ".*")
    with pika.BlockingConnection(pika.URLParameters(url(broker, "nodefault", "pw"))) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        assert refusal(ch, ch.basic_publish, "", "app.mine", b"x") == (
            403, refused("write", "exchange", "amq.default", "nodefault"))


# -- read: consume, purge; bindings: write on the destination, read on the source ----------------------

def test_consume_and_purge_need_read(ch, app) -> None:
    tag = ch.basic_consume("app.mine", lambda *a: None)
    ch.basic_cancel(tag)
    ch.queue_purge("app.mine")
    assert refusal(ch, ch.basic_consume, "other", lambda *a: None) == (403, refused("read", "queue", "other"))
    ch = app.channel()
    assert refusal(ch, ch.queue_purge, "other") == (403, refused("read", "queue", "other"))


def test_queue_bind_needs_write_on_queue_and_read_on_exchange(ch, app) -> None:
    ch.queue_bind("app.mine", "app.x", "k")
    ch.queue_unbind("app.mine", "app.x", "k")
    assert refusal(ch, ch.queue_bind, "other", "app.x", "k") == (403, refused("write", "queue", "other"))
    ch = app.channel()
    assert refusal(ch, ch.queue_bind, "app.mine", "other.x", "k") == (
        403, refused("read", "exchange", "other.x"))
    ch = app.channel()
    assert refusal(ch, ch.queue_unbind, "app.mine", "other.x", "k") == (
        403, refused("read", "exchange", "other.x"))


def test_exchange_bind_needs_write_on_destination_and_read_on_source(ch, app) -> None:
    ch.exchange_declare("app.dest", "fanout")
    ch.exchange_bind("app.dest", "app.x", "k")
    ch.exchange_unbind("app.dest", "app.x", "k")
    assert refusal(ch, ch.exchange_bind, "other.x", "app.x", "k") == (
        403, refused("write", "exchange", "other.x"))
    ch = app.channel()
    assert refusal(ch, ch.exchange_bind, "app.dest", "other.x", "k") == (
        403, refused("read", "exchange", "other.x"))


# -- vhost access -------------------------------------------------------------------------------------

def test_a_user_without_permissions_in_a_vhost_cannot_open_it(broker: EmbeddedBroker) -> None:
    broker.call(broker.broker.commands.add_user, "nobody", "pw", [])
    assert '(530) "NOT_ALLOWED - access to vhost \'/\' refused for user \'nobody\'"' in open_refused(
        url(broker, "nobody", "pw"))


# -- changes at run time reach open channels ------------------------------------------------------------

def test_permission_changes_apply_to_open_channels(broker: EmbeddedBroker) -> None:
    c = broker.broker.commands
    broker.call(c.add_user, "late", "pw", [])
    broker.call(c.set_permissions, "late", "/", "", "", "")
    with pika.BlockingConnection(pika.URLParameters(url(broker, "late", "pw"))) as conn:
        ch = conn.channel()
        assert refusal(ch, ch.basic_get, "app.mine") == (403, refused("read", "queue", "app.mine", "late"))
        broker.call(c.set_permissions, "late", "/", "", "", ".*")
        ch = conn.channel()
        ch.basic_get("app.mine", auto_ack=True)  # allowed now: no channel error
        assert ch.is_open
        broker.call(c.set_permissions, "late", "/", "", "", "")
        assert refusal(ch, ch.basic_get, "app.mine") == (403, refused("read", "queue", "app.mine", "late"))


# -- topic permissions ------------------------------------------------------------------------------------

@pytest.fixture
def topical(broker: EmbeddedBroker) -> Iterator[pika.BlockingConnection]:
    c = broker.broker.commands
    if "topical" not in broker.broker.users.users:
        broker.call(c.add_user, "topical", "pw", [])
        broker.call(c.set_permissions, "topical", "/", ".*", ".*", ".*")
        broker.call(c.set_topic_permissions, "topical", "/", "app.t", r"^{username}\.", r"^{vhost}\.orders$")
    conn = pika.BlockingConnection(pika.URLParameters(url(broker, "topical", "pw")))
    yield conn
    if conn.is_open:
        conn.close()


def test_topic_write_permission_on_routing_keys(topical) -> None:
    ch = topical.channel()
    ch.confirm_delivery()
    ch.basic_publish("app.t", "topical.created", b"ok")  # {username} expanded
    ch.basic_publish("app.x", "anything", b"ok")  # not a topic exchange: no topic check
    ch.basic_publish("amq.topic", "anything", b"ok")  # no topic permission for amq.topic: open
    assert refusal(ch, ch.basic_publish, "app.t", "bob.created", b"no") == (
        403, "ACCESS_REFUSED - access to topic 'bob.created' in exchange 'app.t' in vhost '/' "
             "refused for user 'topical'")


def test_topic_read_permission_on_binding_keys(topical) -> None:
    ch = topical.channel()
    ch.queue_declare("topical-q", exclusive=True)
    ch.queue_bind("topical-q", "app.t", "/.orders")  # {vhost} expanded
    assert refusal(ch, ch.queue_bind, "topical-q", "app.t", "#") == (
        403, "ACCESS_REFUSED - access to topic '#' in exchange 'app.t' in vhost '/' "
             "refused for user 'topical'")


# -- limits ----------------------------------------------------------------------------------------------

def test_vhost_max_queues(broker: EmbeddedBroker) -> None:
    c = broker.broker.commands
    broker.call(c.add_vhost, "limited")
    broker.call(c.set_permissions, "guest", "limited", ".*", ".*", ".*")
    broker.call(c.set_vhost_limits, "limited", {"max-queues": 1})
    with pika.BlockingConnection(pika.URLParameters(url(broker, "guest", "guest", "limited"))) as conn:
        ch = conn.channel()
        ch.queue_declare("one")
        ch.queue_declare("one")  # redeclaring is not a new queue
        assert refusal(ch, ch.queue_declare, "two") == (
            406, "PRECONDITION_FAILED - cannot declare queue 'two': queue limit in vhost 'limited' (1) "
                 "is reached")


def test_vhost_and_user_max_connections(broker: EmbeddedBroker) -> None:
    c = broker.broker.commands
    broker.call(c.add_vhost, "few")
    broker.call(c.set_permissions, "guest", "few", ".*", ".*", ".*")
    broker.call(c.set_vhost_limits, "few", {"max-connections": 1})
    with pika.BlockingConnection(pika.URLParameters(url(broker, "guest", "guest", "few"))):
        assert ("(530) \"NOT_ALLOWED - access to vhost 'few' refused for user 'guest': connection limit "
                "(1) is reached\"") in open_refused(url(broker, "guest", "guest", "few"))
    broker.call(c.add_user, "solo", "pw", [])
    broker.call(c.set_permissions, "solo", "/", ".*", ".*", ".*")
    broker.call(c.set_user_limits, "solo", {"max-connections": 1, "max-channels": 2})
    with pika.BlockingConnection(pika.URLParameters(url(broker, "solo", "pw"))) as conn:
        assert ("(530) \"NOT_ALLOWED - connection refused for user 'solo': user connection limit (1) is "
                "reached\"") in open_refused(url(broker, "solo", "pw"))
        conn.channel()
        conn.channel()
        with pytest.raises(ConnectionClosedByBroker) as info:
            conn.channel()
        assert (info.value.reply_code, info.value.reply_text) == (
            530, "NOT_ALLOWED - number of channels opened for user 'solo' has reached the maximum allowed "
                 "user limit of (2)")


def test_deleting_a_user_closes_its_connections(broker: EmbeddedBroker) -> None:
    c = broker.broker.commands
    broker.call(c.add_user, "doomed", "pw", [])
    broker.call(c.set_permissions, "doomed", "/", ".*", ".*", ".*")
    conn = pika.BlockingConnection(pika.URLParameters(url(broker, "doomed", "pw")))
    broker.call(c.delete_user, "doomed")
    with pytest.raises(ConnectionClosedByBroker) as info:
        conn.process_data_events(time_limit=2)
        conn.channel()
    assert info.value.reply_code == 320
    with pytest.raises(ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(url(broker, "doomed", "pw")))
