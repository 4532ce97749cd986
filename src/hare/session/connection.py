"""An AMQP connection as a sans-IO state machine: bytes in, bytes out.

``receive_data`` parses every complete frame in the buffer in one pass, drives the handshake
(``handshake``) and the channels, and appends output frames to ``out``. The I/O shell (``hare.server``) moves
those bytes, runs the heartbeat timers and tells the connection when its socket backs up.

The frame loop has fast paths for basic.publish and basic.ack; every other method is decoded
by the generated codec into a method object.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any

from ..amqp import spec
from ..amqp.erlterm import frame_error_text, frame_snippet, w_binary, wire_text
from ..amqp.errors import AMQPError, ChannelError, ConnectionFault, SilentClose, Utf8Fault
from ..amqp.frames import FRAME_END_BYTE, HEARTBEAT_FRAME, pack_header, unpack_header
from ..auth.permissions import Access
from ..broker.broker import Broker
from ..broker.proposal import Pending, Proposed
from ..broker.queue import Queue
from ..broker.vhost import VirtualHost
from . import conn_log
from .channel import OPEN, Channel
from .handshake import (
    AWAIT_HEADER,
    AWAIT_START_OK,
    AWAIT_TUNE_OK,
    CLOSED,
    CLOSING_CONN,
    OPENED,
    Handshake,
)

log = logging.getLogger("hare.connection")

_unpack_I = struct.Struct(">I").unpack_from
_unpack_IQ = struct.Struct(">IQ").unpack_from
_unpack_QB = struct.Struct(">QB").unpack_from

IDX_PUBLISH = 0x3C0028
IDX_ACK = 0x3C0050

HIGH_WATER = 1 << 20  # pending output bytes above which deliveries pause until the shell flushes

# the content assembler's complaints (rabbit_command_assembler), for the content of basic.publish
EXPECT_METHOD = "expected method frame, got non method frame instead"
EXPECT_HEADER = "expected content header for class 60, got non content header frame instead"
EXPECT_BODY = "expected content body, got non content body frame instead"


def _frame_fault(ftype: int, payload: bytes, error: str | tuple[str, ...]) -> ConnectionFault:
    """501 as rabbit_reader reports a frame it cannot take (unknown type, bad end, too large)."""
    return ConnectionFault(501, wire_text(frame_error_text(ftype, payload, error)))


def _unexpected_frame(ftype: int, payload: bytes) -> ConnectionFault:
    """505 for a frame on the wrong channel for its type, or before connection.open."""
    return ConnectionFault(505, wire_text(frame_snippet(ftype, payload)))


def _cannot_decode(args: bytes, class_id: int, method_id: int) -> ConnectionFault:
    """501 for method arguments that do not have the method's layout (short, or too long)."""
    return ConnectionFault(501, f"cannot decode {w_binary(args)}", class_id, method_id)


def _decode_error(cls: type[spec.Method], payload: bytes, exc: Exception) -> ConnectionFault:
    """A channel's method that does not decode, as RabbitMQ sees it: arguments that do not fill
    the frame exactly are 501 "cannot decode"; then its short strings must be UTF-8 and its field
    tables parse. (A table RabbitMQ cannot parse kills its reader and the socket just closes; hare
    says why, with 502 SYNTAX_ERROR.)"""
    if not spec.layout_ok(cls, payload, 0):
        return _cannot_decode(payload, cls.CLASS_ID, cls.METHOD_ID)
    if isinstance(exc, Utf8Fault):
        return ConnectionFault(501, exc.text)
    return ConnectionFault(502, f"{cls.NAME}: {exc}", cls.CLASS_ID, cls.METHOD_ID)


def _unknown_method(idx: int) -> ConnectionFault:
    """540 for a class or method id the spec does not have. (RabbitMQ's reader dies on one and the
    socket just closes; hare names the problem, as the protocol's NOT_IMPLEMENTED allows.)"""
    return ConnectionFault(540, f"unknown method (class {idx >> 16}, method {idx & 0xFFFF})", idx >> 16,
                           idx & 0xFFFF)


def _awaiting_content(pub_size: int) -> ConnectionFault:
    """505 for a frame that is not the content the basic.publish before it announced."""
    return ConnectionFault(505, EXPECT_BODY if pub_size > 0 else EXPECT_HEADER, 60, 40)


class _Sink(list[bytes]):
    """The body parts of a publish whose body overran its declared size: RabbitMQ keeps awaiting
    the rest (which never adds up again), so its further body frames are dropped here."""

    def append(self, item: bytes) -> None:
        pass


class _Oversize(_Sink):
    """The body parts of a publish whose declared size is over max_message_size: it will be
    refused (406) once complete, as RabbitMQ refuses it, so its parts are not kept meanwhile."""

    def __bool__(self) -> bool:
        return True


class _Assembly(list[bytes]):
    """The body of a large publish, assembled frame by frame into one bytearray: each frame is
    copied once as it arrives, instead of a join copying the whole body in one event-loop turn
    when its last frame comes. The message's body is then that bytearray."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray()

    def append(self, item: bytes) -> None:
        self.buf += item

    def __iter__(self) -> Iterator[bytes]:  # (the parts so far: one)
        return iter((self.buf,))

    def __bool__(self) -> bool:
        return True


BIG_BODY = 1 << 20  # a body at least this large is assembled in place (_Assembly)


class _Closing:
    """A channel that awaits the client's channel.close-ok. Frames for it are discarded, but, as
    in RabbitMQ, they still have to make sense: a content must follow its basic.publish."""

    __slots__ = ("content", "header_due", "remaining", "by_client")

    def __init__(self, by_client: bool = False) -> None:
        self.content = 0  # class and method index of the method whose content is due, or 0
        self.header_due = False  # its content header is due (else body octets are)
        self.remaining = 0  # the body octets still due (counting down past 0, as RabbitMQ does)
        self.by_client = by_client  # the client's channel.close: forgotten after this input


class Connection(Handshake):
    def __init__(self, broker: Broker, peer: Any = None, wake: Callable[[], None] | None = None,
                 on_flow_resume: Callable[[], None] | None = None) -> None:
        self.broker = broker
        self.peer = peer
        self.name = conn_log.address(peer)  # "PEER -> LOCAL" in logs; the shell sets it
        self.lost_reason: str | None = None  # why the shell dropped the socket (missed heartbeats)
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
        self.frame_max = spec.FRAME_MIN_SIZE  # RabbitMQ's initial_frame_max, until tune-ok
        self.heartbeat = cfg.heartbeat
        self.channels: dict[int, Channel] = {}
        self.closing_channels: dict[int, _Closing] = {}
        self.client_closed: list[int] = []  # channels the client closed in this input batch
        self.vhost: VirtualHost = None  # type: ignore[assignment]  # set by connection.open
        self.username = ""
        self.access: Access = None  # type: ignore[assignment]  # set by connection.open
        self.tls = False  # set by the shell: a TLS connection
        self.peer_cert: dict[str, Any] | None = None  # and the client's verified certificate
        self.client_properties: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.pending_dispatch: dict[Queue, None] = {}
        self.pending_confirms: dict[Channel, None] = {}
        self.closed = False  # the shell should close the socket once output is flushed
        self.close_reason: AMQPError | None = None
        self.blocked = False  # connection.blocked was sent (or would be, without the capability)
        self.alarm_paused = False  # blocked by a resource alarm: the shell does not read us
        self.throttled: set[Queue] = set()  # queues whose backlog asks us to stop reading
        # a metadata change of ours the cluster has not applied yet (broker/proposal.py): its
        # method frame and the input after it wait in self.buf; the shell does not read us
        self.waiting: Pending | None = None

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

    def unacked_limit_changed(self, limit: int) -> None:
        """Memory pressure came or went (``Broker.set_memory_pressure``): each channel's share of
        unacked bytes is ``limit``; channels under it again take deliveries at once."""
        for ch in self.channels.values():
            ch.set_unacked_limit(limit)
        if self.pending_dispatch:
            self._finish()

    def confirms_pending(self, ch: Channel) -> None:
        self.pending_confirms[ch] = None

    def _finish(self) -> None:
        """End of a batch: dispatch the queues that got work, send the batched confirms."""
        while self.pending_dispatch:
            queues = self.pending_dispatch
            self.pending_dispatch = {}
            for q in queues:
                if q.consumer_count and not q.deleted:
                    try:
                        q.dispatch()
                    except Exception:  # a queue's trouble is not this connection's (nor the next queue's)
                        log.exception("queue '%s' in vhost '%s': dispatch failed", q.name, q.vhost_name)
        if self.pending_confirms:
            for ch in self.pending_confirms:
                if ch.state == OPEN:
                    ch.flush_confirms()
            self.pending_confirms.clear()

    # -- input ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        if self.waiting is not None:
            if not self.waiting.done:
                self.buf += data
                return
            data = self._replay(data)
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == AWAIT_HEADER:
            data = self._protocol_header(data)
            if not data:
                return
        try:
            self._frames(data)
        finally:
            if self.client_closed:
                self._forget_client_closed()
            self._finish()

    def _replay(self, data: bytes) -> bytes:
        """The cluster applied (or refused) our change: handle the method that proposed it
        again, with the command layer told so (``Commands.replay``); return the rest of the
        input, which waited behind it."""
        pending, self.waiting = self.waiting, None
        held, self.buf = self.buf + data, b""
        size = 8 + unpack_header(held, 0)[2]
        commands = self.broker.commands
        commands.replay = pending
        try:
            self.receive_data(held[:size])
        finally:
            commands.replay = None
        if self.waiting is not None:  # it proposed again (another node's change came first)
            self.buf += held[size:]
            return b""
        return held[size:]

    def _forget_client_closed(self) -> None:
        """At the end of the input in which the client closed channels: send their close-ok and
        free their numbers. (RabbitMQ's channel lingers, closing, until its reader has handled the
        whole read: a channel.open for it in the same read is a second channel.open, a close-ok
        from the client ends it without a close-ok from the server.)"""
        for chnum in self.client_closed:
            closing = self.closing_channels.get(chnum)
            if closing is not None and closing.by_client:
                del self.closing_channels[chnum]
                if self.state == OPENED:
                    self.write(pack_header(1, chnum, 4) + b"\x00\x14\x00\x29" + FRAME_END_BYTE)
        self.client_closed.clear()

    def _frames(self, data: bytes) -> None:
        """Parse and act on every complete frame in ``data``; keep a partial tail in self.buf.

        The publish path (basic.publish, content header, body) and basic.ack are handled
        inline, without building method objects; everything else goes through _other_frame.
        Errors are RabbitMQ's (rabbit_reader, rabbit_command_assembler), code and text."""
        pos = 0
        n = len(data)
        channels = self.channels
        frame_max = self.frame_max
        alarms = self.broker.alarms  # (a set changed in place)
        while n - pos >= 7 and not self.closed:
            ftype, chnum, size = unpack_header(data, pos)
            if size > frame_max:  # RabbitMQ allows frame_max octets of payload, 8 more than it says
                frame_max = self.frame_max  # a tune-ok earlier in this input raised it
                if size > frame_max:
                    self._hard_error(_frame_fault(ftype, b"", (
                        "frame_too_large", str(size), str(frame_max - 8))))
                    return
            end = pos + 7 + size
            if end >= n:
                break
            start = pos + 7
            pos = end + 1
            if data[end] != 0xCE:
                self._hard_error(_frame_fault(ftype, data[start:end], (
                    "invalid_frame_end_marker", str(data[end]))))
                return
            ch = channels.get(chnum)
            try:
                if ch is not None and ch.state == OPEN:
                    pub = ch.pub
                    if ftype == 3 and pub is not None and ch.pub_size > 0:
                        # content body: the hot path of every publish
                        got = ch.pub_received + size
                        if got < ch.pub_size:
                            parts = ch.pub_body
                            if type(parts) is _Assembly:
                                parts.buf += memoryview(data)[start:end]
                            else:
                                parts.append(data[start:end])
                            ch.pub_received = got
                            if alarms and not self.alarm_paused:
                                self.publish_blocked()
                            continue
                        body = data[start:end]
                        if got > ch.pub_size:
                            # RabbitMQ counts down past zero and keeps awaiting body frames
                            ch.pub_size = 1 << 64
                            ch.pub_body = _Sink()
                            continue
                        if ch.pub_body:
                            if type(ch.pub_body) is _Oversize:
                                ch.pub = None
                                ch.pub_body = []
                                ch.refuse_oversize(pub, ch.pub_size)
                                continue
                            parts = ch.pub_body
                            if type(parts) is _Assembly:
                                parts.buf += body
                                body = parts.buf  # type: ignore[assignment]
                            else:
                                parts.append(body)
                                body = b"".join(parts)
                            ch.pub_body = []
                        ch.pub = None
                        ch.publish(pub, ch.pub_props, body)
                        continue
                    if ftype == 1:
                        if size < 4:
                            raise _frame_fault(1, data[start:end], "unknown_frame")
                        idx = _unpack_I(data, start)[0]
                        if pub is not None:
                            if idx not in spec.METHODS:
                                raise _unknown_method(idx)
                            raise _awaiting_content(ch.pub_size)
                        if idx == IDX_PUBLISH:
                            o = start + 6  # class, method, ticket
                            ex_end = o + 1 + data[o]
                            rk_end = ex_end + 1 + data[ex_end]
                            if rk_end + 1 != end:
                                raise _cannot_decode(data[start + 4 : end], 60, 40)
                            bits = data[rk_end]
                            ch.pub = (data[o + 1 : ex_end].decode("utf-8", "surrogateescape"),
                                      data[ex_end + 1 : rk_end].decode("utf-8", "surrogateescape"),
                                      data[o:rk_end], bool(bits & 1), bool(bits & 2))
                            ch.pub_size = -1
                            continue
                        if idx == IDX_ACK:
                            if size != 13:
                                raise _cannot_decode(data[start + 4 : end], 60, 80)
                            tag, bits = _unpack_QB(data, start + 4)
                            ch.ack(tag, bool(bits & 1))
                            continue
                        self._method(chnum, ch, idx, data[start + 4 : end])
                        continue
                    if ftype == 2 and pub is not None and ch.pub_size < 0:
                        if size < 14:
                            raise self._bad_content_header(data[start:end])
                        class_weight, body_size = _unpack_IQ(data, start)
                        if class_weight != 0x3C0000:  # class 60, weight 0
                            raise self._bad_content_header(data[start:end])
                        if alarms and not self.alarm_paused:
                            self.publish_blocked()
                        props = data[start + 12 : end]
                        if body_size == 0:
                            ch.pub = None
                            ch.publish(pub, props, b"")
                        else:
                            ch.pub_props = props
                            ch.pub_size = body_size
                            ch.pub_received = 0
                            if body_size > ch.max_size:
                                ch.pub_body = _Oversize()
                            elif body_size >= BIG_BODY:
                                ch.pub_body = _Assembly()
                        continue
                self._other_frame(ftype, chnum, ch, data[start:end])
            except ChannelError as err:
                if ch is None or ch.state != OPEN:
                    self._hard_error(ConnectionFault(504, err.text))
                    return
                if not err.class_id and ftype == 1:  # basic.ack's inline path
                    idx = _unpack_I(data, start)[0]
                    err.class_id, err.method_id = idx >> 16, idx & 0xFFFF
                self._channel_error(ch, err)
            except AMQPError as err:
                self._hard_error(err)
                return
            except Proposed as proposed:  # wait for the cluster; this frame runs again then
                self.waiting = proposed.pending
                self.buf = data[start - 7:]
                return
            except Exception as exc:  # never let a bug (or a frame we misread) take the broker down
                self._hard_error(self._internal_error(exc, ftype, data[start:end]))
                return
        if pos < n:
            self.buf = data[pos:]

    def _internal_error(self, exc: Exception, ftype: int, payload: bytes) -> AMQPError:
        """An exception from a frame: method arguments the inline paths misread (basic.publish
        shorter than its lengths say) are RabbitMQ's 501; anything else is a bug: 541."""
        if ftype == 1 and len(payload) >= 4:
            idx = _unpack_I(payload, 0)[0]
            cls = spec.METHODS.get(idx)
            if cls is not None and not spec.layout_ok(cls, payload, 4):
                return _cannot_decode(payload[4:], cls.CLASS_ID, cls.METHOD_ID)
        log.error("internal error on connection from %s", self.peer, exc_info=exc)
        return ConnectionFault(541, "")  # RabbitMQ's crash: "INTERNAL_ERROR", (0, 0)

    @staticmethod
    def _bad_content_header(payload: bytes) -> AMQPError:
        """A content header that is not the one a basic.publish awaits: too short to be a header
        (501), properties too short to decode (RabbitMQ's channel crashes: 541), another class
        or a non-zero weight (505)."""
        if len(payload) < 12:
            return _frame_fault(2, payload, "unknown_frame")
        class_id, weight = struct.unpack_from(">HH", payload, 0)
        if class_id != 60 and not weight:
            return ConnectionFault(505, f"expected content header for class 60, got one for class "
                                   f"{class_id} instead", 60, 40)
        if weight:
            return ConnectionFault(505, EXPECT_HEADER, 60, 40)
        return ConnectionFault(541, "")

    def _other_frame(self, ftype: int, chnum: int, ch: Channel | None, payload: bytes) -> None:
        """Every frame the inline paths do not take, sorted as rabbit_reader sorts them."""
        if chnum and self.state != OPENED:
            raise _unexpected_frame(ftype, payload)  # channels before connection.open-ok
        if ftype == 1 and len(payload) >= 4:
            self._method(chnum, ch, _unpack_I(payload, 0)[0], payload[4:])
        elif ftype == 8 and not payload:
            if chnum:
                raise _unexpected_frame(8, payload)
        elif ftype == 3 or (ftype == 2 and len(payload) >= 12):
            if not chnum:
                raise _unexpected_frame(ftype, payload)
            self._content_frame(chnum, ch, ftype, payload)
        else:
            raise _frame_fault(ftype, payload, "unknown_frame")

    def _content_frame(self, chnum: int, ch: Channel | None, ftype: int, payload: bytes) -> None:
        """A content header or body the inline path did not take: on an open channel it is not
        the frame due; on a closing one it may be the content of a publish, to be discarded."""
        if ch is not None and ch.state == OPEN:
            if ch.pub is None:
                raise ConnectionFault(505, EXPECT_METHOD)
            raise _awaiting_content(ch.pub_size)
        closing = self.closing_channels.get(chnum)
        if closing is None:
            self._count_channel()  # RabbitMQ makes a channel for any frame on a new number
            raise ConnectionFault(505, EXPECT_METHOD)
        due = closing.content
        if not due:
            raise ConnectionFault(505, EXPECT_METHOD)
        if closing.header_due:
            class_id, weight, body_size = struct.unpack_from(">HHQ", payload, 0) if ftype == 2 else (
                0, 1, 0)
            if weight:
                raise ConnectionFault(505, EXPECT_HEADER, due >> 16, due & 0xFFFF)
            if class_id != due >> 16:
                raise ConnectionFault(505, f"expected content header for class {due >> 16}, got one "
                                      f"for class {class_id} instead", due >> 16, due & 0xFFFF)
            closing.header_due = False
            closing.remaining = body_size
            if not body_size:
                closing.content = 0
        elif ftype != 3:
            raise ConnectionFault(505, EXPECT_BODY, due >> 16, due & 0xFFFF)
        else:
            closing.remaining -= len(payload)
            if not closing.remaining:
                closing.content = 0

    def _method(self, chnum: int, ch: Channel | None, idx: int, payload: bytes) -> None:
        cls = spec.METHODS.get(idx)
        if cls is None:
            raise _unknown_method(idx)
        if chnum == 0:
            method = self._decode0(cls, payload)
            try:
                self._connection_method(method)
            except AMQPError as err:
                if not err.class_id:
                    err.class_id, err.method_id = cls.CLASS_ID, cls.METHOD_ID
                raise
            return
        if ch is not None and ch.state == OPEN:
            try:
                method = cls.decode(payload, 0)
            except Exception as exc:
                raise _decode_error(cls, payload, exc) from exc
            t = type(method)
            if t is spec.ChannelClose:  # close-ok at the end of this input (_forget_client_closed)
                ch.release()
                del self.channels[chnum]
                self.closing_channels[chnum] = _Closing(by_client=True)
                self.client_closed.append(chnum)
            elif cls.CONTENT or t is spec.ChannelCloseOk:
                # a client's basic.deliver, get-ok or return (RabbitMQ says so once their content
                # has arrived), or a channel.close-ok for a channel nobody closed
                raise ConnectionFault(503, "unimplemented method", cls.CLASS_ID, cls.METHOD_ID)
            else:
                try:
                    ch.handle(method)
                except AMQPError as err:
                    if not err.class_id and err.code != 541:  # (541: a crash names no method)
                        err.class_id, err.method_id = cls.CLASS_ID, cls.METHOD_ID
                    raise
            return
        closing = self.closing_channels.get(chnum)
        if closing is not None:
            # a closing channel ignores everything but close and close-ok (and a second open)
            due = closing.content
            if due:
                raise ConnectionFault(505, EXPECT_HEADER if closing.header_due else EXPECT_BODY,
                                      due >> 16, due & 0xFFFF)
            t = type(self._decode(cls, payload))
            if cls.CONTENT:
                closing.content = idx
                closing.header_due = True
            elif t is spec.ChannelOpen:
                raise ConnectionFault(504, "second 'channel.open' seen", 20, 10)
            elif t is spec.ChannelCloseOk:
                del self.closing_channels[chnum]
            elif t is spec.ChannelClose:  # crossing closes: answer, keep awaiting the close-ok
                self.write(pack_header(1, chnum, 4) + b"\x00\x14\x00\x29" + FRAME_END_BYTE)
            return
        self._count_channel()
        if type(self._decode(cls, payload)) is spec.ChannelOpen:
            self._open_channel(chnum)
        else:  # (a basic.publish: RabbitMQ says so once its content has arrived)
            raise ConnectionFault(504, "expected 'channel.open'", cls.CLASS_ID, cls.METHOD_ID)

    @staticmethod
    def _decode(cls: type[spec.Method], payload: bytes) -> spec.Method:
        try:
            return cls.decode(payload, 0)
        except Exception as exc:
            raise _decode_error(cls, payload, exc) from exc

    def _decode0(self, cls: type[spec.Method], payload: bytes) -> spec.Method:
        """Decode a method on channel 0. RabbitMQ reports a UTF-8 error with the method; any
        other failure is not an AMQP error to it: 541 once open, the end of the handshake before."""
        try:
            return cls.decode(payload, 0)
        except Exception as exc:
            if isinstance(exc, Utf8Fault) and spec.layout_ok(cls, payload, 0):
                raise ConnectionFault(501, exc.text, cls.CLASS_ID, cls.METHOD_ID) from exc
            if self.state == OPENED:
                raise ConnectionFault(541, "") from exc
            raise SilentClose(502, f"{cls.NAME}: {exc}") from exc

    def _count_channel(self) -> None:
        """RabbitMQ limits how many channels are open (closing ones count), not their numbers."""
        count = len(self.channels) + len(self.closing_channels)
        if self.channel_max and count >= self.channel_max:
            raise ConnectionFault(530, f"number of channels opened ({count}) has reached the "
                                  f"negotiated channel_max ({self.channel_max})")
        limit = self.access.user.limits.get("max-channels")
        if limit is not None:
            total = sum(len(c.channels) + len(c.closing_channels) for c in self.broker.connections
                        if c.username == self.username)
            if total >= limit:
                raise ConnectionFault(530, f"number of channels opened for user '{self.username}' has "
                                      f"reached the maximum allowed user limit of ({limit})")

    def permissions_changed(self, user: Any) -> None:
        """The command layer changed this connection's user: decide access afresh."""
        if self.access is not None:
            self.access.user = user
            self.access.clear()

    def _open_channel(self, chnum: int) -> None:
        ch = Channel(self, chnum)
        self.channels[chnum] = ch
        self.write(pack_header(1, chnum, 8) + b"\x00\x14\x00\x0b\x00\x00\x00\x00" + FRAME_END_BYTE)

    def _channel_error(self, ch: Channel, err: ChannelError) -> None:
        conn_log.channel_error(self, ch.number, err)
        del self.channels[ch.number]
        self.closing_channels[ch.number] = _Closing()
        ch.close_for_error(err)

    def channel_error(self, ch: Channel, err: ChannelError) -> None:
        """Close ``ch`` for a soft error found outside its input (a timer: the consumer timeout),
        then dispatch the requeued messages."""
        if self.state == OPENED and self.channels.get(ch.number) is ch:
            self._channel_error(ch, err)
            self._finish()

    # -- closing ----------------------------------------------------------------------------------

    def _hard_error(self, err: AMQPError) -> None:
        """Send connection.close with the error; ignore everything but close-ok from now on.

        Until tune-ok RabbitMQ tells the client nothing (it waits 3 s, then closes the socket;
        hare closes it at once)."""
        if self.state == CLOSING_CONN or self.closed:
            return
        conn_log.connection_error(self, err)
        self.close_reason = err
        if isinstance(err, SilentClose) or self.state in (AWAIT_START_OK, AWAIT_TUNE_OK):
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
            try:
                ch.release()
            except Exception:  # the other channels (and the vhost's cleanup) still take place
                log.exception("connection %s: releasing channel %d failed", self.name, ch.number)
        self.channels.clear()
        if self.vhost is not None:
            self.broker.commands.connection_closed(self.vhost, self)
        self.broker.connections.discard(self)
        self.pending_confirms.clear()
        for q in self.throttled:
            q.flow_waiters.pop(self, None)
        self.throttled.clear()

    def connection_lost(self) -> None:
        """The socket is gone: requeue unacked messages, drop consumers and exclusive queues."""
        if not self.closed:
            conn_log.lost(self, self.lost_reason)
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

    def alarm_changed(self) -> None:
        """A resource alarm went on or off. As RabbitMQ 3.10, an alarm going on tells nobody: a
        connection is blocked (connection.blocked, no longer read) when a publish's content
        arrives during the alarm, even if it published before. When every alarm is clear, blocked
        connections are told (connection.unblocked) and read again."""
        if not self.broker.alarms and (self.blocked or self.alarm_paused):
            self.unblock()
            self.alarm_paused = False
            self.on_flow_resume()

    def publish_blocked(self) -> None:
        """A publish's content arrived during a resource alarm: this frame is taken (and the rest
        of the input in hand); then stop reading."""
        self.block(_alarm_reason(self.broker.alarms))
        self.alarm_paused = True


def _alarm_reason(alarms: set[str]) -> str:
    """connection.blocked's reason, as RabbitMQ words it: "low on memory", "low on disk & memory"."""
    return "low on " + " & ".join(sorted(alarms))


def _noop() -> None:
    pass
