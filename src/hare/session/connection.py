"""An AMQP connection as a sans-IO state machine: bytes in, bytes out.

``receive_data`` parses every complete frame in the buffer in one pass, drives the handshake
and the channels, and appends output frames to ``out``. The I/O shell (``hare.server``) moves
those bytes, runs the heartbeat timers and tells the connection when its socket backs up.

The frame loop has fast paths for basic.publish and basic.ack; every other method is decoded
by the generated codec into a method object.
"""

from __future__ import annotations

import logging
import struct
import sys
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..amqp import spec
from ..amqp.errors import AMQPError, ChannelError, ConnectionFault, SyntaxFault
from ..amqp.frames import FRAME_END_BYTE, HEARTBEAT_FRAME, pack_header, unpack_header
from ..auth.sasl import MECHANISMS, parse_response
from ..broker.broker import Broker
from ..broker.queue import Queue
from ..broker.vhost import VirtualHost
from .channel import OPEN, Channel

log = logging.getLogger("hare.connection")

_unpack_I = struct.Struct(">I").unpack_from
_unpack_HHQ = struct.Struct(">HHQ").unpack_from
_unpack_QB = struct.Struct(">QB").unpack_from

IDX_PUBLISH = 0x3C0028
IDX_ACK = 0x3C0050

# handshake states
AWAIT_HEADER, AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPENED, CLOSING_CONN, CLOSED = range(7)

HIGH_WATER = 1 << 20  # pending output bytes above which deliveries pause until the shell flushes

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


def server_properties(product: str) -> dict[str, Any]:
    return {
        "capabilities": dict(CAPABILITIES),
        "cluster_name": "hare@localhost",
        "copyright": "Copyright (c) the hare developers",
        "information": "Licensed under the Apache License 2.0",
        "platform": f"Python {sys.version.split()[0]}",
        "product": product,
        "version": __version__,
    }


def _is_loopback(peer: Any) -> bool:
    if not peer:
        return True  # in-process or unix socket
    host = peer[0] if isinstance(peer, tuple) else str(peer)
    return host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127.")


class Connection:
    def __init__(self, broker: Broker, peer: Any = None, wake: Callable[[], None] | None = None,
                 on_flow_resume: Callable[[], None] | None = None) -> None:
        self.broker = broker
        self.peer = peer
        self.wake = wake or _noop  # called when output becomes pending
        self.on_flow_resume = on_flow_resume or _noop  # called when no queue throttles us any more
        self.state = AWAIT_HEADER
        self.buf = b""
        self.out: list[bytes] = []
        self.out_size = 0
        self.paused = False  # the transport's buffer is full
        self.writable = True
        cfg = broker.config
        self.channel_max = cfg.channel_max
        self.frame_max = cfg.frame_max
        self.heartbeat = cfg.heartbeat
        self.channels: dict[int, Channel] = {}
        self.closing_channels: set[int] = set()
        self.vhost: VirtualHost = None  # type: ignore[assignment]  # set by connection.open
        self.username = ""
        self.client_properties: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.pending_dispatch: dict[Queue, None] = {}
        self.pending_confirms: dict[Channel, None] = {}
        self.closed = False  # the shell should close the socket once output is flushed
        self.close_reason: AMQPError | None = None
        self.blocked = False
        self.throttled: set[Queue] = set()  # queues whose backlog asks us to stop reading

    # -- output ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.out:
            self.wake()
        self.out.append(data)
        self.out_size += len(data)
        if self.out_size > HIGH_WATER and self.writable:
            self._set_writable(False)

    def write_many(self, parts: list[bytes], size: int) -> None:
        if not self.out:
            self.wake()
        self.out.extend(parts)
        self.out_size += size
        if self.out_size > HIGH_WATER and self.writable:
            self._set_writable(False)

    def send0(self, method: spec.Method) -> None:
        payload = method.encode()
        self.write(pack_header(1, 0, len(payload)) + payload + FRAME_END_BYTE)

    def data_to_send(self) -> list[bytes]:
        """Take the pending output (the shell writes it to the socket)."""
        out = self.out
        if not out:
            return out
        self.out = []
        self.out_size = 0
        if not self.writable and not self.paused:
            self._set_writable(True)
            self._finish()
        return out

    def pause_writing(self) -> None:
        self.paused = True
        self._set_writable(False)

    def resume_writing(self) -> None:
        self.paused = False
        if self.out_size <= HIGH_WATER:
            self._set_writable(True)
            self._finish()

    def _set_writable(self, writable: bool) -> None:
        self.writable = writable
        for ch in self.channels.values():
            ch.set_deliverable()

    def dispatch_later(self, q: Queue) -> None:
        self.pending_dispatch[q] = None

    def throttle(self, q: Queue) -> None:
        """A queue we publish to is backed up: the shell should stop reading us for a while."""
        if q not in self.throttled:
            self.throttled.add(q)
            q.flow_waiters[self] = None

    def flow_resume(self, q: Queue | None = None) -> None:
        """``q`` drained (or, with None, the shell's flow timeout passed): read again."""
        if q is None:
            for tq in self.throttled:
                tq.flow_waiters.pop(self, None)
            self.throttled.clear()
        else:
            self.throttled.discard(q)
        if not self.throttled:
            self.on_flow_resume()

    def confirms_pending(self, ch: Channel) -> None:
        self.pending_confirms[ch] = None

    def _finish(self) -> None:
        """End of a batch: dispatch the queues that got work, send the batched confirms."""
        while self.pending_dispatch:
            queues = self.pending_dispatch
            self.pending_dispatch = {}
            for q in queues:
                if q.consumer_count and not q.deleted:
                    q.dispatch()
        if self.pending_confirms:
            for ch in self.pending_confirms:
                if ch.state == OPEN:
                    ch.flush_confirms()
            self.pending_confirms.clear()

    # -- input ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == AWAIT_HEADER:
            if len(data) < 8:
                if data != b"AMQP\x00\x00\x09\x01"[: len(data)]:
                    self._bad_header()
                else:
                    self.buf = data
                return
            if data[:8] != spec.PROTOCOL_HEADER:
                self._bad_header()
                return
            data = data[8:]
            self.state = AWAIT_START_OK
            self.send0(spec.ConnectionStart(
                version_major=0, version_minor=9,
                server_properties=server_properties(self.broker.config.product),
                mechanisms=MECHANISMS, locales=b"en_US"))
        try:
            self._frames(data)
        finally:
            self._finish()

    def _bad_header(self) -> None:
        """A wrong protocol header: answer with ours and close, as the spec says."""
        self.write(spec.PROTOCOL_HEADER)
        self.closed = True

    def _frames(self, data: bytes) -> None:
        """Parse and act on every complete frame in ``data``; keep a partial tail in self.buf.

        The publish path (basic.publish, content header, body) and basic.ack are handled
        inline, without building method objects; everything else goes through _method."""
        pos = 0
        n = len(data)
        channels = self.channels
        frame_max = self.frame_max
        while n - pos >= 7 and not self.closed:
            ftype, chnum, size = unpack_header(data, pos)
            if size > frame_max - 8:
                self._hard_error(ConnectionFault(
                    501, f"frame size {size + 8} exceeds the negotiated maximum {frame_max}"))
                return
            end = pos + 7 + size
            if end >= n:
                break
            start = pos + 7
            pos = end + 1
            if data[end] != 0xCE:
                self._hard_error(ConnectionFault(501, f"bad frame end octet {data[end]:#04x}"))
                return
            ch = channels.get(chnum)
            try:
                if ch is not None and ch.state == OPEN:
                    pub = ch.pub
                    if ftype == 3 and pub is not None and ch.pub_size > 0:
                        # content body: the hot path of every publish
                        body = data[start:end]
                        got = ch.pub_received + size
                        if got < ch.pub_size:
                            ch.pub_body.append(body)
                            ch.pub_received = got
                            continue
                        if got > ch.pub_size:
                            raise ConnectionFault(501, f"content body larger than declared ({got} > "
                                                  f"{ch.pub_size} bytes)")
                        if ch.pub_body:
                            ch.pub_body.append(body)
                            body = b"".join(ch.pub_body)
                            ch.pub_body = []
                        ch.pub = None
                        ch.publish(pub, ch.pub_props, body)
                        continue
                    if ftype == 1:
                        if pub is not None:
                            raise ConnectionFault(505, "expected content header for class 60, "
                                                  "got non content header frame instead")
                        if size < 4:
                            raise SyntaxFault("method frame too short")
                        idx = _unpack_I(data, start)[0]
                        if idx == IDX_PUBLISH:
                            o = start + 6  # class, method, ticket
                            ex_end = o + 1 + data[o]
                            rk_end = ex_end + 1 + data[ex_end]
                            if rk_end >= end:
                                raise SyntaxFault("basic.publish arguments malformed")
                            bits = data[rk_end]
                            ch.pub = (data[o + 1 : ex_end].decode("utf-8", "surrogateescape"),
                                      data[ex_end + 1 : rk_end].decode("utf-8", "surrogateescape"),
                                      data[o:rk_end], bool(bits & 1), bool(bits & 2))
                            ch.pub_size = -1
                            continue
                        if idx == IDX_ACK:
                            if size != 13:
                                raise SyntaxFault("basic.ack arguments malformed")
                            tag, bits = _unpack_QB(data, start + 4)
                            ch.ack(tag, bool(bits & 1))
                            continue
                        self._method(chnum, ch, idx, data[start + 4 : end])
                        continue
                    if ftype == 2 and pub is not None and ch.pub_size < 0:
                        if size < 14:
                            raise SyntaxFault("content header frame too short")
                        class_id, _weight, body_size = _unpack_HHQ(data, start)
                        if class_id != 60:
                            raise ConnectionFault(505, f"content header for class {class_id}, "
                                                  "expected class 60")
                        props = data[start + 12 : end]
                        if body_size == 0:
                            ch.pub = None
                            ch.publish(pub, props, b"")
                        else:
                            ch.pub_props = props
                            ch.pub_size = body_size
                            ch.pub_received = 0
                        continue
                if ftype == 1:
                    if size < 4:
                        raise SyntaxFault("method frame too short")
                    self._method(chnum, ch, _unpack_I(data, start)[0], data[start + 4 : end])
                elif ftype == 2 or ftype == 3:
                    self._stray_content(chnum, ch, ftype)
                elif ftype == 8:
                    if chnum != 0:
                        raise ConnectionFault(501, "heartbeat frame on a non-zero channel")
                else:
                    raise ConnectionFault(501, f"unknown frame type {ftype}")
            except ChannelError as err:
                if ch is None or ch.state != OPEN:
                    self._hard_error(ConnectionFault(504, err.text))
                    return
                self._channel_error(ch, err)
            except AMQPError as err:
                self._hard_error(err)
                return
            except (struct.error, IndexError, UnicodeError) as exc:
                self._hard_error(SyntaxFault(f"malformed frame: {exc}"))
                return
            except Exception:  # never let a bug take the broker down
                log.exception("internal error on connection from %s", self.peer)
                self._hard_error(ConnectionFault(541, "internal error"))
                return
        if pos < n:
            self.buf = data[pos:]

    def _stray_content(self, chnum: int, ch: Channel | None, ftype: int) -> None:
        """A content header or body frame the channel does not expect."""
        if ch is None or ch.state != OPEN:
            if chnum in self.closing_channels:
                return  # content of a publish the channel error interrupted: discard
            raise ConnectionFault(504, f"content frame on channel {chnum}, which is not open")
        if ftype == 2 and ch.pub is not None:
            raise ConnectionFault(505, "expected content body, got content header instead")
        raise ConnectionFault(505, "expected method frame, got non method frame instead")

    def _method(self, chnum: int, ch: Channel | None, idx: int, payload: bytes) -> None:
        cls = spec.METHODS.get(idx)
        if cls is None:
            raise ConnectionFault(540, f"unknown method (class {idx >> 16}, method {idx & 0xFFFF})",
                                  idx >> 16, idx & 0xFFFF)
        try:
            method = cls.decode(payload, 0)
        except (struct.error, IndexError) as exc:
            raise SyntaxFault(f"{cls.NAME} arguments malformed") from exc
        try:
            if chnum == 0:
                self._connection_method(method)
            elif self.state != OPENED:
                raise ConnectionFault(504, f"channel {chnum} used before the connection was opened")
            elif ch is not None and ch.state == OPEN:
                if type(method) is spec.ChannelClose:
                    ch.release()
                    del self.channels[chnum]
                    self.write(pack_header(1, chnum, 4) + b"\x00\x14\x00\x29" + FRAME_END_BYTE)
                elif type(method) is spec.ChannelCloseOk:
                    pass
                else:
                    ch.handle(method)
            elif chnum in self.closing_channels:
                # after our channel.close, only close-ok (or a crossing close) matters
                if type(method) is spec.ChannelCloseOk:
                    self.closing_channels.discard(chnum)
                elif type(method) is spec.ChannelClose:
                    self.closing_channels.discard(chnum)
                    self.write(pack_header(1, chnum, 4) + b"\x00\x14\x00\x29" + FRAME_END_BYTE)
            elif type(method) is spec.ChannelOpen:
                self._open_channel(chnum)
            else:
                raise ConnectionFault(504, f"expected 'channel.open' on channel {chnum}")
        except AMQPError as err:
            if not err.class_id:
                err.class_id, err.method_id = cls.CLASS_ID, cls.METHOD_ID
            raise

    def _open_channel(self, chnum: int) -> None:
        if chnum > self.channel_max:
            raise ConnectionFault(504, f"channel number {chnum} exceeds channel_max {self.channel_max}")
        ch = Channel(self, chnum)
        self.channels[chnum] = ch
        self.write(pack_header(1, chnum, 8) + b"\x00\x14\x00\x0b\x00\x00\x00\x00" + FRAME_END_BYTE)

    def _channel_error(self, ch: Channel, err: ChannelError) -> None:
        del self.channels[ch.number]
        self.closing_channels.add(ch.number)
        ch.close_for_error(err)

    # -- connection class -------------------------------------------------------------------------

    def _connection_method(self, m: spec.Method) -> None:
        state = self.state
        t = type(m)
        if state == CLOSING_CONN:
            if t is spec.ConnectionCloseOk or t is spec.ConnectionClose:
                if t is spec.ConnectionClose:
                    self.send0(spec.ConnectionCloseOk())
                self.closed = True
            return
        if t is spec.ConnectionClose:
            self.send0(spec.ConnectionCloseOk())
            self._release_all()
            self.closed = True
            return
        if state == AWAIT_START_OK and t is spec.ConnectionStartOk:
            self._start_ok(m)  # type: ignore[arg-type]
        elif state == AWAIT_TUNE_OK and t is spec.ConnectionTuneOk:
            self._tune_ok(m)  # type: ignore[arg-type]
        elif state == AWAIT_OPEN and t is spec.ConnectionOpen:
            self._open(m)  # type: ignore[arg-type]
        elif state == OPENED and t is spec.ConnectionUpdateSecret:
            self.send0(spec.ConnectionUpdateSecretOk())
        elif state == OPENED and t in (spec.ConnectionBlocked, spec.ConnectionUnblocked):
            pass
        elif state == OPENED and t is spec.ConnectionCloseOk:
            self.closed = True
        else:
            raise ConnectionFault(503, f"unexpected method {m.NAME} in this connection state")

    def _start_ok(self, m: spec.ConnectionStartOk) -> None:
        self.client_properties = m.client_properties or {}
        caps = self.client_properties.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        if m.mechanism not in ("PLAIN", "AMQPLAIN"):
            raise ConnectionFault(
                403, f"unsupported authentication mechanism '{m.mechanism}'")
        creds = parse_response(m.mechanism, m.response)
        user = self.broker.users.authenticate(*creds) if creds else None
        if user is None:
            raise ConnectionFault(
                403, f"Login was refused using authentication mechanism {m.mechanism}. For details "
                "see the broker logfile.")
        if user.loopback_only and not _is_loopback(self.peer):
            raise ConnectionFault(403, f"User '{user.name}' can only connect via localhost")
        self.username = user.name
        self.state = AWAIT_TUNE_OK
        cfg = self.broker.config
        self.send0(spec.ConnectionTune(channel_max=cfg.channel_max, frame_max=cfg.frame_max,
                                       heartbeat=cfg.heartbeat))

    def _tune_ok(self, m: spec.ConnectionTuneOk) -> None:
        cfg = self.broker.config
        if m.frame_max and m.frame_max < spec.FRAME_MIN_SIZE:
            raise ConnectionFault(530, f"frame_max={m.frame_max} < {spec.FRAME_MIN_SIZE} min size")
        if cfg.frame_max and (m.frame_max == 0 or m.frame_max > cfg.frame_max):
            raise ConnectionFault(530, f"frame_max={m.frame_max} > {cfg.frame_max} max size")
        if cfg.channel_max and (m.channel_max == 0 or m.channel_max > cfg.channel_max):
            if m.channel_max:
                raise ConnectionFault(530, f"channel_max={m.channel_max} > {cfg.channel_max} max size")
        self.frame_max = m.frame_max or cfg.frame_max
        self.channel_max = m.channel_max or cfg.channel_max
        self.heartbeat = m.heartbeat
        self.state = AWAIT_OPEN

    def _open(self, m: spec.ConnectionOpen) -> None:
        vhost = self.broker.vhosts.get(m.virtual_host)
        user = self.broker.users.users.get(self.username)
        if vhost is None:
            raise ConnectionFault(530, f"vhost {m.virtual_host} not found")
        if user is None or m.virtual_host not in user.vhosts:
            raise ConnectionFault(530, f"access to vhost '{m.virtual_host}' refused for user "
                                  f"'{self.username}'")
        self.vhost = vhost
        self.state = OPENED
        self.broker.connections.add(self)
        self.send0(spec.ConnectionOpenOk())

    # -- closing ----------------------------------------------------------------------------------

    def _hard_error(self, err: AMQPError) -> None:
        """Send connection.close with the error; ignore everything but close-ok from now on."""
        if self.state == CLOSING_CONN or self.closed:
            return
        log.info("closing connection from %s: %s", self.peer, err.reply_text)
        self.close_reason = err
        if self.state == AWAIT_START_OK and not self.client_properties:
            # before start-ok the client cannot take connection.close: just close the socket
            self.closed = True
            self._release_all()
            return
        if self.state == AWAIT_START_OK and err.code == 403 and not self.capabilities.get(
                "authentication_failure_close"):
            self.closed = True
            self._release_all()
            return
        self.send0(spec.ConnectionClose(reply_code=err.code, reply_text=err.reply_text,
                                        class_id=err.class_id, method_id=err.method_id))
        self.state = CLOSING_CONN
        self._release_all()

    def close(self, code: int = 320, text: str = "broker forced connection closure with reason "
              "'shutdown'") -> None:
        """Server-initiated close (shutdown, admin): connection.close, then await close-ok."""
        self._hard_error(ConnectionFault(code, text))
        self._finish()

    def _release_all(self) -> None:
        for ch in list(self.channels.values()):
            ch.release()
        self.channels.clear()
        if self.vhost is not None:
            self.vhost.connection_closed(self)
        self.broker.connections.discard(self)
        self.pending_confirms.clear()
        for q in self.throttled:
            q.flow_waiters.pop(self, None)
        self.throttled.clear()

    def connection_lost(self) -> None:
        """The socket is gone: requeue unacked messages, drop consumers and exclusive queues."""
        if not self.closed or self.channels:
            self._release_all()
        self.closed = True
        self.state = CLOSED
        self._finish()

    # -- heartbeats (the shell calls these on its timer) ----------------------------------------

    def send_heartbeat(self) -> None:
        self.write(HEARTBEAT_FRAME)

    # -- flow control -----------------------------------------------------------------------------

    def block(self, reason: str) -> None:
        if not self.blocked and self.capabilities.get("connection.blocked") and self.state == OPENED:
            self.send0(spec.ConnectionBlocked(reason=reason))
        self.blocked = True

    def unblock(self) -> None:
        if self.blocked and self.capabilities.get("connection.blocked") and self.state == OPENED:
            self.send0(spec.ConnectionUnblocked())
        self.blocked = False


def _noop() -> None:
    pass
