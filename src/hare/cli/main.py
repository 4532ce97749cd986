"""The ``hare`` command: ``hare serve`` runs the broker in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .. import __version__
from ..bench import run as bench_run
from ..broker.broker import Broker
from ..server.server import Server, loop_factory
from . import ctl
from .config import ServeOptions, load_config

log = logging.getLogger("hare")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hare", description="A RabbitMQ-compatible AMQP 0-9-1 broker")
    p.add_argument("--version", action="version", version=f"hare {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the broker in the foreground")
    s.add_argument("--bind", help="address to listen on (default 0.0.0.0)")
    s.add_argument("--port", type=int, help="AMQP port (default 5672)")
    s.add_argument("--http-port", type=int, help="management/metrics HTTP port (default 15672)")
    s.add_argument("--data-dir", help="data directory (default ./hare-data)")
    s.add_argument("--config", help="configuration file, rabbitmq.conf format")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    b = sub.add_parser("bench", help="measure publish/consume rates against a broker")
    bench_run.add_arguments(b)
    c = sub.add_parser("ctl", help="manage a running broker (users, vhosts, permissions, limits, policies, "
                                       "definitions), as rabbitmqctl")
    ctl.add_arguments(c)
    return p


def serve_options(args: argparse.Namespace) -> ServeOptions:
    opts = ServeOptions()
    if args.config:
        load_config(args.config, opts)
    if args.bind is not None:
        opts.bind = args.bind
    if args.port is not None:
        opts.port = args.port
    if args.http_port is not None:
        opts.http_port = args.http_port
    if args.data_dir is not None:
        opts.data_dir = args.data_dir
    if args.log_level is not None:
        opts.log_level = args.log_level
    return opts


async def serve(opts: ServeOptions) -> None:
    broker = Broker(opts.broker, data_dir=opts.data_dir)
    server = Server(broker, opts.bind, opts.port)
    await server.start()
    log.info("hare %s ready: amqp://%s:%s (data in %s)", __version__, opts.bind, server.port,
             opts.data_dir)
    timeout = opts.broker.consumer_timeout
    log.info("consumer_timeout: %s (a channel keeping a delivery unacknowledged longer is closed; "
             "change it with consumer_timeout in the config file, or per queue)",
             "none" if not timeout else f"{timeout} ms ({timeout / 60000:g} min)" if timeout >= 60000
             else f"{timeout} ms")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            opts = serve_options(args)
        except (OSError, ValueError) as exc:
            print(f"hare: {exc}", file=sys.stderr)
            return 2
        logging.basicConfig(level=opts.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(serve(opts))
        except (OSError, ValueError) as exc:  # ValueError: e.g. an invalid load_definitions file
            log.error("cannot start: %s", exc)
            return 1
        return 0
    if args.command == "bench":
        return bench_run.main(args)
    if args.command == "ctl":
        return ctl.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
