"""The sans-IO Connection without sockets: bytes in through receive_data, frames out through
data_to_send, against a real in-process Broker.

These drive hare's own state machine directly, so they never run against RabbitMQ; the reply
codes they assert are RabbitMQ's (see tests/integration for the same cases over sockets).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hare.amqp import spec
from hare.amqp.frames import body_frames, header_frame, method_frame, pack_header
from hare.amqp.properties import decode_properties, encode_properties
from hare.broker.broker import Broker, BrokerConfig
from hare.session.connection import CLOSING_CONN, OPENED, Connection

PEER = ("127.0.0.1", 40000)

Frame = tuple[int, int, bytes]


class Peer:
    """A client talking to one Connection through bytes only."""

    def __init__(self, config: BrokerConfig | None = None, broker: Broker | None = None) -> None:
        self.broker = broker or Broker(config)
        self.conn = Connection(self.broker, PEER)
        self.inbox = b""

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.inbox += b"".join(self.conn.data_to_send())

    def frames(self) -> list[Frame]:
        """Every complete frame received so far (consumed from the inbox)."""
        out = []
        buf = self.inbox
        while len(buf) >= 8:
            ftype, ch, size = struct.unpack_from(">BHI", buf, 0)
            if len(buf) < 8 + size:
                break
            assert buf[7 + size] == 0xCE, "bad frame end from hare"
            out.append((ftype, ch, buf[7 : 7 + size]))
            buf = buf[8 + size :]
        self.inbox = buf
        return out

    def methods(self) -> list[tuple[int, spec.Method]]:
        result = []
        for ftype, ch, payload in self.frames():
            assert ftype == 1, f"expected only method frames, got type {ftype}"
            result.append((ch, decode_method(payload)))
        return result

    def expect(self, *classes: type[spec.Method]) -> list[spec.Method]:
        got = self.methods()
        assert [type(m) for _, m in got] == list(classes), got
        return [m for _, m in got]

    def send(self, channel: int, method: spec.Method) -> None:
        self.feed(method_frame(channel, method))

    def handshake(self) -> None:
        self.feed(spec.PROTOCOL_HEADER)
        self.expect(spec.ConnectionStart)
        self.feed(handshake_bytes()[len(spec.PROTOCOL_HEADER) :])
        self.expect(spec.ConnectionTune, spec.ConnectionOpenOk)
        assert self.conn.state == OPENED

    def open_channel(self, channel: int = 1) -> None:
        self.send(channel, spec.ChannelOpen())
        self.expect(spec.ChannelOpenOk)

    def declare(self, queue: str, channel: int = 1) -> None:
        self.send(channel, spec.QueueDeclare(queue=queue))
        (ok,) = self.expect(spec.QueueDeclareOk)
        assert ok.queue == queue

    def expect_close(self, code: int, class_id: int | None = None, method_id: int | None = None) -> str:
        """The connection sent connection.close with ``code``; finish the close handshake."""
        frames = self.frames()
        closes = [decode_method(p) for t, ch, p in frames if t == 1 and ch == 0]
        assert closes and isinstance(closes[-1], spec.ConnectionClose), frames
        close = closes[-1]
        assert close.reply_code == code, close.reply_text
        if class_id is not None:
            assert (close.class_id, close.method_id) == (class_id, method_id)
        assert self.conn.state == CLOSING_CONN
        assert not self.conn.closed
        self.send(0, spec.ConnectionCloseOk())
        assert self.conn.closed
        return close.reply_text


def decode_method(payload: bytes) -> spec.Method:
    return spec.METHODS[struct.unpack_from(">I", payload)[0]].decode(payload, 4)


def handshake_bytes(frame_max: int = 131072) -> bytes:
    return (spec.PROTOCOL_HEADER
            + method_frame(0, spec.ConnectionStartOk(
                client_properties={"product": "sansio", "capabilities": {
                    "consumer_cancel_notify": True, "publisher_confirms": True}},
                mechanism="PLAIN", response=b"\x00guest\x00guest"))
            + method_frame(0, spec.ConnectionTuneOk(channel_max=2047, frame_max=frame_max, heartbeat=0))
            + method_frame(0, spec.ConnectionOpen(virtual_host="/")))


def publish_bytes(channel: int, routing_key: str, body: bytes, props: dict[str, Any] | None = None,
                  exchange: str = "", frame_max: int = 131072) -> bytes:
    out = [method_frame(channel, spec.BasicPublish(exchange=exchange, routing_key=routing_key)),
           header_frame(channel, len(body), encode_properties(props or {}))]
    body_frames(out, channel, body, frame_max)
    return b"".join(out)


@pytest.fixture
def peer() -> Peer:
    p = Peer()
    p.handshake()
    p.open_channel(1)
    return p


# -- handshake -------------------------------------------------------------------------------------


def test_handshake_negotiates_rabbitmq_defaults() -> None:
    p = Peer()
    p.feed(spec.PROTOCOL_HEADER)
    (start,) = p.expect(spec.ConnectionStart)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms == b"AMQPLAIN PLAIN"  # RabbitMQ 3.10's order
    assert start.server_properties["capabilities"]["publisher_confirms"] is True
    p.send(0, spec.ConnectionStartOk(client_properties={}, mechanism="PLAIN",
                                     response=b"\x00guest\x00guest"))
    (tune,) = p.expect(spec.ConnectionTune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)
    p.send(0, spec.ConnectionTuneOk(channel_max=100, frame_max=8192, heartbeat=0))
    assert p.frames() == []
    p.send(0, spec.ConnectionOpen(virtual_host="/"))
    p.expect(spec.ConnectionOpenOk)
    assert p.conn.state == OPENED
    assert (p.conn.channel_max, p.conn.frame_max) == (100, 8192)
    assert p.conn in p.broker.connections


def test_protocol_header_one_byte_at_a_time() -> None:
    p = Peer()
    for b in spec.PROTOCOL_HEADER[:-1]:
        p.feed(bytes((b,)))
        assert p.inbox == b""
    p.feed(spec.PROTOCOL_HEADER[-1:])
    p.expect(spec.ConnectionStart)


@pytest.mark.parametrize("header", [b"AMQP\x00\x00\x08\x00", b"AMQP\x01\x01\x08\x00",
                                    b"GET / HTTP/1.1\r\n\r\n", b"\x01\x00\x00\x00\x00\x00\x00\x00"])
def test_bad_protocol_header_gets_ours_back_and_closes(header: bytes) -> None:
    p = Peer()
    p.feed(header)
    assert p.inbox == b"AMQP\x00\x00\x09\x01"
    assert p.conn.closed
    p.feed(handshake_bytes()[8:])  # nothing is read after that
    assert p.inbox == b"AMQP\x00\x00\x09\x01"


def test_short_garbage_waits_for_eight_octets_like_rabbitmq() -> None:
    p = Peer()
    p.feed(b"GET")
    assert p.inbox == b"" and not p.conn.closed  # (the shell's handshake timeout ends it)
    p.feed(b" / HTTP")
    assert p.inbox == b"AMQP\x00\x00\x09\x01" and p.conn.closed


def test_amqp_0_9_header_is_taken_as_0_9_1() -> None:
    p = Peer()
    p.feed(b"AMQP\x01\x01\x00\x09")
    (start,) = p.expect(spec.ConnectionStart)
    assert (start.version_major, start.version_minor) == (0, 9)


def test_wrong_password_closes_with_403() -> None:
    p = Peer()
    p.feed(spec.PROTOCOL_HEADER)
    p.expect(spec.ConnectionStart)
    p.send(0, spec.ConnectionStartOk(client_properties={"capabilities": {
        "authentication_failure_close": True}}, mechanism="PLAIN", response=b"\x00guest\x00nope"))
    (close,) = p.expect(spec.ConnectionClose)
    assert (close.reply_code, close.class_id, close.method_id) == (403, 0, 0)
    assert close.reply_text.startswith("ACCESS_REFUSED - Login was refused")
    assert p.conn.closed  # the socket closes; no close-ok is awaited


def test_wrong_password_without_the_capability_just_closes() -> None:
    p = Peer()
    p.feed(spec.PROTOCOL_HEADER)
    p.expect(spec.ConnectionStart)
    p.send(0, spec.ConnectionStartOk(client_properties={}, mechanism="PLAIN",
                                     response=b"\x00guest\x00nope"))
    assert p.conn.closed
    assert p.frames() == []


def test_frame_error_before_start_ok_just_closes_the_socket() -> None:
    p = Peer()
    p.feed(spec.PROTOCOL_HEADER)
    p.expect(spec.ConnectionStart)
    p.feed(pack_header(1, 0, 4) + b"\x00\x0a\x00\x0b" + b"\x00")
    assert p.conn.closed
    assert p.frames() == []


# -- publish and consume ---------------------------------------------------------------------------


def test_publish_consume_ack_flow(peer: Peer) -> None:
    peer.declare("q")
    peer.send(1, spec.BasicConsume(queue="q", consumer_tag="ctag"))
    peer.expect(spec.BasicConsumeOk)
    body = bytes(range(256)) * 1000  # several body frames each way
    peer.feed(publish_bytes(1, "q", body, {"content_type": "application/x", "headers": {"h": 1}}))
    frames = peer.frames()
    assert [f[0] for f in frames] == [1, 2, 3, 3]
    deliver = decode_method(frames[0][2])
    assert isinstance(deliver, spec.BasicDeliver)
    assert (deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered) == ("ctag", 1, False)
    assert (deliver.exchange, deliver.routing_key) == ("", "q")
    class_id, _, size = struct.unpack_from(">HHQ", frames[1][2])
    assert (class_id, size) == (60, len(body))
    assert decode_properties(frames[1][2][12:]) == {"content_type": "application/x", "headers": {"h": 1}}
    assert all(len(f[2]) <= 131072 - 8 for f in frames[2:])
    assert b"".join(f[2] for f in frames[2:]) == body
    peer.send(1, spec.BasicAck(delivery_tag=1))
    assert peer.frames() == []
    peer.send(1, spec.QueueDeclare(queue="q", passive=True))
    (ok,) = peer.expect(spec.QueueDeclareOk)
    assert (ok.message_count, ok.consumer_count) == (0, 1)


def test_publish_then_get_with_empty_body_and_confirms(peer: Peer) -> None:
    peer.declare("q")
    peer.send(1, spec.ConfirmSelect())
    peer.expect(spec.ConfirmSelectOk)
    peer.feed(publish_bytes(1, "q", b"") + publish_bytes(1, "q", b"two"))
    (ack,) = peer.expect(spec.BasicAck)
    assert (ack.delivery_tag, ack.multiple) == (2, True)
    for body, remaining in ((b"", 1), (b"two", 0)):
        peer.send(1, spec.BasicGet(queue="q", no_ack=True))
        frames = peer.frames()
        get_ok = decode_method(frames[0][2])
        assert isinstance(get_ok, spec.BasicGetOk)
        assert get_ok.message_count == remaining
        assert b"".join(f[2] for f in frames[2:]) == body
    peer.send(1, spec.BasicGet(queue="q"))
    peer.expect(spec.BasicGetEmpty)


def test_many_frames_in_one_receive_data_call(peer: Peer) -> None:
    peer.declare("q")
    peer.feed(b"".join(publish_bytes(1, "q", b"m%d" % i) for i in range(500))
              + method_frame(1, spec.BasicConsume(queue="q", consumer_tag="c", no_ack=True)))
    frames = peer.frames()
    assert isinstance(decode_method(frames[0][2]), spec.BasicConsumeOk)
    bodies = [payload for ftype, _, payload in frames if ftype == 3]
    assert bodies == [b"m%d" % i for i in range(500)]
    tags = [decode_method(p).delivery_tag for t, _, p in frames[1:] if t == 1]
    assert tags == list(range(1, 501))


def _script() -> bytes:
    """A whole session as one byte stream: handshake, declare, publish, consume, close."""
    return (handshake_bytes()
            + method_frame(1, spec.ChannelOpen())
            + method_frame(1, spec.QueueDeclare(queue="q"))
            + publish_bytes(1, "q", b"first", {"message_id": "1"})
            + publish_bytes(1, "q", b"x" * 300_000, frame_max=131072)
            + b"\x08\x00\x00\x00\x00\x00\x00\xce"  # a heartbeat in between
            + method_frame(1, spec.BasicConsume(queue="q", consumer_tag="c", no_ack=True))
            + publish_bytes(1, "q", b"last")
            + method_frame(1, spec.ChannelClose(reply_code=200, reply_text="bye"))
            + method_frame(0, spec.ConnectionClose(reply_code=200, reply_text="bye")))


def _run(chunks: list[bytes]) -> tuple[bytes, Peer]:
    p = Peer()
    for chunk in chunks:
        p.feed(chunk)
    return p.inbox, p


def test_script_reference_output() -> None:
    out, p = _run([_script()])
    p.inbox = out
    kinds = [(t, type(decode_method(pl)).__name__ if t == 1 else None) for t, _, pl in p.frames()]
    methods = [k for t, k in kinds if t == 1]
    assert methods == ["ConnectionStart", "ConnectionTune", "ConnectionOpenOk", "ChannelOpenOk",
                       "QueueDeclareOk", "BasicConsumeOk", "BasicDeliver", "BasicDeliver",
                       "BasicDeliver", "ChannelCloseOk", "ConnectionCloseOk"]
    assert p.conn.closed
    assert p.inbox == b""


def test_frames_split_at_every_byte_boundary_still_parse() -> None:
    script = _script()
    whole, _ = _run([script])
    one_by_one, p = _run([script[i : i + 1] for i in range(len(script))])
    assert one_by_one == whole
    assert p.conn.closed


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_frames_split_anywhere_still_parse(sizes: list[int]) -> None:
    script = _script()
    chunks, pos, i = [], 0, 0
    while pos < len(script):
        size = sizes[i % len(sizes)]
        chunks.append(script[pos : pos + size])
        pos += size
        i += 1
    out, _ = _run(chunks)
    assert out == _run([script])[0]


# -- frame and protocol errors ----------------------------------------------------------------------


def test_wrong_frame_end_octet_closes_with_501(peer: Peer) -> None:
    peer.feed(method_frame(1, spec.QueueDeclare(queue="q"))[:-1] + b"\x00")
    assert "FRAME_ERROR" in peer.expect_close(501)


def test_frame_larger_than_frame_max_closes_with_501(peer: Peer) -> None:
    # only the 7-byte header is needed to know the frame is too large; like RabbitMQ, hare takes
    # payloads of up to frame_max octets (8 more than a frame of frame_max octets holds)
    peer.feed(pack_header(3, 1, 131073))
    assert peer.expect_close(501) == ("FRAME_ERROR - type 3, all octets = <<>>: "
                                      "{frame_too_large,131073,131064}")


def test_frame_exactly_frame_max_is_accepted(peer: Peer) -> None:
    peer.declare("q")
    body = b"b" * (131072 - 8)
    peer.feed(publish_bytes(1, "q", body))
    peer.send(1, spec.BasicGet(queue="q", no_ack=True))
    frames = peer.frames()
    assert isinstance(decode_method(frames[0][2]), spec.BasicGetOk)
    assert frames[2][2] == body


def test_frame_max_is_the_negotiated_one() -> None:
    p = Peer()
    p.feed(handshake_bytes(frame_max=4096))
    p.frames()
    p.feed(method_frame(1, spec.ChannelOpen()) + publish_bytes(1, "q", b"x" * 4097, frame_max=8192))
    assert "{frame_too_large,4097,4088}" in p.expect_close(501)


def test_unknown_method_closes_with_540_naming_it(peer: Peer) -> None:
    # (RabbitMQ's reader process dies on a method id it does not know; hare says what it got)
    peer.feed(pack_header(1, 1, 4) + struct.pack(">HH", 60, 99) + b"\xce")
    assert peer.expect_close(540, 60, 99) == "NOT_IMPLEMENTED - unknown method (class 60, method 99)"


def test_unknown_frame_type_closes_with_501(peer: Peer) -> None:
    peer.feed(pack_header(9, 0, 0) + b"\xce")
    peer.expect_close(501)


def test_heartbeat_on_a_channel_closes_with_505(peer: Peer) -> None:
    peer.feed(pack_header(8, 1, 0) + b"\xce")
    assert peer.expect_close(505) == "UNEXPECTED_FRAME - type 8, all octets = <<>>"


def test_method_on_unopened_channel_closes_with_504(peer: Peer) -> None:
    peer.send(2, spec.QueueDeclare(queue="q"))
    assert "CHANNEL_ERROR" in peer.expect_close(504, 50, 10)


def test_channel_open_twice_closes_with_504(peer: Peer) -> None:
    peer.send(1, spec.ChannelOpen())
    peer.expect_close(504, 20, 10)


def test_content_header_without_publish_closes_with_505(peer: Peer) -> None:
    peer.feed(header_frame(1, 3, b"\x00\x00"))
    assert "UNEXPECTED_FRAME" in peer.expect_close(505)


def test_content_body_without_publish_closes_with_505(peer: Peer) -> None:
    peer.feed(pack_header(3, 1, 3) + b"abc\xce")
    peer.expect_close(505)


def test_publish_followed_by_a_method_instead_of_the_header_closes_with_505(peer: Peer) -> None:
    peer.declare("q")
    peer.feed(method_frame(1, spec.BasicPublish(routing_key="q"))
              + method_frame(1, spec.QueueDeclare(queue="q")))
    assert "UNEXPECTED_FRAME" in peer.expect_close(505)


def test_header_then_method_instead_of_the_body_closes_with_505(peer: Peer) -> None:
    peer.feed(method_frame(1, spec.BasicPublish(routing_key="q")) + header_frame(1, 5, b"\x00\x00")
              + method_frame(1, spec.BasicQos(prefetch_count=1)))
    peer.expect_close(505)


def test_body_larger_than_declared_keeps_the_channel_awaiting_body(peer: Peer) -> None:
    # RabbitMQ counts the remaining size down past zero: it awaits body frames for ever
    peer.feed(method_frame(1, spec.BasicPublish(routing_key="q")) + header_frame(1, 2, b"\x00\x00")
              + pack_header(3, 1, 3) + b"abc\xce" + pack_header(3, 1, 3) + b"def\xce")
    assert peer.frames() == []
    peer.send(1, spec.BasicQos())
    assert peer.expect_close(505, 60, 40) == ("UNEXPECTED_FRAME - expected content body, got non "
                                              "content body frame instead")


def test_content_header_for_another_class_closes_with_505(peer: Peer) -> None:
    peer.feed(method_frame(1, spec.BasicPublish(routing_key="q"))
              + header_frame(1, 0, b"\x00\x00", class_id=50))
    peer.expect_close(505)


@pytest.mark.parametrize(("payload", "text", "ids"), [
    # method frame shorter than class + method ids
    (b"\x00\x32", "FRAME_ERROR - type 1, all octets = <<0,50>>: unknown_frame", (0, 0)),
    (b"\x00\x32\x00\x0a\x00", "FRAME_ERROR - cannot decode <<0>>", (50, 10)),  # truncated
    (b"\x00\x3c\x00\x28\x00\x00\x05ab", "FRAME_ERROR - cannot decode <<0,0,5,97,98>>", (60, 40)),
    (b"\x00\x3c\x00\x50\x00\x00\x00", "FRAME_ERROR - cannot decode <<0,0,0>>", (60, 80)),
    (b"\x00\x3c\x00\x0a" + b"\x00" * 8, "FRAME_ERROR - cannot decode <<0,0,0,0,0,0,0,0>>", (60, 10)),
])
def test_malformed_method_arguments_close_with_501(peer: Peer, payload: bytes, text: str,
                                                   ids: tuple[int, int]) -> None:
    peer.feed(pack_header(1, 1, len(payload)) + payload + b"\xce")
    assert peer.expect_close(501, *ids) == text


def test_field_table_with_an_unknown_tag_closes_with_502(peer: Peer) -> None:
    payload = b"\x00\x32\x00\x0a\x00\x00\x01q\x00\x00\x00\x00\x05\x01kZ\x00\x00"
    peer.feed(pack_header(1, 1, len(payload)) + payload + b"\xce")
    # (RabbitMQ's reader dies parsing it; hare says why)
    assert peer.expect_close(502, 50, 10) == "SYNTAX_ERROR - queue.declare: unknown field type 'Z'"


def test_frames_after_a_hard_error_are_ignored_until_close_ok(peer: Peer) -> None:
    peer.feed(method_frame(0, spec.ChannelOpen())
              + method_frame(1, spec.QueueDeclare(queue="q")) + method_frame(1, spec.BasicQos()))
    peer.expect_close(504, 20, 10)
    assert "q" not in peer.conn.broker.vhosts["/"].queues


def test_channel_error_closes_only_the_channel(peer: Peer) -> None:
    peer.send(1, spec.QueueDeclare(queue="missing", passive=True))
    (close,) = peer.expect(spec.ChannelClose)
    assert close.reply_code == 404
    # the content of a publish sent before the client saw the close is discarded
    peer.feed(publish_bytes(1, "q", b"late"))
    assert peer.frames() == []
    peer.send(1, spec.ChannelCloseOk())
    peer.open_channel(1)
    assert peer.conn.state == OPENED


def test_connection_lost_releases_queues_and_consumers() -> None:
    a = Peer()
    a.handshake()
    a.open_channel()
    a.send(1, spec.QueueDeclare(queue="ex", exclusive=True))
    a.expect(spec.QueueDeclareOk)
    a.conn.connection_lost()
    assert a.conn.closed
    assert a.conn not in a.broker.connections
    assert "ex" not in a.broker.vhosts["/"].queues


# -- regressions found by tests/integration/test_fuzz.py ---------------------------------------------


def test_alternate_exchange_of_the_wrong_type_is_406_not_an_internal_error(peer: Peer) -> None:
    peer.send(1, spec.ExchangeDeclare(exchange="ae-bad", type="direct",
                                      arguments={"alternate-exchange": {"a": 1}}))
    (close,) = peer.expect(spec.ChannelClose)
    assert close.reply_code == 406
    assert close.reply_text == ("PRECONDITION_FAILED - invalid type 'table' for arg 'alternate-exchange' "
                                "in exchange 'ae-bad' in vhost '/'")
    assert (close.class_id, close.method_id) == (40, 10)
    assert "ae-bad" not in peer.broker.vhosts["/"].exchanges


def test_redeclare_with_unhashable_queue_type_is_406_not_an_internal_error(peer: Peer) -> None:
    peer.declare("q")
    peer.send(1, spec.QueueDeclare(queue="q", arguments={"x-queue-type": ["classic"]}))
    (close,) = peer.expect(spec.ChannelClose)
    assert close.reply_code == 406


def test_field_table_nested_thousands_deep_is_502_not_an_internal_error(peer: Peer) -> None:
    # RabbitMQ parses it; hare refuses it as a table it cannot parse (a deliberate difference)
    table = b"\x00\x00\x00\x00"
    for _ in range(3000):
        table = struct.pack(">I", len(table) + 2) + b"\x00F" + table
    payload = spec.QueueDeclare(queue="deep").encode()[:-4] + table
    peer.feed(pack_header(1, 1, len(payload)) + payload + b"\xce")
    assert peer.expect_close(502, 50, 10) == "SYNTAX_ERROR - queue.declare: field table nested too deeply"


def test_timestamp_header_past_year_9999_is_routed_not_an_internal_error(peer: Peer) -> None:
    peer.declare("q")
    peer.send(1, spec.QueueBind(queue="q", exchange="amq.headers", arguments={"x-match": "any", "h": 1}))
    peer.expect(spec.QueueBindOk)
    entry = b"\x01tT" + b"\xff" * 8 + b"\x01hI\x00\x00\x00\x01"
    props = b"\x20\x00" + struct.pack(">I", len(entry)) + entry
    peer.feed(method_frame(1, spec.BasicPublish(exchange="amq.headers"))
              + header_frame(1, 2, props) + pack_header(3, 1, 2) + b"ok\xce")
    peer.send(1, spec.BasicGet(queue="q", no_ack=True))
    frames = peer.frames()
    assert isinstance(decode_method(frames[0][2]), spec.BasicGetOk)
    assert frames[1][2][12:] == props  # re-sent exactly as published
    assert frames[2][2] == b"ok"


# -- confirms and the disk store (group commit) ------------------------------------------------------


def stored_peer(tmp_path: Any) -> Peer:
    p = Peer(broker=Broker(data_dir=tmp_path))
    p.handshake()
    p.open_channel(1)
    p.send(1, spec.QueueDeclare(queue="d", durable=True))
    p.send(1, spec.QueueDeclare(queue="t", durable=False))
    p.send(1, spec.ConfirmSelect())
    p.expect(spec.QueueDeclareOk, spec.QueueDeclareOk, spec.ConfirmSelectOk)
    return p


def test_a_confirm_behind_one_in_a_heavy_log_waits_for_it(tmp_path: Any) -> None:
    """A large persistent message makes its queue's log heavy (synced by the store's heavy lane);
    a later publish to another durable queue on the same channel still waits for it: confirms
    stay in order, whichever lane is done first."""
    p = stored_peer(tmp_path)
    store = p.broker.store
    assert store is not None
    writes: list[Any] = []
    store.write_in_thread = True  # (the shell's part: WriteJobs wait in ``writes``)
    store.submit_write = writes.append
    p.send(1, spec.QueueDeclare(queue="d2", durable=True))
    p.expect(spec.QueueDeclareOk)
    p.feed(publish_bytes(1, "d", b"B" * (2 << 20), {"delivery_mode": 2}))
    store.flush()
    p.feed(publish_bytes(1, "d2", b"small", {"delivery_mode": 2}))
    light = store.start_sync()
    assert light is not None
    light.run()
    store.finish_sync(light)
    p.inbox += b"".join(p.conn.data_to_send())
    assert p.methods() == []  # the second is light, but behind the heavy first
    heavy = store.start_heavy_sync()
    assert heavy is not None
    for job in writes:
        job.run()
        store.finish_write(job)
    heavy.run()
    store.finish_sync(heavy)
    p.inbox += b"".join(p.conn.data_to_send())
    acks = p.expect(spec.BasicAck, spec.BasicAck)  # both, in order, once the heavy lane synced
    assert [(a.delivery_tag, a.multiple) for a in acks] == [(1, False), (2, False)]


def test_confirm_of_a_persistent_message_to_a_durable_queue_waits_for_the_sync(tmp_path: Any) -> None:
    p = stored_peer(tmp_path)
    store = p.broker.store
    assert store is not None
    p.feed(publish_bytes(1, "d", b"keep me", {"delivery_mode": 2}))
    assert p.methods() == []  # not on stable storage yet: no confirm
    job = store.start_sync()
    assert job is not None and job.fds  # the queue's segment file is in the sync
    p.feed(publish_bytes(1, "t", b"transient queue", {"delivery_mode": 2}))
    assert p.methods() == []  # queued behind the first: confirms stay in order
    job.run()
    store.finish_sync(job)
    p.inbox += b"".join(p.conn.data_to_send())
    (ack,) = p.expect(spec.BasicAck)
    assert (ack.delivery_tag, ack.multiple) == (1, False)
    store.sync_now()
    p.inbox += b"".join(p.conn.data_to_send())
    (ack,) = p.expect(spec.BasicAck)
    assert ack.delivery_tag == 2


def test_confirms_that_need_no_disk_are_sent_at_once(tmp_path: Any) -> None:
    p = stored_peer(tmp_path)
    p.feed(publish_bytes(1, "d", b"transient message", {"delivery_mode": 1})
           + publish_bytes(1, "t", b"persistent, transient queue", {"delivery_mode": 2})
           + publish_bytes(1, "nowhere", b"unroutable", {"delivery_mode": 2}))
    (ack,) = p.expect(spec.BasicAck)
    assert (ack.delivery_tag, ack.multiple) == (3, True)


def test_tx_commit_ok_waits_for_the_sync(tmp_path: Any) -> None:
    p = Peer(broker=Broker(data_dir=tmp_path))
    p.handshake()
    p.open_channel(1)
    p.send(1, spec.QueueDeclare(queue="d", durable=True))
    p.send(1, spec.TxSelect())
    p.expect(spec.QueueDeclareOk, spec.TxSelectOk)
    p.feed(publish_bytes(1, "d", b"in a transaction", {"delivery_mode": 2}))
    p.send(1, spec.TxCommit())
    assert p.methods() == []
    assert p.broker.store is not None
    p.broker.store.sync_now()
    p.inbox += b"".join(p.conn.data_to_send())
    p.expect(spec.TxCommitOk)
