"""exchange.declare / delete / bind / unbind, as RabbitMQ 3.10 answers them (pika BlockingConnection)."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker
from support import closed_with, deleted_after, drain, temp_queue, unique_name

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")


@pytest.fixture
def xname() -> str:
    return unique_name("test-x")


@pytest.fixture
def cleanup(connection: BlockingConnection) -> Iterator[list[str]]:
    """Exchange names to delete after the test (the shared broker outlives it)."""
    with deleted_after(connection, "exchange") as names:
        yield names


# -- declare --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ex_type", EXCHANGE_TYPES)
def test_declare_each_type_then_passive_finds_it(channel: BlockingChannel, xname: str, ex_type: str,
                                                  cleanup: list[str]) -> None:
    cleanup.append(xname)
    ok = channel.exchange_declare(xname, ex_type)
    assert isinstance(ok.method, pika.spec.Exchange.DeclareOk)
    # passive ignores the type and flags
    channel.exchange_declare(xname, "fanout" if ex_type != "fanout" else "direct", passive=True)
    # an identical redeclare is fine
    channel.exchange_declare(xname, ex_type)


def test_passive_declare_of_missing_exchange_closes_channel_404(channel: BlockingChannel,
                                                                xname: str) -> None:
    err = closed_with(channel, channel.exchange_declare, xname, passive=True)
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no exchange '{xname}' in vhost '/'"


def test_passive_declare_of_default_exchange_is_refused(channel: BlockingChannel) -> None:
    err = closed_with(channel, channel.exchange_declare, "", passive=True)
    assert err.reply_code == 403
    assert err.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"


def test_declare_default_exchange_is_refused(channel: BlockingChannel) -> None:
    err = closed_with(channel, channel.exchange_declare, "", "direct")
    assert err.reply_code == 403


@pytest.mark.parametrize("flag, first, second", [
    ("durable", {"durable": True}, {"durable": False}),
    ("auto_delete", {"auto_delete": False}, {"auto_delete": True}),
    ("internal", {"internal": True}, {"internal": False}),
])
def test_redeclare_with_different_flag_is_406(connection: BlockingConnection, xname: str, flag: str,
                                              first: dict, second: dict, cleanup: list[str]) -> None:
    cleanup.append(xname)
    ch = connection.channel()
    ch.exchange_declare(xname, "direct", **first)
    err = closed_with(ch, ch.exchange_declare, xname, "direct", **second)
    assert err.reply_code == 406
    want, have = (("true" if v else "false") for v in (second[flag], first[flag]))
    assert err.reply_text == (f"PRECONDITION_FAILED - inequivalent arg '{flag}' for exchange '{xname}' "
                              f"in vhost '/': received '{want}' but current is '{have}'")
    # the original is unchanged
    connection.channel().exchange_declare(xname, "direct", **first)


def test_redeclare_with_different_type_is_406(connection: BlockingConnection, xname: str,
                                              cleanup: list[str]) -> None:
    cleanup.append(xname)
    ch = connection.channel()
    ch.exchange_declare(xname, "topic")
    err = closed_with(ch, ch.exchange_declare, xname, "fanout")
    assert err.reply_code == 406
    assert err.reply_text == (f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{xname}' in "
                              "vhost '/': received 'fanout' but current is 'topic'")


def test_redeclare_with_different_alternate_exchange_is_406(connection: BlockingConnection, xname: str,
                                                            cleanup: list[str]) -> None:
    cleanup.append(xname)
    ch = connection.channel()
    ch.exchange_declare(xname, "direct", arguments={"alternate-exchange": "ae-one"})
    err = closed_with(ch, ch.exchange_declare, xname, "direct",
                      arguments={"alternate-exchange": "ae-two"})
    assert err.reply_code == 406
    assert "inequivalent arg 'alternate-exchange'" in err.reply_text


def test_declare_amq_prefixed_new_exchange_is_403(channel: BlockingChannel) -> None:
    err = closed_with(channel, channel.exchange_declare, "amq.hare-test", "direct")
    assert err.reply_code == 403
    assert err.reply_text == ("ACCESS_REFUSED - exchange name 'amq.hare-test' contains reserved prefix "
                              "'amq.*'")


def test_unknown_exchange_type_closes_connection_503(hare_url: str, xname: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(hare_url))
    try:
        ch = conn.channel()
        with pytest.raises(ConnectionClosedByBroker) as info:
            ch.exchange_declare(xname, "no-such-type")
        assert info.value.reply_code == 503
        assert info.value.reply_text == "COMMAND_INVALID - unknown exchange type 'no-such-type'"
        assert not conn.is_open
    finally:
        if conn.is_open:
            conn.close()


# -- the pre-declared exchanges ---------------------------------------------------------------------


@pytest.mark.parametrize("name, ex_type", [
    ("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
    ("amq.headers", "headers"), ("amq.match", "headers"),
])
def test_standard_exchange_exists_with_its_type(connection: BlockingConnection, name: str,
                                                ex_type: str) -> None:
    ch = connection.channel()
    ch.exchange_declare(name, passive=True)
    # redeclaring an existing amq.* exchange as it is succeeds (the prefix check is for creation)
    ch.exchange_declare(name, ex_type, durable=True)
    other = "fanout" if ex_type != "fanout" else "direct"
    err = closed_with(ch, ch.exchange_declare, name, other, durable=True)
    assert err.reply_code == 406
    assert f"received '{other}' but current is '{ex_type}'" in err.reply_text


def test_standard_exchanges_are_durable(connection: BlockingConnection) -> None:
    ch = connection.channel()
    err = closed_with(ch, ch.exchange_declare, "amq.direct", "direct", durable=False)
    assert err.reply_code == 406
    assert "inequivalent arg 'durable'" in err.reply_text


def test_trace_exchange_exists_and_is_internal(connection: BlockingConnection) -> None:
    ch = connection.channel()
    ch.exchange_declare("amq.rabbitmq.trace", passive=True)
    ch.exchange_declare("amq.rabbitmq.trace", "topic", durable=True, internal=True)


def test_standard_exchanges_route_by_their_type(channel: BlockingChannel) -> None:
    q = temp_queue(channel)
    channel.queue_bind(q, "amq.direct", "rk")
    channel.queue_bind(q, "amq.fanout", "ignored")
    channel.queue_bind(q, "amq.topic", "a.*")
    channel.queue_bind(q, "amq.headers", arguments={"h": "1"})
    channel.queue_bind(q, "amq.match", arguments={"m": "1"})
    channel.basic_publish("amq.direct", "rk", b"direct")
    channel.basic_publish("amq.direct", "other", b"not-direct")
    channel.basic_publish("amq.fanout", "anything", b"fanout")
    channel.basic_publish("amq.topic", "a.b", b"topic")
    channel.basic_publish("amq.topic", "a.b.c", b"not-topic")
    channel.basic_publish("amq.headers", "", b"headers",
                          pika.BasicProperties(headers={"h": "1"}))
    channel.basic_publish("amq.match", "", b"match", pika.BasicProperties(headers={"m": "1"}))
    channel.basic_publish("amq.match", "", b"not-match", pika.BasicProperties(headers={"m": "2"}))
    assert drain(channel, q) == [b"direct", b"fanout", b"topic", b"headers", b"match"]


# -- delete ------------------------------------------------------------------------------------------


def test_delete_removes_exchange(connection: BlockingConnection, xname: str) -> None:
    ch = connection.channel()
    ch.exchange_declare(xname, "fanout")
    ok = ch.exchange_delete(xname)
    assert isinstance(ok.method, pika.spec.Exchange.DeleteOk)
    err = closed_with(ch, ch.exchange_declare, xname, passive=True)
    assert err.reply_code == 404


def test_delete_missing_exchange_is_ok(channel: BlockingChannel, xname: str) -> None:
    ok = channel.exchange_delete(xname)
    assert isinstance(ok.method, pika.spec.Exchange.DeleteOk)
    assert channel.is_open


def test_delete_if_unused_on_bound_exchange_is_406(connection: BlockingConnection, xname: str,
                                                   cleanup: list[str]) -> None:
    cleanup.append(xname)
    ch = connection.channel()
    ch.exchange_declare(xname, "fanout")
    q = temp_queue(ch)
    ch.queue_bind(q, xname)
    err = closed_with(ch, ch.exchange_delete, xname, if_unused=True)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - exchange '{xname}' in vhost '/' in use"
    ch2 = connection.channel()
    ch2.exchange_declare(xname, passive=True)  # still there
    ch2.queue_unbind(q, xname)
    ch2.exchange_delete(xname, if_unused=True)
    err = closed_with(ch2, ch2.exchange_declare, xname, passive=True)
    assert err.reply_code == 404


def test_delete_if_unused_ignores_bindings_where_exchange_is_destination(
        connection: BlockingConnection, xname: str, cleanup: list[str]) -> None:
    src = xname + "-src"
    cleanup.append(src)
    ch = connection.channel()
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(xname, "fanout")
    ch.exchange_bind(destination=xname, source=src)
    ch.exchange_delete(xname, if_unused=True)
    err = closed_with(ch, ch.exchange_declare, xname, passive=True)
    assert err.reply_code == 404


def test_delete_amq_exchange_is_403(channel: BlockingChannel) -> None:
    err = closed_with(channel, channel.exchange_delete, "amq.direct")
    assert err.reply_code == 403
    assert err.reply_text == ("ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' "
                              "not allowed")


def test_delete_default_exchange_is_403(channel: BlockingChannel) -> None:
    err = closed_with(channel, channel.exchange_delete, "")
    assert err.reply_code == 403
    assert err.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"


def test_deleting_exchange_removes_its_bindings(connection: BlockingConnection, xname: str) -> None:
    ch = connection.channel()
    ch.exchange_declare(xname, "fanout")
    q = temp_queue(ch)
    ch.queue_bind(q, xname)
    ch.exchange_delete(xname)
    ch.exchange_declare(xname, "fanout")
    ch.basic_publish(xname, "", b"after")
    assert drain(ch, q) == []
    ch.exchange_delete(xname)


# -- auto-delete and internal -----------------------------------------------------------------------


def test_auto_delete_exchange_survives_until_it_had_a_binding(connection: BlockingConnection,
                                                              xname: str) -> None:
    ch = connection.channel()
    ch.exchange_declare(xname, "direct", auto_delete=True)
    ch.exchange_declare(xname, passive=True)  # no binding yet: still there
    q = temp_queue(ch)
    ch.queue_bind(q, xname, "a")
    ch.queue_bind(q, xname, "b")
    ch.queue_unbind(q, xname, "a")
    ch.exchange_declare(xname, passive=True)  # one binding left
    ch.queue_unbind(q, xname, "b")
    err = closed_with(ch, ch.exchange_declare, xname, passive=True)
    assert err.reply_code == 404


def test_auto_delete_exchange_goes_when_its_last_bound_queue_is_deleted(
        connection: BlockingConnection, xname: str) -> None:
    ch = connection.channel()
    ch.exchange_declare(xname, "fanout", auto_delete=True)
    q = temp_queue(ch)
    ch.queue_bind(q, xname)
    ch.queue_delete(q)
    err = closed_with(ch, ch.exchange_declare, xname, passive=True)
    assert err.reply_code == 404


def test_auto_delete_exchange_goes_when_its_exchange_binding_is_removed(
        connection: BlockingConnection, xname: str, cleanup: list[str]) -> None:
    dest = xname + "-dest"
    cleanup.append(dest)
    ch = connection.channel()
    ch.exchange_declare(xname, "fanout", auto_delete=True)
    ch.exchange_declare(dest, "fanout")
    ch.exchange_bind(destination=dest, source=xname)
    ch.exchange_unbind(destination=dest, source=xname)
    err = closed_with(ch, ch.exchange_declare, xname, passive=True)
    assert err.reply_code == 404


def test_internal_exchange_refuses_direct_publish_403(connection: BlockingConnection, xname: str,
                                                      cleanup: list[str]) -> None:
    cleanup.append(xname)
    ch = connection.channel()
    ch.exchange_declare(xname, "fanout", internal=True)
    ch.basic_publish(xname, "", b"x")
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.queue_declare("", exclusive=True)  # a sync call to collect the close
    assert info.value.reply_code == 403
    assert info.value.reply_text == (f"ACCESS_REFUSED - cannot publish to internal exchange '{xname}' "
                                     "in vhost '/'")


def test_internal_exchange_routes_from_exchange_binding(connection: BlockingConnection, xname: str,
                                                        cleanup: list[str]) -> None:
    front = xname + "-front"
    cleanup.extend([xname, front])
    ch = connection.channel()
    ch.exchange_declare(xname, "fanout", internal=True)
    ch.exchange_declare(front, "direct")
    ch.exchange_bind(destination=xname, source=front, routing_key="in")
    q = temp_queue(ch)
    ch.queue_bind(q, xname)
    ch.basic_publish(front, "in", b"via-front")
    ch.basic_publish(front, "other", b"unrouted")
    assert drain(ch, q) == [b"via-front"]


# -- exchange-to-exchange bindings -------------------------------------------------------------------


def test_exchange_bind_routes_through_and_unbind_stops_it(connection: BlockingConnection, xname: str,
                                                          cleanup: list[str]) -> None:
    src, dst = xname + "-src", xname + "-dst"
    cleanup.extend([src, dst])
    ch = connection.channel()
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "direct")
    ok = ch.exchange_bind(destination=dst, source=src, routing_key="k.*")
    assert isinstance(ok.method, pika.spec.Exchange.BindOk)
    q = temp_queue(ch)
    ch.queue_bind(q, dst, "k.1")
    ch.basic_publish(src, "k.1", b"one")
    ch.basic_publish(src, "k.2", b"two")  # passes src, no dst binding for k.2
    ch.basic_publish(src, "j.1", b"three")  # stopped at src
    assert drain(ch, q) == [b"one"]
    ok = ch.exchange_unbind(destination=dst, source=src, routing_key="k.*")
    assert isinstance(ok.method, pika.spec.Exchange.UnbindOk)
    ch.basic_publish(src, "k.1", b"after-unbind")
    assert drain(ch, q) == []


def test_exchange_chain_delivers_once_per_queue(connection: BlockingConnection, xname: str,
                                                cleanup: list[str]) -> None:
    names = [f"{xname}-{i}" for i in range(4)]
    cleanup.extend(names)
    ch = connection.channel()
    for n in names:
        ch.exchange_declare(n, "fanout")
    for a, b in zip(names, names[1:], strict=False):
        ch.exchange_bind(destination=b, source=a)
    ch.exchange_bind(destination=names[3], source=names[0])  # a shortcut: two paths to the end
    qs = [temp_queue(ch) for _ in names]
    for n, q in zip(names, qs, strict=True):
        ch.queue_bind(q, n)
    ch.queue_bind(qs[3], names[1])  # the last queue is reachable from two exchanges
    ch.basic_publish(names[0], "", b"m")
    assert [drain(ch, q) for q in qs] == [[b"m"]] * 4


def test_exchange_cycle_delivers_once_and_terminates(connection: BlockingConnection, xname: str,
                                                     cleanup: list[str]) -> None:
    a, b, c = xname + "-a", xname + "-b", xname + "-c"
    cleanup.extend([a, b, c])
    ch = connection.channel()
    for n in (a, b, c):
        ch.exchange_declare(n, "fanout")
    ch.exchange_bind(destination=b, source=a)
    ch.exchange_bind(destination=c, source=b)
    ch.exchange_bind(destination=a, source=c)
    ch.exchange_bind(destination=a, source=a)  # a self-loop too
    qa, qc = temp_queue(ch), temp_queue(ch)
    ch.queue_bind(qa, a)
    ch.queue_bind(qc, c)
    ch.basic_publish(b, "", b"around")
    ch.basic_publish(a, "", b"again")
    assert drain(ch, qa) == [b"around", b"again"]
    assert drain(ch, qc) == [b"around", b"again"]


def test_exchange_bind_to_missing_exchange_is_404(connection: BlockingConnection, xname: str,
                                                  cleanup: list[str]) -> None:
    cleanup.append(xname)
    ch = connection.channel()
    ch.exchange_declare(xname, "fanout")
    err = closed_with(ch, ch.exchange_bind, destination=xname + "-missing", source=xname)
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no exchange '{xname}-missing' in vhost '/'"
    ch = connection.channel()
    err = closed_with(ch, ch.exchange_bind, destination=xname, source=xname + "-nosrc")
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no exchange '{xname}-nosrc' in vhost '/'"


def test_exchange_bind_with_both_missing_names_the_source(channel: BlockingChannel, xname: str) -> None:
    err = closed_with(channel, channel.exchange_bind, destination=xname + "-d", source=xname + "-s")
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no exchange '{xname}-s' in vhost '/'"


def test_exchange_bind_with_default_exchange_is_403(connection: BlockingConnection, xname: str,
                                                    cleanup: list[str]) -> None:
    cleanup.append(xname)
    ch = connection.channel()
    ch.exchange_declare(xname, "fanout")
    err = closed_with(ch, ch.exchange_bind, destination=xname, source="")
    assert err.reply_code == 403
    ch = connection.channel()
    err = closed_with(ch, ch.exchange_bind, destination="", source=xname)
    assert err.reply_code == 403


def test_exchange_unbind_of_missing_things_is_ok(channel: BlockingChannel, xname: str) -> None:
    channel.exchange_unbind(destination=xname + "-d", source=xname + "-s", routing_key="k")
    channel.exchange_declare(xname, "fanout")
    channel.exchange_unbind(destination=xname, source="amq.fanout", routing_key="never-bound")
    assert channel.is_open
    channel.exchange_delete(xname)


# -- alternate exchange ------------------------------------------------------------------------------


def test_unroutable_message_goes_to_alternate_exchange(connection: BlockingConnection, xname: str,
                                                       cleanup: list[str]) -> None:
    ae = xname + "-ae"
    cleanup.extend([xname, ae])
    ch = connection.channel()
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(xname, "direct", arguments={"alternate-exchange": ae})
    routed, spill = temp_queue(ch), temp_queue(ch)
    ch.queue_bind(routed, xname, "known")
    ch.queue_bind(spill, ae)
    ch.basic_publish(xname, "known", b"routed")
    ch.basic_publish(xname, "unknown", b"spilled")
    assert drain(ch, routed) == [b"routed"]
    assert drain(ch, spill) == [b"spilled"]


def test_alternate_exchange_counts_as_routed_for_mandatory(connection: BlockingConnection, xname: str,
                                                           cleanup: list[str]) -> None:
    ae = xname + "-ae"
    cleanup.extend([xname, ae])
    ch = connection.channel()
    ch.confirm_delivery()
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(xname, "direct", arguments={"alternate-exchange": ae})
    spill = temp_queue(ch)
    ch.queue_bind(spill, ae)
    ch.basic_publish(xname, "nowhere", b"m", mandatory=True)  # would raise UnroutableError if returned
    assert drain(ch, spill) == [b"m"]


def test_missing_alternate_exchange_drops_message(connection: BlockingConnection, xname: str,
                                                  cleanup: list[str]) -> None:
    cleanup.append(xname)
    ch = connection.channel()
    ch.exchange_declare(xname, "direct", arguments={"alternate-exchange": xname + "-absent"})
    q = temp_queue(ch)
    ch.queue_bind(q, xname, "k")
    ch.basic_publish(xname, "other", b"dropped")
    ch.basic_publish(xname, "k", b"kept")
    assert drain(ch, q) == [b"kept"]


def test_alternate_exchange_is_used_only_when_the_exchange_itself_routes_nowhere(
        connection: BlockingConnection, xname: str, cleanup: list[str]) -> None:
    ae, inner = xname + "-ae", xname + "-inner"
    cleanup.extend([xname, ae, inner])
    ch = connection.channel()
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(inner, "direct")  # bound to nothing
    ch.exchange_declare(xname, "fanout", arguments={"alternate-exchange": ae})
    ch.exchange_bind(destination=inner, source=xname)
    spill = temp_queue(ch)
    ch.queue_bind(spill, ae)
    ch.basic_publish(xname, "k", b"lost-downstream")
    assert drain(ch, spill) == []


def test_alternate_exchange_chain_and_loop(connection: BlockingConnection, xname: str,
                                           cleanup: list[str]) -> None:
    a, b = xname + "-a", xname + "-b"
    cleanup.extend([a, b])
    ch = connection.channel()
    # a's AE is b, b's AE is a: an unroutable message must not loop
    ch.exchange_declare(a, "direct", arguments={"alternate-exchange": b})
    ch.exchange_declare(b, "direct", arguments={"alternate-exchange": a})
    q = temp_queue(ch)
    ch.queue_bind(q, b, "only-b")
    ch.basic_publish(a, "only-b", b"via-ae")
    ch.basic_publish(a, "none", b"lost")
    assert drain(ch, q) == [b"via-ae"]
