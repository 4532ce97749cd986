"""The asyncio shell: a listener and one Protocol per socket around a sans-IO Connection.

It moves bytes (coalescing output to one write per event-loop turn), runs the heartbeat and
handshake timers, and passes the socket's back-pressure to the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from time import perf_counter
from typing import Any

from ..broker.broker import Broker
from ..broker.timers import now_ms
from ..session import conn_log
from ..session.connection import CLOSED, CLOSING_CONN, OPENED, Connection
from . import tls
from .control import SOCKET_NAME, ControlServer
from .listeners import Listener, bind, describe
from .memory import MemoryMonitor
from .storage import StoreDriver

log = logging.getLogger("hare.server")

CLOSE_TIMEOUT = 1.0  # how long to wait for close-ok after we sent connection.close
FLOW_PAUSE = 0.05  # longest pause of a throttled publisher before it is read again
FAIR_READ = 65536  # a read this large suggests more is pending: yield to other sockets
# Output back-pressure: past OUT_HIGH bytes in the transport's buffer (a peer that reads slowly,
# or not at all) the connection takes no deliveries; once its input has made us write more than
# OUT_ANSWERS bytes on top (returns, get-oks, method replies), its input is not read either. Both
# resume under OUT_LOW. (Input that adds no output, a big publish, is still read: a client that
# sends a large message without reading meanwhile must be able to finish it.)
OUT_HIGH = 1 << 20
OUT_LOW = 256 << 10
OUT_ANSWERS = 64 << 10
# CPU fairness: a connection whose read took longer than HEAVY_READ seconds to handle (wide
# headers to check and route, thousands of methods in one read) is heavy for its next
# HEAVY_STICKY reads. Each loop turn handles the input of at most one heavy connection: the
# reads of the others are kept for a later turn, and their sockets paused until then, so a turn
# costs others at most one heavy read whatever the number of heavy clients (light connections
# are handled every turn, in the order they are read).
# A heavy connection's read is handled HEAVY_PIECE bytes a turn (a read may hold 256 KiB).
HEAVY_READ = 0.002
HEAVY_STICKY = 8
HEAVY_PIECE = 65536


class AMQPProtocol(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.conn: Connection = None  # type: ignore[assignment]
        self.flush_scheduled = False
        self.received = False  # bytes arrived since the last heartbeat check
        self.sent = False  # bytes left since the last heartbeat tick
        self.ticks = 0  # heartbeat ticks since the connection opened
        self.silent_checks = 0  # receive checks in a row that saw no byte from the peer
        self.timer: asyncio.TimerHandle | None = None
        self.heartbeat = 0
        self.flow_timer: asyncio.TimerHandle | None = None
        self.answered = 0  # bytes our input made us write while the output was backed up
        self.output_held = False  # not read until the output drains (see OUT_ANSWERS)
        self.heavy = 0  # reads left for which this connection counts as heavy (see HEAVY_READ)
        self.deferred: list[bytes] | None = None  # input kept for a later turn (heavy)

    # -- asyncio callbacks ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=OUT_HIGH, low=OUT_LOW)
        self.conn = Connection(self.server.broker, transport.get_extra_info("peername"),
                               wake=self._wake, on_flow_resume=self._flow_resume)
        self.conn.name = conn_log.name(self.conn.peer, transport.get_extra_info("sockname"))
        conn_log.accepted(self.conn)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:  # an AMQPS listener: the handshake is done, the certificate verified
            self.conn.tls = True
            self.conn.peer_cert = sslobj.getpeercert() or None
        self.server.protocols.add(self)
        timeout = self.server.broker.config.handshake_timeout  # ms; None: no limit
        if timeout is not None:
            self.timer = self.loop.call_later(timeout / 1000, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.deferred is not None:  # (a transport may hand over what it had read before pausing)
            self.deferred.append(data)
            return
        if self.heavy and self.server.heavy_turn:  # another heavy connection had this turn
            self._defer(data)
            return
        self._handle(data)

    def _defer(self, data: bytes) -> None:
        self.deferred = [data]
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.loop.call_soon(self._run_deferred)

    def _run_deferred(self) -> None:
        deferred = self.deferred
        if deferred is None:
            return
        if self.server.heavy_turn:  # another heavy connection came first again: wait once more
            self.loop.call_soon(self._run_deferred)
            return
        self.deferred = None
        if self.transport is None or self.transport.is_closing() or self.conn.state == CLOSED:
            return
        if not self._handle(deferred[0] if len(deferred) == 1 else b"".join(deferred)):
            self._resume_reading()

    def _handle(self, data: bytes) -> bool:
        """Handle one read; True when reading is paused for a reason of its own (alarm, flow,
        backed-up output, a full read)."""
        self.flush_scheduled = True  # we flush right below; writes need not schedule one
        rest = None
        if self.heavy and len(data) > HEAVY_PIECE:
            data, rest = data[:HEAVY_PIECE], data[HEAVY_PIECE:]
        conn = self.conn
        before = conn.state
        memory = self.server.memory
        if memory is not None:
            memory.budget -= len(data)
            if memory.budget < 0:
                memory.read()
        started = perf_counter()
        conn.receive_data(data)
        if perf_counter() - started > HEAVY_READ:
            self.heavy = HEAVY_STICKY
            server = self.server
            if not server.heavy_turn:
                server.heavy_turn = True
                self.loop.call_soon(server.end_heavy_turn)
        elif self.heavy:
            self.heavy -= 1
        answers = conn.out_size  # (no deliveries to us while our output is backed up: answers)
        self._flush()
        if conn.state != before:
            self._state_changed(before)
        if conn.paused and answers:
            self._answered(answers)
        transport = self.transport
        if transport is None or transport.is_closing():
            return True
        if conn.waiting is not None:
            # a metadata change waits for the cluster: read again when it is applied
            if rest is not None:
                conn.buf += rest
            transport.pause_reading()
            conn.waiting.add_done_callback(self._waited)
            return True
        if rest is not None:  # the rest of a heavy read: in a later turn
            self._defer(rest)
            return True
        if conn.alarm_paused:
            transport.pause_reading()  # a resource alarm: read again when it clears
        elif conn.throttled:
            # a queue we publish to is backed up: stop reading until it drains (or briefly)
            if self.flow_timer is None:
                transport.pause_reading()
                self.flow_timer = self.loop.call_later(FLOW_PAUSE, self._flow_timeout)
        elif len(data) >= FAIR_READ:
            # A full read means more is waiting. The event loop would keep reading this socket
            # before polling the others; pause it for one loop turn so every connection (and the
            # acks that free consumers) gets its share.
            transport.pause_reading()
            self.loop.call_soon(self._resume_reading)
        else:
            return self.output_held
        return True

    def _waited(self, _pending: object) -> None:
        """The cluster applied the change our input waited for: handle that input now."""
        if self.transport is None or self.transport.is_closing() or self.conn.waiting is None:
            return
        if not self._handle(b""):
            self._resume_reading()

    def _resume_reading(self) -> None:
        conn = self.conn
        if (self.flow_timer is None and not conn.alarm_paused and not self.output_held
                and conn.waiting is None
                and self.transport is not None and not self.transport.is_closing()):
            self.transport.resume_reading()

    def _flow_resume(self) -> None:
        if self.flow_timer is not None:
            self.flow_timer.cancel()
            self.flow_timer = None
        self._resume_reading()

    def _flow_timeout(self) -> None:
        """Never stay paused long: a publisher that also consumes must get its acks read."""
        self.flow_timer = None
        self.conn.flow_resume(None)
        self._resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def _answered(self, size: int) -> None:
        """Our output is backed up and the peer's input made us write ``size`` more bytes: past
        OUT_ANSWERS, stop reading it until the output drains (as RabbitMQ's credit flow stops a
        reader whose writer is backed up), so a client that never reads cannot make us buffer
        without limit (the returns of its mandatory publishes, get-oks, replies)."""
        self.answered += size
        if (self.answered > OUT_ANSWERS and not self.output_held and self.transport is not None
                and not self.transport.is_closing()):
            self.output_held = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()
        self.answered = 0
        self._flush()
        if self.output_held:
            self.output_held = False
            self._resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.flow_timer is not None:
            self.flow_timer.cancel()
            self.flow_timer = None
        self.server.protocols.discard(self)
        self.conn.connection_lost()
        self.conn.wake = _noop

    # -- output -----------------------------------------------------------------------------------

    def _wake(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            self.conn.data_to_send()
            return
        out = self.conn.data_to_send()
        if out:
            transport.writelines(out)
            self.sent = True
        if self.conn.closed and self.conn.state != CLOSED:  # CLOSED: see _state_changed
            transport.close()

    # -- timers -----------------------------------------------------------------------------------

    def _state_changed(self, before: int) -> None:
        state = self.conn.state
        if state == OPENED and before != OPENED:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.heartbeat = self.conn.heartbeat
            if self.heartbeat:
                self.timer = self.loop.call_later(self.heartbeat / 2, self._heartbeat_tick)
        elif state == CLOSING_CONN or state == CLOSED:
            # CLOSING_CONN: we sent connection.close; wait that long for close-ok. CLOSED: we
            # answered the client's close with close-ok; like RabbitMQ, let the client close the
            # socket (amqpstorm logs a warning when the broker does it first), but wait no longer
            # than that for it.
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(CLOSE_TIMEOUT, self._abort)

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.conn.state != OPENED:
            self.conn.lost_reason = "handshake timeout"
            self._abort()

    def _heartbeat_tick(self) -> None:
        """RabbitMQ's heartbeaters on one timer. Every half interval: send a heartbeat on the first
        tick and whenever we were silent since the last one. Every full interval: check the peer;
        two checks in a row without a byte from it (2 to 3 intervals of silence) drop it."""
        interval = self.heartbeat / 2
        self.ticks += 1
        if not self.ticks & 1:
            if self.received or self.conn.alarm_paused or self.output_held or self.conn.waiting:
                # not read while blocked or backed up: not silent
                self.received = False
                self.silent_checks = 0
            elif self.silent_checks < 1:
                self.silent_checks += 1
            else:
                self.conn.lost_reason = f"missed heartbeats from client, timeout: {self.heartbeat}s"
                self._abort()
                return
        if (self.ticks == 1 or not self.sent) and self.conn.state == OPENED:
            self.conn.send_heartbeat()
            self._flush()
        self.sent = False
        self.timer = self.loop.call_later(interval, self._heartbeat_tick)

    def _abort(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    # -- shutdown ---------------------------------------------------------------------------------

    def shutdown(self) -> None:
        self.conn.close()
        self._flush()
        if self.conn.closed and self.transport is not None:
            self.transport.close()


def _noop() -> None:
    pass


class Server:
    """Listens for AMQP connections for one Broker: on ``host:port``, or on each of
    ``listeners`` (plain and TLS; host None: every interface, IPv4 and IPv6)."""

    def __init__(self, broker: Broker, host: str | None = "0.0.0.0", port: int = 5672,
                 listeners: list[Listener] | None = None) -> None:
        self.broker = broker
        self.host = host
        self.port = port  # of the first plain listener (else the first), once started
        self.listeners = listeners if listeners is not None else [Listener(host, port)]
        self.bound: list[tuple[Listener, list[tuple]]] = []  # each listener's socket addresses
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.protocols: set[AMQPProtocol] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self.storage: StoreDriver | None = None
        self.timer: asyncio.TimerHandle | None = None  # runs the broker's due timers
        self.timer_at = 0  # the deadline (ms) it is set for
        self.control: ControlServer | None = None  # the socket of `hare ctl` (server/control.py)
        self.memory: MemoryMonitor | None = None  # the memory alarm (server/memory.py)
        self.background_scheduled = False  # a slice of the broker's big jobs is due
        self.heavy_turn = False  # a heavy connection's read was handled in this loop turn
        self._serving = True

    async def start_serving(self) -> None:
        for server in self._servers:
            await server.start_serving()

    def end_heavy_turn(self) -> None:
        self.heavy_turn = False

    async def start(self, serving: bool = True) -> None:
        """Bind the listeners and start the broker's machinery; ``serving`` False: accept no
        connection before ``start_serving`` (a cluster node joins first)."""
        self.loop = asyncio.get_running_loop()
        self._serving = serving
        if self.broker.store is not None and self.storage is None:
            self.storage = StoreDriver(self.broker, self.broker.store, self.loop)
        self.broker.timers.on_change = self._schedule_timers
        self._schedule_timers()
        self.broker.background.on_wake = self._wake_background
        if self.broker.background.jobs:
            self._wake_background()
        if self.memory is None:
            self.memory = MemoryMonitor(self.broker, self.loop)
        self.bound = []
        try:
            for listener in self.listeners:
                await self._listen(listener)
        except BaseException:
            await self._close_listeners()
            raise
        plain = [addrs for listener, addrs in self.bound if listener.tls is None]
        if self.bound:
            self.port = (plain or [self.bound[0][1]])[0][0][1]
        if self.broker.data_dir is not None and self.control is None:
            control = ControlServer(self.broker, self.broker.data_dir / SOCKET_NAME)
            if await control.start():
                self.control = control

    async def _listen(self, listener: Listener) -> None:
        socks = bind(listener.host, listener.port)
        try:
            for sock in socks:
                self._servers.append(await self.loop.create_server(
                    lambda: self._protocol(listener), sock=sock, backlog=1024,
                    start_serving=self._serving))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        self.bound.append((listener, [s.getsockname() for s in socks]))
        log.info("%s listener started on %s", "AMQPS (TLS)" if listener.tls else "AMQP", describe(socks))

    def _protocol(self, listener: Listener) -> asyncio.BaseProtocol:
        if listener.tls is None:
            return AMQPProtocol(self)
        return tls.server_protocol(self.loop, AMQPProtocol(self), listener.tls, listener.handshake_timeout)

    async def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []

    def _schedule_timers(self) -> None:
        """Wake at the broker's earliest deadline (expiries, timeouts)."""
        when = self.broker.timers.next_deadline()
        if when is None or (self.timer is not None and self.timer_at <= when):
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_later(max(0.0, (when - now_ms()) / 1000), self._run_timers)

    def _run_timers(self) -> None:
        self.timer = None
        try:
            self.broker.timers.run(now_ms())
        finally:  # never left unscheduled: every expiry and timeout of the broker hangs on it
            self._schedule_timers()

    def _wake_background(self) -> None:
        if not self.background_scheduled:
            self.background_scheduled = True
            self.loop.call_soon(self._run_background)

    def _run_background(self) -> None:
        """A few milliseconds of the broker's big jobs (broker/background.py) per loop turn: the
        other callbacks (sockets, timers) run between two slices."""
        self.background_scheduled = False
        if self.broker.background.run():
            self._wake_background()

    async def stop(self, grace: float = 1.0) -> None:
        """Stop listening, close every connection with 320 CONNECTION_FORCED, wait for them."""
        if self.control is not None:
            await self.control.stop()
            self.control = None
        for server in self._servers:
            server.close()
        for proto in list(self.protocols):
            proto.shutdown()
        deadline = self.loop.time() + grace
        while self.protocols and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for proto in list(self.protocols):
            proto._abort()
        await self._close_listeners()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.memory is not None:
            self.memory.stop()
            self.memory = None
        self.broker.timers.on_change = _noop
        await asyncio.sleep(0)  # let the aborted connections release their messages
        self.broker.background.on_wake = None
        self.broker.background.finish()
        if self.storage is not None:
            await self.storage.close()
            self.storage = None


def loop_factory() -> Any:
    """uvloop's event loop factory when uvloop is installed, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
