"""The publish side as RabbitMQ 3.10 implements it: properties and field tables resent byte for byte,
bodies of every size split into frames both ways, the checks a publish goes through (immediate,
size, exchange, internal, user-id, expiration, in that order) and mandatory returns.

Most tests speak raw AMQP (tests/rawamqp.py) so they can send exact property bytes and compare the
exact bytes the broker sends back in basic.deliver / basic.get-ok / basic.return."""

from __future__ import annotations

import datetime
import decimal
import os
import struct
import uuid
from collections.abc import Callable

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from rawamqp import RawClient, ping, raw_client
from support import hare_only

from hare.amqp import spec
from hare.broker.broker import BrokerConfig
from hare.broker.expiration import expiration_error

DEFAULT_MAX = 128 * 1024 * 1024  # RabbitMQ 3.10's default max_message_size


# -- raw encoding helpers: exact bytes, no codec in between ----------------------------------------------


def ss(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return bytes((len(b),)) + b


def ls(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def field(key: str | bytes, tag: bytes, payload: bytes) -> bytes:
    return ss(key) + tag + payload


def table(*fields: bytes) -> bytes:
    return ls(b"".join(fields))


def array(*values: bytes) -> bytes:
    return ls(b"".join(values))


def props(flags: int, *values: bytes) -> bytes:
    return struct.pack(">H", flags) + b"".join(values)


# every value type RabbitMQ's field-table parser accepts, with edge values
FIELD_VALUES: dict[str, bytes] = {
    "t-true": b"t\x01",
    "t-false": b"t\x00",
    "t-other-octet": b"t\x07",
    "b-min": b"b\x80",
    "b-max": b"b\x7f",
    "B-max": b"B\xff",
    "s-min": b"s\x80\x00",
    "u-max": b"u\xff\xff",
    "I-min": b"I\x80\x00\x00\x00",
    "I-minus-one": b"I\xff\xff\xff\xff",
    "i-max": b"i\xff\xff\xff\xff",
    "l-min": b"l\x80" + b"\x00" * 7,
    "l-max": b"l\x7f" + b"\xff" * 7,
    "D-negative": b"D\x02\xff\xff\xff\x85",
    "D-scale-0": b"D\x00\x00\x00\x00\x2a",
    "d": b"d" + struct.pack(">d", 3.141592653589793),
    "d-negative-zero": b"d" + struct.pack(">d", -0.0),
    "f": b"f" + struct.pack(">f", 1.5),
    "S-utf8": b"S" + ls("héllo ✓".encode()),
    "S-not-utf8": b"S" + ls(b"\xff\xfe\x00"),
    "S-empty": b"S" + ls(b""),
    "x": b"x" + ls(b"\x00\x01\xfe\xff"),
    "x-empty": b"x" + ls(b""),
    "T": b"T" + struct.pack(">Q", 1_700_000_000),
    "T-max": b"T" + b"\xff" * 8,
    "V": b"V",
    "A-empty": b"A" + array(),
    "A-mixed": b"A" + array(b"I\x00\x00\x00\x01", b"S" + ls(b"a"), b"V", b"t\x01", b"A" + array(b"b\x01"),
                            b"F" + table(field("k", b"l", b"\x00" * 8))),
    "F-empty": b"F" + table(),
    "F-nested": b"F" + table(field("a", b"F", table(field("b", b"A", array(b"F" + table(
        field("c", b"x", ls(b"deep")))))))),
}


def all_types_headers() -> bytes:
    """One table holding every type, plus unicode, empty and repeated keys."""
    fields = [field(name, value[:1], value[1:]) for name, value in FIELD_VALUES.items()]
    fields.append(field("ключ ✓ 鍵", b"S", ls(b"unicode key")))
    fields.append(field("", b"I", b"\x00\x00\x00\x00"))
    fields.append(field("dup", b"b", b"\x01"))
    fields.append(field("dup", b"b", b"\x02"))
    return table(*fields)


def all_properties(user: str = "guest") -> bytes:
    """Every basic property, in spec order, flags 0xFFFC."""
    return props(0xFFFC, ss("application/json"), ss("gzip"), all_types_headers(), b"\x02", b"\x07",
                 ss("corr-1"), ss("reply.queue"), ss("60000"), ss("msg-1"),
                 struct.pack(">Q", 1_700_000_000), ss("order.created"), ss(user), ss("app-1"),
                 ss("cluster-1"))


# -- raw client helpers -----------------------------------------------------------------------------------


def content_frames(ch: int, props_raw: bytes, body: bytes, frame_max: int = 131072,
                   chunk: int | None = None) -> list[bytes]:
    """Header + body frames for one message; ``chunk`` picks another body frame size."""
    step = chunk or frame_max - 8
    out = [struct.pack(">BHIHHQ", 2, ch, 12 + len(props_raw), 60, 0, len(body)) + props_raw + b"\xce"]
    view = memoryview(body)
    for i in range(0, len(body), step):
        part = view[i : i + step]
        out.append(struct.pack(">BHI", 3, ch, len(part)) + part + b"\xce")
    return out


def publish(c: RawClient, ch: int, exchange: str, routing_key: str, body: bytes,
            props_raw: bytes = b"\x00\x00", frame_max: int = 131072, chunk: int | None = None,
            mandatory: bool = False, immediate: bool = False) -> None:
    method = spec.BasicPublish(exchange=exchange, routing_key=routing_key, mandatory=mandatory,
                               immediate=immediate).encode()
    frames = [struct.pack(">BHI", 1, ch, len(method)) + method + b"\xce"]
    frames += content_frames(ch, props_raw, body, frame_max, chunk)
    c.sock.sendall(b"".join(frames))


def read_content(c: RawClient, timeout: float = 10.0) -> tuple[bytes, list[int], bytes]:
    """After a deliver / get-ok / return: (raw properties, body frame sizes, body)."""
    ftype, _, payload = c.read_frame(timeout)
    assert ftype == 2, f"expected a content header, got frame type {ftype}"
    class_id, weight, size = struct.unpack_from(">HHQ", payload, 0)
    assert (class_id, weight) == (60, 0)
    parts: list[bytes] = []
    got = 0
    while got < size:
        ftype, _, part = c.read_frame(timeout)
        assert ftype == 3, f"expected a body frame, got frame type {ftype}"
        parts.append(part)
        got += len(part)
    assert got == size
    return payload[12:], [len(p) for p in parts], b"".join(parts)


def get(c: RawClient, ch: int, queue: str) -> tuple[spec.BasicGetOk, bytes, list[int], bytes]:
    c.send_method(ch, spec.BasicGet(queue=queue, no_ack=True))
    ok = c.expect(spec.BasicGetOk, timeout=10)
    assert isinstance(ok, spec.BasicGetOk)
    return (ok, *read_content(c))


def expect_channel_close(c: RawClient, ch: int, code: int, text: str, timeout: float = 10) -> None:
    number, m = c.read_method(timeout)
    assert isinstance(m, spec.ChannelClose), m
    assert (number, m.reply_code, m.reply_text, m.class_id, m.method_id) == (ch, code, text, 60, 40)
    c.send_method(ch, spec.ChannelCloseOk())


# -- properties: byte-exact round trips ----------------------------------------------------------------


def test_every_property_comes_back_byte_exact_from_get(raw: RawClient, queue: str) -> None:
    sent = all_properties()
    publish(raw, 1, "", queue, b"body", sent)
    ok, got, _, body = get(raw, 1, queue)
    assert (ok.exchange, ok.routing_key, body) == ("", queue, b"body")
    assert got == sent


def test_every_property_comes_back_byte_exact_from_deliver(hare_url: str, queue: str) -> None:
    sent = all_properties()
    with raw_client(hare_url) as pub, raw_client(hare_url) as sub:
        sub.send_method(1, spec.BasicConsume(queue=queue, consumer_tag="c1", no_ack=True))
        sub.expect(spec.BasicConsumeOk)
        publish(pub, 1, "", queue, b"x" * 1000, sent)
        deliver = sub.expect(spec.BasicDeliver)
        assert isinstance(deliver, spec.BasicDeliver)
        assert (deliver.consumer_tag, deliver.routing_key, deliver.redelivered) == ("c1", queue, False)
        got, _, body = read_content(sub)
        assert got == sent
        assert body == b"x" * 1000


@pytest.mark.parametrize("name", list(FIELD_VALUES))
def test_each_field_value_type_round_trips_byte_exact(raw: RawClient, queue: str, name: str) -> None:
    value = FIELD_VALUES[name]
    sent = props(0x2000, table(field(name, value[:1], value[1:])))
    publish(raw, 1, "", queue, b"", sent)
    assert get(raw, 1, queue)[1] == sent


@pytest.mark.parametrize("index", range(14))
def test_each_property_alone_round_trips_byte_exact(raw: RawClient, queue: str, index: int) -> None:
    values = [ss("text/plain"), ss("utf-8"), table(field("k", b"S", ls(b"v"))), b"\x01", b"\x00",
              ss("c"), ss(""), ss("1000"), ss("m" * 255), b"\x00" * 8, ss("t"), ss("guest"), ss("a"), ss("")]
    sent = props(1 << (15 - index), values[index])
    publish(raw, 1, "", queue, b"b", sent)
    assert get(raw, 1, queue)[1] == sent


def test_no_properties_is_just_the_zero_flags(raw: RawClient, queue: str) -> None:
    publish(raw, 1, "", queue, b"b", b"\x00\x00")
    assert get(raw, 1, queue)[1] == b"\x00\x00"


def test_empty_headers_table_stays_present_and_empty(raw: RawClient, queue: str) -> None:
    sent = props(0x2000, table())
    publish(raw, 1, "", queue, b"", sent)
    assert get(raw, 1, queue)[1] == sent


def test_properties_of_a_persistent_message_in_a_durable_queue_round_trip(hare_url: str) -> None:
    name = f"test-durable-{uuid.uuid4().hex[:12]}"
    with raw_client(hare_url) as c:
        c.send_method(1, spec.QueueDeclare(queue=name, durable=True))
        c.expect(spec.QueueDeclareOk)
        try:
            sent = all_properties()  # delivery_mode 2
            publish(c, 1, "", name, b"persistent", sent)
            _, got, _, body = get(c, 1, name)
            assert (got, body) == (sent, b"persistent")
        finally:
            c.send_method(1, spec.QueueDelete(queue=name))
            c.expect(spec.QueueDeleteOk)


def test_pika_properties_decode_to_what_was_sent(channel: BlockingChannel, queue: str) -> None:
    stamp = 1_700_000_000
    headers = {"str": "héllo", "int": -5, "long": 2**40, "bool": True, "none": None,
               "list": [1, "two", [3]], "table": {"nested": {"deep": "yes"}}, "bytes": b"\x00\xff",
               "decimal": decimal.Decimal("1.25"), "ключ": "значение",
               "time": datetime.datetime.fromtimestamp(stamp, datetime.UTC)}
    sent = pika.BasicProperties(content_type="application/json", content_encoding="gzip", headers=headers,
                                delivery_mode=2, priority=3, correlation_id="corr", reply_to="rq",
                                expiration="60000", message_id="mid", timestamp=stamp, type="kind",
                                user_id="guest", app_id="app", cluster_id="cl")
    channel.basic_publish("", queue, b"payload", sent)
    method, got, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None and body == b"payload"
    for attr in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                 "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id",
                 "cluster_id"):
        assert getattr(got, attr) == getattr(sent, attr), attr
    assert got.headers == headers


# -- bodies and frames -------------------------------------------------------------------------------------


def test_empty_body_has_a_header_frame_and_no_body_frame(raw: RawClient, queue: str) -> None:
    publish(raw, 1, "", queue, b"", b"\x00\x00")
    raw.send_method(1, spec.BasicGet(queue=queue, no_ack=True))
    raw.expect(spec.BasicGetOk)
    ftype, ch, payload = raw.read_frame()
    assert (ftype, ch, payload) == (2, 1, struct.pack(">HHQ", 60, 0, 0) + b"\x00\x00")
    ping(raw, 1)  # no body frame came in between


def test_empty_body_is_delivered_without_body_frame(hare_url: str, queue: str) -> None:
    with raw_client(hare_url) as c:
        c.send_method(1, spec.BasicConsume(queue=queue, no_ack=True))
        c.expect(spec.BasicConsumeOk)
        publish(c, 1, "", queue, b"", b"\x00\x00")
        c.expect(spec.BasicDeliver)
        ftype, _, payload = c.read_frame()
        assert (ftype, payload) == (2, struct.pack(">HHQ", 60, 0, 0) + b"\x00\x00")
        ping(c, 1)


@pytest.mark.parametrize("frame_max", [4096, 131072])
@pytest.mark.parametrize("extra", [0, 1])
def test_body_of_frame_max_minus_8_fits_one_frame_and_one_more_byte_needs_two(
        hare_url: str, queue: str, frame_max: int, extra: int) -> None:
    body = os.urandom(frame_max - 8 + extra)
    with raw_client(hare_url, frame_max=frame_max) as c:
        publish(c, 1, "", queue, body, frame_max=frame_max)
        _, _, sizes, got = get(c, 1, queue)
        assert got == body
        assert sizes == ([frame_max - 8] if not extra else [frame_max - 8, 1])


def test_publish_split_small_delivery_in_big_frames(hare_url: str, queue: str) -> None:
    body = os.urandom(100_000)
    with raw_client(hare_url, frame_max=4096) as pub, raw_client(hare_url) as sub:
        pub.send_method(1, spec.ConfirmSelect())
        pub.expect(spec.ConfirmSelectOk)
        publish(pub, 1, "", queue, body, frame_max=4096)
        pub.expect(spec.BasicAck)  # in the queue now: the other connection can get it
        _, _, sizes, got = get(sub, 1, queue)
        assert got == body
        assert sizes == [100_000]


def test_delivery_is_split_at_the_consumers_frame_max(hare_url: str, queue: str) -> None:
    body = os.urandom(100_000)
    with raw_client(hare_url) as pub, raw_client(hare_url, frame_max=4096) as sub:
        sub.send_method(1, spec.BasicConsume(queue=queue, no_ack=True))
        sub.expect(spec.BasicConsumeOk)
        publish(pub, 1, "", queue, body)
        sub.expect(spec.BasicDeliver)
        _, sizes, got = read_content(sub)
        assert got == body
        assert sizes == [4088] * 24 + [100_000 - 24 * 4088]


@pytest.mark.parametrize("chunk", [1, 100, 4087])
def test_body_frames_of_any_size_are_reassembled(hare_url: str, queue: str, chunk: int) -> None:
    body = os.urandom(3000 if chunk == 1 else 20_000)
    with raw_client(hare_url, frame_max=4096) as c:
        publish(c, 1, "", queue, body, frame_max=4096, chunk=chunk)
        _, _, sizes, got = get(c, 1, queue)
        assert got == body
        assert all(s == 4088 for s in sizes[:-1])  # sent again in full frames


def test_several_megabyte_body_both_directions(hare_url: str, queue: str) -> None:
    body = os.urandom(5 * 1024 * 1024 + 3)
    with raw_client(hare_url, frame_max=4096) as pub, raw_client(hare_url, frame_max=4096) as sub:
        sub.send_method(1, spec.BasicConsume(queue=queue, no_ack=True))
        sub.expect(spec.BasicConsumeOk)
        publish(pub, 1, "", queue, body, props(0x8000, ss("application/octet-stream")), frame_max=4096)
        sub.expect(spec.BasicDeliver, timeout=30)
        got_props, sizes, got = read_content(sub, timeout=30)
        assert got == body
        assert got_props == props(0x8000, ss("application/octet-stream"))
        assert len(sizes) == -(-len(body) // 4088) and max(sizes) == 4088


def test_several_megabyte_body_with_pika(channel: BlockingChannel, queue: str) -> None:
    body = os.urandom(4 * 1024 * 1024)
    channel.basic_publish("", queue, body)
    channel.basic_publish("", queue, b"after")
    method, _, got = channel.basic_get(queue, auto_ack=True)
    assert method is not None and got == body
    assert channel.basic_get(queue, auto_ack=True)[2] == b"after"


def test_pika_with_a_small_frame_max(hare_url: str, queue: str) -> None:
    params = pika.URLParameters(hare_url)
    params.frame_max = 4096
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        bodies = [os.urandom(n) for n in (0, 1, 4088, 4089, 50_000)]
        for body in bodies:
            ch.basic_publish("", queue, body)
        got = [ch.basic_get(queue, auto_ack=True)[2] for _ in bodies]
        assert got == bodies
    finally:
        conn.close()


def test_contents_interleaved_on_two_channels(hare_url: str, queue: str) -> None:
    a, b = os.urandom(10_000), os.urandom(10_000)
    with raw_client(hare_url, frame_max=4096, channels=2) as c:
        frames = {}
        for ch, body in ((1, a), (2, b)):
            method = spec.BasicPublish(exchange="", routing_key=queue).encode()
            frames[ch] = [struct.pack(">BHI", 1, ch, len(method)) + method + b"\xce"]
            frames[ch] += content_frames(ch, props(0x0080, ss(f"msg-{ch}")), body, 4096)
        interleaved = [f for pair in zip(frames[1], frames[2], strict=True) for f in pair]
        c.sock.sendall(b"".join(interleaved))
        got = {}
        for _ in range(2):
            ok, p, _, body = get(c, 1, queue)
            got[p] = body
        assert got == {props(0x0080, ss("msg-1")): a, props(0x0080, ss("msg-2")): b}


def test_heartbeats_between_body_frames_are_fine(hare_url: str, queue: str) -> None:
    body = os.urandom(10_000)
    with raw_client(hare_url, frame_max=4096) as c:
        method = spec.BasicPublish(exchange="", routing_key=queue).encode()
        frames = content_frames(1, b"\x00\x00", body, 4096)
        heartbeat = b"\x08\x00\x00\x00\x00\x00\x00\xce"
        c.send(struct.pack(">BHI", 1, 1, len(method)) + method + b"\xce" + heartbeat
               + heartbeat.join(frames))
        assert get(c, 1, queue)[3] == body


# -- what a publish is checked for ----------------------------------------------------------------------


def test_publish_to_a_missing_exchange_is_404(raw: RawClient) -> None:
    publish(raw, 1, "no-such-exchange", "k", b"x")
    expect_channel_close(raw, 1, 404, "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'")
    raw.open_channel(2)  # the connection goes on
    ping(raw, 2)


def test_publish_to_an_internal_exchange_is_403(raw: RawClient) -> None:
    name = f"test-internal-{uuid.uuid4().hex[:12]}"
    raw.send_method(1, spec.ExchangeDeclare(exchange=name, type="fanout", internal=True))
    raw.expect(spec.ExchangeDeclareOk)
    try:
        raw.open_channel(2)
        publish(raw, 2, name, "", b"x")
        expect_channel_close(raw, 2, 403, f"ACCESS_REFUSED - cannot publish to internal exchange '{name}' "
                                          "in vhost '/'")
    finally:
        raw.send_method(1, spec.ExchangeDelete(exchange=name))
        raw.expect(spec.ExchangeDeleteOk)


@pytest.mark.parametrize("exchange", ["", "no-such-exchange"])
def test_immediate_is_540_and_closes_the_connection(hare_url: str, exchange: str) -> None:
    """immediate=true is refused before anything else is looked at, even the exchange."""
    with raw_client(hare_url) as c:
        publish(c, 1, exchange, "k", b"x", immediate=True)
        number, close = c.read_method()
        assert isinstance(close, spec.ConnectionClose), close
        assert (number, close.reply_code, close.reply_text, close.class_id, close.method_id) == (
            0, 540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
        c.send_method(0, spec.ConnectionCloseOk())
        assert c.is_closed()


@pytest.mark.parametrize("uid", ["guest2", "", "bøb", "GUEST"])
def test_user_id_other_than_the_login_is_406(raw: RawClient, queue: str, uid: str) -> None:
    publish(raw, 1, "", queue, b"x", props(0x0010, ss(uid)))
    expect_channel_close(raw, 1, 406, f"PRECONDITION_FAILED - user_id property set to '{uid}' but "
                                      "authenticated user was 'guest'")


def test_user_id_of_the_login_passes(raw: RawClient, queue: str) -> None:
    sent = props(0x0010, ss("guest"))
    publish(raw, 1, "", queue, b"x", sent)
    assert get(raw, 1, queue)[1] == sent


def test_long_reply_text_is_cut_at_252_bytes_with_dots(raw: RawClient, queue: str) -> None:
    uid = "ü" * 120  # 240 bytes: the reply text would be far over the 255 a shortstr holds
    publish(raw, 1, "", queue, b"x", props(0x0010, ss(uid)))
    ftype, number, payload = raw.read_frame()  # parsed here: the text is not valid UTF-8 any more
    assert (ftype, number, payload[:6]) == (1, 1, b"\x00\x14\x00\x28\x01\x96")  # channel.close, 406
    full = (f"PRECONDITION_FAILED - user_id property set to '{uid}' but authenticated user was 'guest'"
            ).encode()
    # RabbitMQ cuts bytes, even inside a UTF-8 sequence
    assert payload[6:] == bytes((255,)) + full[:252] + b"..." + b"\x00\x3c\x00\x28"


@hare_only
def test_impersonator_may_publish_any_user_id(hare_broker_factory: Callable) -> None:
    broker = hare_broker_factory()
    broker.broker.users.add("imp", "secret", tags=["impersonator"])
    with RawClient.from_url(broker.url) as c:
        c.handshake(user="imp", password="secret")
        c.open_channel(1)
        c.send_method(1, spec.QueueDeclare(queue="q"))
        c.expect(spec.QueueDeclareOk)
        sent = props(0x0010, ss("someone-else"))
        publish(c, 1, "", "q", b"x", sent)
        assert get(c, 1, "q")[1] == sent


INVALID_EXPIRATIONS = {
    "abc": "no_integer",
    "": "no_integer",
    " 10": "no_integer",
    "+": "no_integer",
    "-1": "{value_negative,-1}",
    "1.5": '{leftover_string,".5"}',
    "12 ": '{leftover_string," "}',
    "1e3": '{leftover_string,"e3"}',
    '1"\\': '{leftover_string,"\\"\\\\"}',
    "315360000001": "{value_too_large,315360000001}",
    "99999999999999999999": "{value_too_large,\n" + " " * 44 + "99999999999999999999}",
    "-1111111111111111111": "{value_negative,\n" + " " * 44 + "-1111111111111111111}",
    "-111111111111111111": "{value_negative,-111111111111111111}",
    "1" + "x" * 30: "{leftover_string,\n" + " " * 55 + '"' + "x" * 30 + '"}',
}


@pytest.mark.parametrize("value", list(INVALID_EXPIRATIONS))
def test_invalid_expiration_is_406(raw: RawClient, queue: str, value: str) -> None:
    publish(raw, 1, "", queue, b"x", props(0x0100, ss(value)))
    expect_channel_close(raw, 1, 406, f"PRECONDITION_FAILED - invalid expiration '{value}': "
                                      f"{INVALID_EXPIRATIONS[value]}")


@hare_only
@pytest.mark.parametrize("value", list(INVALID_EXPIRATIONS))
def test_expiration_error_has_rabbitmqs_text(value: str) -> None:
    """hare's check on its own words it as RabbitMQ does (the test above, over a socket)."""
    assert expiration_error(value.encode()) == f"invalid expiration '{value}': {INVALID_EXPIRATIONS[value]}"
    assert expiration_error(b"315360000000") is None and expiration_error(b"-0") is None


@pytest.mark.parametrize("value", ["0", "-0", "+5000", "000060000", "315360000000"])
def test_valid_expiration_is_accepted(raw: RawClient, queue: str, value: str) -> None:
    publish(raw, 1, "", queue, b"x", props(0x0100, ss(value)))
    ping(raw, 1)  # the channel is still open


def test_user_id_is_checked_before_expiration(raw: RawClient, queue: str) -> None:
    publish(raw, 1, "", queue, b"x", props(0x0110, ss("abc"), ss("bob")))
    expect_channel_close(raw, 1, 406, "PRECONDITION_FAILED - user_id property set to 'bob' but "
                                      "authenticated user was 'guest'")


def test_exchange_is_checked_before_user_id(raw: RawClient) -> None:
    publish(raw, 1, "no-such-exchange", "", b"x", props(0x0010, ss("bob")))
    expect_channel_close(raw, 1, 404, "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'")


def send_huge(c: RawClient, ch: int, exchange: str, size: int, props_raw: bytes = b"\x00\x00") -> None:
    """A body of ``size`` zero bytes in 128 KiB frames, without building it all in memory twice."""
    method = spec.BasicPublish(exchange=exchange, routing_key="k").encode()
    c.sock.sendall(struct.pack(">BHI", 1, ch, len(method)) + method + b"\xce"
                   + struct.pack(">BHIHHQ", 2, ch, 12 + len(props_raw), 60, 0, size) + props_raw + b"\xce")
    step = 131072 - 8
    frame = struct.pack(">BHI", 3, ch, step) + bytes(step) + b"\xce"
    full, rest = divmod(size, step)
    batch = frame * 64
    for _ in range(full // 64):
        c.sock.sendall(batch)
    c.sock.sendall(frame * (full % 64))
    if rest:
        c.sock.sendall(struct.pack(">BHI", 3, ch, rest) + bytes(rest) + b"\xce")


def test_message_over_the_default_max_size_is_406(hare_url: str, qname: str) -> None:
    """RabbitMQ 3.10's default max_message_size is 128 MiB; the check comes before the exchange's."""
    with raw_client(hare_url, channels=2) as c:
        send_huge(c, 1, "no-such-exchange", DEFAULT_MAX + 1)
        expect_channel_close(c, 1, 406, f"PRECONDITION_FAILED - message size {DEFAULT_MAX + 1} is larger "
                                        f"than configured max size {DEFAULT_MAX}", timeout=60)
        ping(c, 2)


@hare_only
def test_configured_max_message_size(hare_broker_factory: Callable) -> None:
    broker = hare_broker_factory(config=BrokerConfig(max_message_size=1000))
    with raw_client(broker.url, channels=4) as c:
        c.send_method(1, spec.QueueDeclare(queue="q"))
        c.expect(spec.QueueDeclareOk)
        big_props = props(0x2000, table(field("pad", b"S", ls(b"p" * 5000))))
        publish(c, 1, "", "q", bytes(1000), big_props)  # only the body counts
        assert get(c, 1, "q")[3] == bytes(1000)
        publish(c, 1, "", "q", bytes(1001))
        expect_channel_close(c, 1, 406, "PRECONDITION_FAILED - message size 1001 is larger than configured "
                                        "max size 1000")
        # size comes before the exchange, the user-id and the expiration; immediate before size
        publish(c, 2, "no-such-exchange", "q", bytes(1001), props(0x0110, ss("x"), ss("bob")))
        expect_channel_close(c, 2, 406, "PRECONDITION_FAILED - message size 1001 is larger than configured "
                                        "max size 1000")
        publish(c, 3, "", "q", bytes(1001), immediate=True)
        number, close = c.read_method()
        assert isinstance(close, spec.ConnectionClose) and close.reply_code == 540


@hare_only
def test_max_message_size_is_capped_at_512_mib() -> None:
    """RabbitMQ caps max_message_size at 512 MiB and then words the refusal without 'configured'
    (checked on a channel object: a 512 MiB body is too big for a test)."""
    from hare.broker.broker import Broker
    from hare.session.channel import Channel
    from hare.session.connection import Connection

    conn = Connection(Broker(BrokerConfig(max_message_size=2**40)))
    ch = Channel(conn, 1)
    assert ch.max_size == 512 * 1024 * 1024
    assert ch._size_error(ch.max_size + 1) == "message size 536870913 is larger than max size 536870912"


# -- mandatory ------------------------------------------------------------------------------------------


def test_mandatory_unroutable_comes_back_intact(raw: RawClient) -> None:
    sent = all_properties()
    body = os.urandom(300_000)  # returned in three frames
    publish(raw, 1, "amq.direct", "nobody-listens", body, sent, mandatory=True)
    ret = raw.expect(spec.BasicReturn)
    assert isinstance(ret, spec.BasicReturn)
    assert (ret.reply_code, ret.reply_text, ret.exchange, ret.routing_key) == (
        312, "NO_ROUTE", "amq.direct", "nobody-listens")
    got, sizes, got_body = read_content(raw)
    assert (got, got_body) == (sent, body)
    assert sizes == [131064, 131064, 300_000 - 2 * 131064]


def test_mandatory_return_is_split_at_the_publishers_frame_max(hare_url: str) -> None:
    body = os.urandom(10_000)
    with raw_client(hare_url, frame_max=4096) as c:
        publish(c, 1, "", f"missing-{uuid.uuid4().hex}", body, frame_max=4096, mandatory=True)
        c.expect(spec.BasicReturn)
        _, sizes, got = read_content(c)
        assert got == body and sizes == [4088, 4088, 10_000 - 2 * 4088]


def test_mandatory_routable_is_not_returned(raw: RawClient, queue: str) -> None:
    publish(raw, 1, "", queue, b"kept", mandatory=True)  # a queue without consumers is fine
    ping(raw, 1)
    assert get(raw, 1, queue)[3] == b"kept"


def test_not_mandatory_unroutable_is_dropped_silently(raw: RawClient) -> None:
    publish(raw, 1, "amq.direct", f"nobody-{uuid.uuid4().hex}", b"lost")
    ping(raw, 1)


def test_mandatory_to_a_fanout_without_bindings_is_returned(raw: RawClient) -> None:
    name = f"test-fanout-{uuid.uuid4().hex[:12]}"
    raw.send_method(1, spec.ExchangeDeclare(exchange=name, type="fanout", auto_delete=False))
    raw.expect(spec.ExchangeDeclareOk)
    try:
        publish(raw, 1, name, "any", b"r", mandatory=True)
        ret = raw.expect(spec.BasicReturn)
        assert isinstance(ret, spec.BasicReturn) and (ret.exchange, ret.routing_key) == (name, "any")
        assert read_content(raw)[2] == b"r"
    finally:
        raw.send_method(1, spec.ExchangeDelete(exchange=name))
        raw.expect(spec.ExchangeDeleteOk)


def test_mandatory_routed_by_the_alternate_exchange_is_not_returned(raw: RawClient, queue: str) -> None:
    main, alt = f"test-main-{uuid.uuid4().hex[:12]}", f"test-alt-{uuid.uuid4().hex[:12]}"
    raw.send_method(1, spec.ExchangeDeclare(exchange=alt, type="fanout"))
    raw.expect(spec.ExchangeDeclareOk)
    raw.send_method(1, spec.ExchangeDeclare(exchange=main, type="direct",
                                            arguments={"alternate-exchange": alt}))
    raw.expect(spec.ExchangeDeclareOk)
    try:
        publish(raw, 1, main, "k", b"to-alt", mandatory=True)
        ret = raw.expect(spec.BasicReturn)  # the alternate exchange has no queue either, yet
        assert isinstance(ret, spec.BasicReturn) and (ret.exchange, ret.routing_key) == (main, "k")
        assert read_content(raw)[2] == b"to-alt"
        raw.send_method(1, spec.QueueBind(queue=queue, exchange=alt, routing_key=""))
        raw.expect(spec.QueueBindOk)
        publish(raw, 1, main, "k", b"to-alt", mandatory=True)
        ping(raw, 1)
        ok, _, _, body = get(raw, 1, queue)
        assert (ok.exchange, ok.routing_key, body) == (main, "k", b"to-alt")
    finally:
        for name in (main, alt):
            raw.send_method(1, spec.ExchangeDelete(exchange=name))
            raw.expect(spec.ExchangeDeleteOk)


def test_pika_return_callback_gets_the_message(connection: BlockingConnection) -> None:
    ch = connection.channel()
    returned: list[tuple[int, str, bytes, str | None]] = []
    ch.add_on_return_callback(lambda _ch, method, properties, body: returned.append(
        (method.reply_code, method.routing_key, body, properties.message_id)))
    ch.basic_publish("amq.direct", "nobody-home", b"back", pika.BasicProperties(message_id="m1"),
                     mandatory=True)
    deadline = 50
    while not returned and deadline:
        connection.process_data_events(time_limit=0.1)
        deadline -= 1
    assert returned == [(312, "nobody-home", b"back", "m1")]
