"""A tiny blocking AMQP client on a raw socket, for tests that send exactly the bytes they mean
(malformed frames, wrong order) and read exactly what the broker answers."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from hare.amqp import spec
from hare.amqp.errors import Utf8Fault
from hare.amqp.frames import method_frame, pack_header
from hare.amqp.properties import encode_properties


class Closed(Exception):
    pass


def decode_method(payload: bytes) -> spec.Method:
    """A method frame's payload as a method. The reply text of a close may hold octets that are
    not UTF-8 (RabbitMQ echoes names and frame octets): those are kept as surrogate escapes."""
    idx = struct.unpack_from(">I", payload, 0)[0]
    cls = spec.METHODS[idx]
    try:
        return cls.decode(payload, 4)
    except Utf8Fault:
        if cls not in (spec.ConnectionClose, spec.ChannelClose):
            raise
        code, n = struct.unpack_from(">HB", payload, 4)
        text = payload[7 : 7 + n].decode("utf-8", "surrogateescape")
        class_id, method_id = struct.unpack_from(">HH", payload, 7 + n)
        return cls(reply_code=code, reply_text=text, class_id=class_id, method_id=method_id)


def host_port(url: str) -> tuple[str, int]:
    """The host and port of an ``amqp://user:password@host:port/vhost`` URL."""
    hostport = url.split("@", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    @classmethod
    def from_url(cls, url: str) -> RawClient:
        return cls(*host_port(url))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_method(self, channel: int, method: spec.Method) -> None:
        self.send(method_frame(channel, method))

    def send_content(self, channel: int, body: bytes, props: dict[str, Any] | None = None,
                     frame_max: int = 131072) -> None:
        raw = encode_properties(props or {})
        payload = struct.pack(">HHQ", 60, 0, len(body)) + raw
        out = pack_header(2, channel, len(payload)) + payload + b"\xce"
        step = frame_max - 8
        for i in range(0, len(body), step):
            part = body[i : i + step]
            out += pack_header(3, channel, len(part)) + part + b"\xce"
        self.send(out)

    def publish(self, channel: int, exchange: str, routing_key: str, body: bytes,
                props: dict[str, Any] | None = None, mandatory: bool = False) -> None:
        self.send_method(channel, spec.BasicPublish(exchange=exchange, routing_key=routing_key,
                                                    mandatory=mandatory))
        self.send_content(channel, body, props)

    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the broker")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed("connection closed by the broker")
            self.buf += chunk

    def read_frame(self, timeout: float = 5.0) -> tuple[int, int, bytes]:
        deadline = time.monotonic() + timeout
        self._fill(7, deadline)
        ftype, channel, size = struct.unpack_from(">BHI", self.buf, 0)
        self._fill(7 + size + 1, deadline)
        payload = self.buf[7 : 7 + size]
        assert self.buf[7 + size] == 0xCE, "bad frame end from the broker"
        self.buf = self.buf[8 + size :]
        return ftype, channel, payload

    def read_raw(self, n: int, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        self._fill(n, deadline)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_method(self, timeout: float = 5.0, skip_heartbeats: bool = True) -> tuple[int, spec.Method]:
        while True:
            ftype, channel, payload = self.read_frame(timeout)
            if ftype == 8 and skip_heartbeats:
                continue
            assert ftype == 1, f"expected a method frame, got type {ftype}"
            return channel, decode_method(payload)

    def expect(self, cls: type[spec.Method], timeout: float = 5.0) -> spec.Method:
        channel, m = self.read_method(timeout)
        assert isinstance(m, cls), f"expected {cls.NAME}, got {m!r}"
        return m

    def read_content(self, timeout: float = 5.0) -> tuple[bytes, bytes]:
        """After a deliver/get-ok/return: (raw properties, body)."""
        ftype, _, payload = self.read_frame(timeout)
        assert ftype == 2
        size = struct.unpack_from(">Q", payload, 4)[0]
        props = payload[12:]
        body = b""
        while len(body) < size:
            ftype, _, part = self.read_frame(timeout)
            assert ftype == 3
            body += part
        return props, body

    def handshake(self, user: str = "guest", password: str = "guest", vhost: str = "/",
                  heartbeat: int = 0, frame_max: int = 131072,
                  capabilities: dict[str, Any] | None = None) -> spec.ConnectionTune:
        self.send(spec.PROTOCOL_HEADER)
        self.expect(spec.ConnectionStart)
        caps = {"authentication_failure_close": True, "consumer_cancel_notify": True,
                "connection.blocked": True, "basic.nack": True, "publisher_confirms": True}
        if capabilities is not None:
            caps = capabilities
        self.send_method(0, spec.ConnectionStartOk(
            client_properties={"product": "rawamqp", "capabilities": caps}, mechanism="PLAIN",
            response=b"\x00" + user.encode() + b"\x00" + password.encode(), locale="en_US"))
        tune = self.expect(spec.ConnectionTune)
        assert isinstance(tune, spec.ConnectionTune)
        self.send_method(0, spec.ConnectionTuneOk(channel_max=tune.channel_max,
                                                  frame_max=frame_max, heartbeat=heartbeat))
        self.send_method(0, spec.ConnectionOpen(virtual_host=vhost))
        self.expect(spec.ConnectionOpenOk)
        return tune

    def open_channel(self, channel: int = 1) -> None:
        self.send_method(channel, spec.ChannelOpen())
        self.expect(spec.ChannelOpenOk)

    def is_closed(self, timeout: float = 2.0) -> bool:
        """True when the broker closes the socket (reading and discarding frames until then)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def raw_client(url: str, channels: int = 1, frame_max: int = 131072,
               capabilities: dict[str, Any] | None = None) -> RawClient:
    """A client past the handshake, with channels 1 to ``channels`` open."""
    c = RawClient.from_url(url)
    c.handshake(frame_max=frame_max, capabilities=capabilities)
    for n in range(1, channels + 1):
        c.open_channel(n)
    return c


def ping(c: RawClient, ch: int) -> None:
    """A round trip on ``ch``: anything the broker sent on it before is read by now."""
    c.send_method(ch, spec.ExchangeDeclare(exchange="amq.direct", type="direct", passive=True))
    c.expect(spec.ExchangeDeclareOk)


def raw_deliveries(c: RawClient, n: int) -> list[tuple[spec.BasicDeliver, bytes]]:
    """The next ``n`` basic.deliver methods, each with its body."""
    out = []
    for _ in range(n):
        m = c.expect(spec.BasicDeliver)
        assert isinstance(m, spec.BasicDeliver)
        out.append((m, c.read_content()[1]))
    return out
