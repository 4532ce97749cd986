"""Embed a hare broker in tests or applications.

Synchronous (the broker runs on its own event loop in a background thread)::

    with EmbeddedBroker() as broker:
        pika.BlockingConnection(pika.URLParameters(broker.url))

asyncio (the broker runs on the caller's event loop)::

    async with AsyncBroker() as broker:
        await aio_pika.connect(broker.url)

Both listen on 127.0.0.1 on a free port unless told otherwise, and keep their data in a
temporary directory removed when they stop; pass ``data_dir`` to keep it (and to restart a broker
on the data a previous one left). Settings (the default user, heartbeat, limits, ...) are a
``BrokerConfig``, exported here too::

    EmbeddedBroker(config=BrokerConfig(default_user="app", default_pass="s3cret", heartbeat=10))

With ``tls=TLSOptions(certfile=..., keyfile=...)`` they also
listen for AMQPS (on ``tls_port``, default a free one): ``broker.amqps_url``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from ..broker.broker import Broker, BrokerConfig
from ..server.listeners import Listener, format_address
from ..server.server import Server, loop_factory
from ..server.tls import TLSOptions


class AsyncBroker:
    """A broker on the running event loop: ``async with AsyncBroker() as b: ... b.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: BrokerConfig | None = None,
                 data_dir: str | Path | None = None, tls: TLSOptions | None = None,
                 tls_port: int = 0) -> None:
        listeners = [Listener(host, port)]
        if tls is not None:  # built first: a bad option fails here, before a directory is made
            listeners.append(Listener(host, tls_port, tls.context(), tls.handshake_timeout))
        self._temp_dir = tempfile.mkdtemp(prefix="hare-") if data_dir is None else None
        self.data_dir = Path(data_dir if data_dir is not None else self._temp_dir)  # type: ignore[arg-type]
        self.broker = Broker(config, data_dir=self.data_dir)
        self.server = Server(self.broker, host, port, listeners=listeners)
        self.host = host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def tls_port(self) -> int:
        """The AMQPS listener's port (after start; ValueError without ``tls``)."""
        for listener, addrs in self.server.bound:
            if listener.tls is not None:
                return addrs[0][1]
        raise ValueError("this broker has no TLS listener (pass tls=TLSOptions(...))")

    @property
    def url(self) -> str:
        c = self.broker.config
        return f"amqp://{c.default_user}:{c.default_pass}@{format_address(self.host, self.port)}/"

    @property
    def amqps_url(self) -> str:
        """``amqps://`` URL of the TLS listener (the client must trust the broker's certificate)."""
        c = self.broker.config
        return f"amqps://{c.default_user}:{c.default_pass}@{format_address(self.host, self.tls_port)}/"

    async def start(self) -> AsyncBroker:
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    async def __aenter__(self) -> AsyncBroker:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


class EmbeddedBroker:
    """A broker in a background thread: ``with EmbeddedBroker() as b: ... b.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: BrokerConfig | None = None,
                 data_dir: str | Path | None = None, tls: TLSOptions | None = None,
                 tls_port: int = 0) -> None:
        self._async = AsyncBroker(host, port, config, data_dir, tls, tls_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def broker(self) -> Broker:
        return self._async.broker

    @property
    def port(self) -> int:
        return self._async.port

    @property
    def url(self) -> str:
        return self._async.url

    @property
    def tls_port(self) -> int:
        return self._async.tls_port

    @property
    def amqps_url(self) -> str:
        return self._async.amqps_url

    @property
    def data_dir(self) -> Path:
        return self._async.data_dir

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the broker's loop and return its result (inspect broker state)."""
        assert self._loop is not None

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def start(self) -> EmbeddedBroker:
        ready = threading.Event()

        def run() -> None:
            factory = loop_factory()
            loop = factory() if factory else asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def main() -> None:
                self._stopped = asyncio.Event()
                try:
                    await self._async.start()
                except BaseException as exc:
                    self._error = exc
                    ready.set()
                    return
                ready.set()
                await self._stopped.wait()
                await self._async.stop()

            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="hare-broker", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["AsyncBroker", "BrokerConfig", "EmbeddedBroker", "TLSOptions"]
