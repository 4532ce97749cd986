"""``hare ctl``: manage a running ``hare serve`` as ``rabbitmqctl`` manages RabbitMQ.

It talks to the broker through the control socket in the broker's data directory
(``server/control.py``)::

    hare ctl set_policy ttl "^orders\\." '{"message-ttl": 60000}' --apply-to queues --priority 1
    hare ctl list_policies
    hare ctl clear_policy ttl
    hare ctl list_queues name messages consumers policy

Texts and exit codes follow rabbitmqctl's.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from ..server.control import EX_DATAERR, EX_UNAVAILABLE, SOCKET_NAME

DEFAULT_DATA_DIR = "./hare-data"
QUEUE_COLUMNS = ("name", "messages", "messages_ready", "messages_unacknowledged", "consumers", "policy",
                 "durable", "auto_delete", "exclusive", "arguments")
DEFAULT_QUEUE_COLUMNS = ("name", "messages", "consumers", "policy")
POLICY_COLUMNS = ("vhost", "name", "pattern", "apply-to", "definition", "priority")


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    # also accepted after the command (argparse.SUPPRESS: absent there, the ctl-level value stays)
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help=f"the broker's data directory (default {DEFAULT_DATA_DIR})")
    common.add_argument("--socket", default=argparse.SUPPRESS, help="the control socket's path")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="print no informational messages")
    common.add_argument("-p", "--vhost", default="/", help="virtual host (default /)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help=f"the broker's data directory, with its control socket (default {DEFAULT_DATA_DIR})")
    p.add_argument("--socket", help=f"the control socket's path (default DATA_DIR/{SOCKET_NAME})")
    p.add_argument("-q", "--quiet", action="store_true", help="print no informational messages")
    sub = p.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")

    s = sub.add_parser("set_policy", parents=[common], help="set or replace a policy")
    s.add_argument("name")
    s.add_argument("pattern", help="regular expression searched in queue/exchange names")
    s.add_argument("definition", help="JSON object, e.g. '{\"max-length\": 100}'")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--apply-to", default="all",
                   help="queues, exchanges or all (also classic_queues, quorum_queues, streams)")

    c = sub.add_parser("clear_policy", parents=[common], help="remove a policy")
    c.add_argument("name")

    lp = sub.add_parser("list_policies", parents=[common], help="list the policies of a vhost")
    _listing(lp)

    sub.add_parser("status", parents=[common], help="the broker's version, vhosts and resource alarms")
    lq = sub.add_parser("list_queues", parents=[common], help="list queues with their effective policy")
    lq.add_argument("columns", nargs="*", metavar="COLUMN",
                    help=f"columns (default: {' '.join(DEFAULT_QUEUE_COLUMNS)}); "
                         f"any of {', '.join(QUEUE_COLUMNS)}")
    _listing(lq)


def _listing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formatter", choices=["table", "json"], default="table")
    p.add_argument("--no-table-headers", action="store_true")


def socket_path(args: argparse.Namespace) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    return Path(args.data_dir) / SOCKET_NAME


class Unreachable(Exception):
    pass


def request(path: Path, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request on the control socket and return the reply."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise Unreachable(f"Error: unable to reach hare through its control socket {path}: {exc}\n"
                          "Is `hare serve` running with this --data-dir?") from None
    if not data:
        raise Unreachable(f"Error: hare closed its control socket {path} without a reply")
    reply: dict[str, Any] = json.loads(data)
    return reply


def main(args: argparse.Namespace) -> int:
    cmd = args.ctl_command
    vhost = args.vhost
    info = (lambda text: None) if args.quiet else (lambda text: print(text))
    msg: dict[str, Any] = {"command": cmd, "vhost": vhost}
    if cmd == "set_policy":
        info(f'Setting policy "{args.name}" for pattern "{args.pattern}" to "{args.definition}" with '
             f'priority "{args.priority}" for vhost "{vhost}" ...')
        try:
            definition = json.loads(args.definition)
        except ValueError as exc:
            print(f"Error:\nJSON decoding error. Reason: {exc}", file=sys.stderr)
            return EX_DATAERR
        msg.update(name=args.name, pattern=args.pattern, definition=definition, priority=args.priority,
                   apply_to=args.apply_to)
    elif cmd == "clear_policy":
        info(f'Clearing policy "{args.name}" on vhost "{vhost}" ...')
        msg["name"] = args.name
    elif cmd == "list_policies":
        if args.formatter == "table":
            info(f'Listing policies for vhost "{vhost}" ...')
    elif cmd == "list_queues":
        bad = [c for c in args.columns if c not in QUEUE_COLUMNS]
        if bad:
            print(f"Error (argument validation): Info key(s) {','.join(bad)} are not supported",
                  file=sys.stderr)
            return 64
        if args.formatter == "table":
            info(f"Listing queues for vhost {vhost} ...")
    try:
        reply = request(socket_path(args), msg)
    except Unreachable as exc:
        print(exc, file=sys.stderr)
        return EX_UNAVAILABLE
    if not reply.get("ok"):
        print(reply.get("error", "Error"), file=sys.stderr)
        return int(reply.get("status", EX_UNAVAILABLE))
    if cmd == "list_policies":
        rows = [{**p, "definition": json.dumps(p["definition"], separators=(",", ":"), sort_keys=True,
                                                 ensure_ascii=False)} for p in reply["policies"]]
        _print_rows(args, POLICY_COLUMNS, rows)
    elif cmd == "list_queues":
        _print_rows(args, tuple(args.columns) or DEFAULT_QUEUE_COLUMNS, reply["queues"])
    elif cmd == "status":
        _print_status(reply)
    return 0


def _print_status(reply: dict[str, Any]) -> None:
    print(f"Version: hare {reply.get('version')}")
    print(f"Virtual hosts: {', '.join(reply.get('vhosts', []))}")
    alarms = reply.get("alarms", [])
    print("Alarms:", ", ".join(alarms) if alarms else "(none)")
    if "disk_sync" in alarms:
        print(f"  disk_sync: the message store cannot sync to disk: {reply.get('sync_error')}; "
              "publishers are blocked")
    if "disk" in alarms:
        print("  disk: free disk space is under disk_free_limit; publishers are blocked")


def _print_rows(args: argparse.Namespace, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    if args.formatter == "json":
        print(json.dumps([{c: r.get(c) for c in columns} for r in rows], ensure_ascii=False, default=str))
        return
    if not args.no_table_headers:
        print("\t".join(columns))
    for r in rows:
        print("\t".join(_cell(r.get(c)) for c in columns))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return str(value)
