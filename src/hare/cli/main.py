"""The ``hare`` command: ``hare serve`` runs the broker in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping

from .. import __version__
from ..bench import run as bench_run
from ..broker.broker import Broker
from ..cluster.etcd_node import ClusterError, EtcdNode, instance_id
from ..cluster.membership import ClusterSettings, NodeRecord, check_node_name, parse_endpoints
from ..server.collector import CollectorTuning
from ..server.listeners import format_address
from ..server.server import Server, loop_factory
from . import ctl, logging_setup
from .config import ServeOptions, apply_environment, load_config, set_log_level

log = logging.getLogger("hare")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hare", description="A RabbitMQ-compatible AMQP 0-9-1 broker")
    p.add_argument("--version", action="version", version=f"hare {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the broker in the foreground")
    s.add_argument("--bind", help="address to listen on, replacing the config file's plain AMQP "
                   "listeners (default: every interface, IPv4 and IPv6)")
    s.add_argument("--port", type=int, help="AMQP port (default 5672)")
    s.add_argument("--http-port", type=int,
                   help="reserved for the management HTTP API and metrics, which are planned but not "
                        "served yet: nothing listens on it (default 15672)")
    s.add_argument("--data-dir", help="data directory (default ./hare-data)")
    s.add_argument("--config", help="configuration file, rabbitmq.conf format (or $HARE_CONFIG_FILE)")
    s.add_argument("--log-level", choices=list(logging_setup.LEVELS),
                   help="level of every log output (default info)")
    s.add_argument("--node-name", help="this node's name in its cluster (default hare@HOSTNAME)")
    s.add_argument("--cluster", metavar="etcd://HOST:PORT[,HOST:PORT...]",
                   help="join the cluster kept in this etcd (docs/clustering.md; default: a single "
                        "node, no etcd)")
    s.add_argument("--cluster-bind", metavar="ADDR:PORT",
                   help="address of this node's node-to-node link (config: cluster.listener)")
    b = sub.add_parser("bench", help="measure publish/consume rates against a broker")
    bench_run.add_arguments(b)
    c = sub.add_parser("ctl", help="manage a running broker (users, vhosts, permissions, limits, policies, "
                                       "definitions), as rabbitmqctl")
    ctl.add_arguments(c)
    return p


def serve_options(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServeOptions:
    """The options of `hare serve`: command-line flag > environment (HARE_*) > file > default."""
    env = os.environ if env is None else env
    opts = ServeOptions()
    config = args.config or env.get("HARE_CONFIG_FILE")
    if config:
        load_config(config, opts)
    apply_environment(opts, env)
    if args.bind is not None:
        opts.bind = args.bind
    if args.port is not None:
        opts.port = args.port
    if args.http_port is not None:
        opts.http_port = args.http_port
        opts.management_requested = True
    if args.data_dir is not None:
        opts.data_dir = args.data_dir
    if args.log_level is not None:
        set_log_level(opts, args.log_level)
    if args.node_name is not None:
        opts.node_name = args.node_name
    if args.cluster is not None:
        opts.cluster_endpoints = args.cluster
    if args.cluster_bind is not None:
        opts.cluster_listener = args.cluster_bind
    return opts


def cluster_settings(opts: ServeOptions) -> ClusterSettings | None:
    """The cluster to join, or None (no endpoints: a single node). ValueError on a bad value."""
    if not opts.cluster_endpoints:
        return None
    name = check_node_name(opts.node_name or f"hare@{socket.gethostname()}")
    return ClusterSettings(node_name=name, endpoints=parse_endpoints(opts.cluster_endpoints),
                           cluster_name=opts.cluster_name or "hare", listener=opts.cluster_listener)


def _advertised(server: Server) -> list[str]:
    """host:port of each AMQP listener, as other nodes and clients can reach it."""
    out = []
    for _listener, addrs in server.bound:
        host, port = addrs[0][:2]
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        out.append(format_address(host, port))
    return out


async def serve(opts: ServeOptions) -> None:
    listeners = opts.net.listeners(opts.bind, opts.port)  # before the broker: bad TLS files stop us
    if opts.net.depth is not None and opts.net.ssl:
        log.warning("ssl_options.depth = %d is not enforced: hare verifies client certificate chains "
                    "of any length up to a trusted CA (docs/security.md)", opts.net.depth)
    broker = Broker(opts.broker, data_dir=opts.data_dir)
    server = Server(broker, listeners=listeners)
    # a cluster node takes no client before it has joined: its definitions and its replicated
    # queues' roles come from the cluster (a publish to a quorum queue before would stay local)
    clustered = cluster_settings(opts) is not None
    await server.start(serving=not clustered)
    cluster = await _join(opts, server)
    if clustered:
        await server.start_serving()
    collector = CollectorTuning(asyncio.get_running_loop())  # (this process is the broker's alone)
    log.info("hare %s ready: %s (data in %s)", __version__, ", ".join(
        f"{'amqps' if listener.tls else 'amqp'}://{format_address(*addrs[0][:2])}"
        for listener, addrs in server.bound) or "no listener", opts.data_dir)
    if opts.management_requested:
        log.info("HTTP port %s: the management API and metrics are planned but not served yet; "
                 "nothing listens on that port", opts.http_port)
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
    collector.stop()
    if cluster is not None:
        await cluster.stop()
    await server.stop()
    log.info("stopped")


async def _join(opts: ServeOptions, server: Server) -> EtcdNode | None:
    """Join the cluster `opts` names (None: not clustered); on failure stop `server` and raise
    ValueError."""
    settings = cluster_settings(opts)
    control = server.control
    if control is not None:
        control.amqp = _advertised(server)
        control.cluster_name = opts.cluster_name or control.node_name
    if settings is None:
        return None
    try:
        instance = instance_id(opts.data_dir) if opts.data_dir is not None else ""
        node = EtcdNode(settings, NodeRecord(settings.node_name, _advertised(server), settings.listener,
                                             instance), broker=server.broker)
        server.broker.commands.cluster = node.defs  # from now on, changes go through etcd
        await node.start(timeout=max(1, opts.discovery_retry_limit) * opts.discovery_retry_interval / 1000)
    except ClusterError as exc:
        await server.stop()
        raise ValueError(str(exc)) from None
    if control is not None:
        control.cluster, control.node_name = node, settings.node_name
    return node


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        try:
            opts = serve_options(args)
            cluster_settings(opts)  # a bad endpoint or node name: a usage error, before anything runs
        except (OSError, ValueError) as exc:
            print(f"hare: {exc}", file=sys.stderr)
            return 2
        try:
            logging_setup.configure(opts.log, opts.log_level)
        except OSError as exc:
            print(f"hare: cannot open the log file: {exc}", file=sys.stderr)
            return 2
        for warning in opts.warnings:
            log.warning("%s", warning)
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
