"""A lean asyncio AMQP client for load generation: pre-encoded publish frames, a frame counter
for deliveries. It must cost far less per message than the broker it measures."""

from __future__ import annotations

import asyncio
import struct
from urllib.parse import unquote, urlparse

from ..amqp import spec
from ..amqp.frames import method_frame, pack_header
from ..amqp.properties import encode_properties

_unpack_header = struct.Struct(">BHI").unpack_from
_unpack_I = struct.Struct(">I").unpack_from


class BenchClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.frame_max = 131072

    @classmethod
    async def connect(cls, url: str) -> BenchClient:
        u = urlparse(url)
        reader, writer = await asyncio.open_connection(u.hostname or "127.0.0.1", u.port or 5672,
                                                       limit=1 << 22)
        client = cls(reader, writer)
        await client._handshake(unquote(u.username or "guest"), unquote(u.password or "guest"),
                                unquote(u.path[1:]) if len(u.path) > 1 else "/")
        return client

    async def _read_frame(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buf) >= 7:
                ftype, ch, size = _unpack_header(self.buf, 0)
                if len(self.buf) >= size + 8:
                    payload = self.buf[7 : 7 + size]
                    self.buf = self.buf[size + 8 :]
                    return ftype, ch, payload
            chunk = await self.reader.read(1 << 20)
            if not chunk:
                raise ConnectionError("broker closed the connection")
            self.buf += chunk

    async def expect(self, cls: type[spec.Method]) -> spec.Method:
        while True:
            ftype, _, payload = await self._read_frame()
            if ftype != 1:
                continue
            m = spec.METHODS[_unpack_I(payload, 0)[0]].decode(payload, 4)
            if isinstance(m, spec.ConnectionClose | spec.ChannelClose):
                raise ConnectionError(f"broker closed: {m.reply_code} {m.reply_text}")
            if isinstance(m, cls):
                return m

    def send(self, channel: int, method: spec.Method) -> None:
        self.writer.write(method_frame(channel, method))

    async def _handshake(self, user: str, password: str, vhost: str) -> None:
        self.writer.write(spec.PROTOCOL_HEADER)
        await self.expect(spec.ConnectionStart)
        self.send(0, spec.ConnectionStartOk(
            client_properties={"product": "hare-bench"}, mechanism="PLAIN",
            response=f"\0{user}\0{password}".encode(), locale="en_US"))
        tune = await self.expect(spec.ConnectionTune)
        assert isinstance(tune, spec.ConnectionTune)
        self.frame_max = tune.frame_max
        self.send(0, spec.ConnectionTuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max,
                                           heartbeat=0))
        self.send(0, spec.ConnectionOpen(virtual_host=vhost))
        await self.expect(spec.ConnectionOpenOk)
        self.send(1, spec.ChannelOpen())
        await self.expect(spec.ChannelOpenOk)

    def publish_frames(self, exchange: str, routing_key: str, body: bytes,
                       persistent: bool = False) -> bytes:
        """One message's method + header + body frames on channel 1, ready to repeat."""
        m = method_frame(1, spec.BasicPublish(exchange=exchange, routing_key=routing_key))
        props = encode_properties({"delivery_mode": 2 if persistent else 1})
        header = struct.pack(">HHQ", 60, 0, len(body)) + props
        out = m + pack_header(2, 1, len(header)) + header + b"\xce"
        if body:
            out += pack_header(3, 1, len(body)) + body + b"\xce"
        return out

    def count_deliveries(self, data: bytes) -> tuple[int, int]:
        """Count basic.deliver frames in ``data`` (joined to leftovers); return (count, last tag)."""
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        count = 0
        last_tag = 0
        while n - pos >= 7:
            ftype, _, size = _unpack_header(buf, pos)
            end = pos + 8 + size
            if end > n:
                break
            if ftype == 1 and buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
                count += 1
                tl = buf[pos + 11]
                last_tag = struct.unpack_from(">Q", buf, pos + 12 + tl)[0]
            elif ftype == 1 and buf[pos + 7 : pos + 11] == b"\x00\x55\x00\x0b":
                pass  # confirm.select-ok
            pos = end
        self.buf = buf[pos:]
        return count, last_tag

    def count_confirms(self, data: bytes) -> int:
        """Highest delivery tag acked by basic.ack frames in ``data``."""
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        top = 0
        while n - pos >= 7:
            ftype, _, size = _unpack_header(buf, pos)
            end = pos + 8 + size
            if end > n:
                break
            if ftype == 1 and buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x50":
                top = max(top, struct.unpack_from(">Q", buf, pos + 11)[0])
            pos = end
        self.buf = buf[pos:]
        return top

    async def close(self) -> None:
        try:
            self.send(0, spec.ConnectionClose(reply_code=200, reply_text="bye"))
            await asyncio.wait_for(self.expect(spec.ConnectionCloseOk), 2)
        except (TimeoutError, ConnectionError, OSError):
            pass
        self.writer.close()
