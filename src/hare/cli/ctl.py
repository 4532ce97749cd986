"""``hare ctl``: manage a running ``hare serve`` as ``rabbitmqctl`` manages RabbitMQ.

It talks to the broker through the control socket in the broker's data directory
(``server/control.py``)::

    hare ctl add_user app            # the password from stdin
    hare ctl set_permissions -p / app "^app\\." "^app\\." "^app\\."
    hare ctl set_vhost_limits -p / '{"max-connections": 100}'
    hare ctl set_policy ttl "^orders\\." '{"message-ttl": 60000}' --apply-to queues --priority 1
    hare ctl list_queues name messages consumers policy
    hare ctl export_definitions backup.json

The commands, their arguments, informational lines, table headers, error texts and exit codes are
rabbitmqctl 3.10's (docs/security.md lists them). The broker does the work (server/control.py,
through broker.commands); this module parses, prints and reads files.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..server.control import EX_DATAERR, EX_UNAVAILABLE, EX_USAGE, SOCKET_NAME

DEFAULT_DATA_DIR = "./hare-data"
QUEUE_COLUMNS = ("name", "messages", "messages_ready", "messages_unacknowledged", "consumers", "policy",
                 "durable", "auto_delete", "exclusive", "arguments")
DEFAULT_QUEUE_COLUMNS = ("name", "messages", "consumers", "policy")
POLICY_COLUMNS = ("vhost", "name", "pattern", "apply-to", "definition", "priority")
NODE = "hare@localhost"  # the node name hare gives (its cluster_name)


class CtlParser(argparse.ArgumentParser):
    """A usage error exits with rabbitmqctl's 64 (EX_USAGE) and its wording."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"Error (argument validation): {message}\n{self.format_usage()}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    # also accepted after the command (argparse.SUPPRESS: absent there, the ctl-level value stays)
    common.add_argument("--data-dir", default=argparse.SUPPRESS,
                        help=f"the broker's data directory (default {DEFAULT_DATA_DIR})")
    common.add_argument("--socket", default=argparse.SUPPRESS, help="the control socket's path")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="print no informational messages")
    common.add_argument("-s", "--silent", action="store_true", default=argparse.SUPPRESS,
                        help="print no informational messages and no table headers")
    common.add_argument("-p", "--vhost", default="/", help="virtual host (default /)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help=f"the broker's data directory, with its control socket (default {DEFAULT_DATA_DIR})")
    p.add_argument("--socket", help=f"the control socket's path (default DATA_DIR/{SOCKET_NAME})")
    p.add_argument("-q", "--quiet", action="store_true", help="print no informational messages")
    p.add_argument("-s", "--silent", action="store_true",
                   help="print no informational messages and no table headers")
    sub = p.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND", parser_class=CtlParser)

    def cmd(name: str, help: str, *positional: str, listing: bool = False) -> argparse.ArgumentParser:
        c = sub.add_parser(name, parents=[common], help=help)
        for arg in positional:
            if arg.endswith("?"):
                c.add_argument(arg[:-1], nargs="?")
            elif arg.endswith("*"):
                c.add_argument(arg[:-1], nargs="*")
            else:
                c.add_argument(arg)
        if listing:
            _listing(c)
        return c

    s = cmd("set_policy", "set or replace a policy", "name")
    s.add_argument("pattern", help="regular expression searched in queue/exchange names")
    s.add_argument("definition", help="JSON object, e.g. '{\"max-length\": 100}'")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--apply-to", default="all",
                   help="queues, exchanges or all (also classic_queues, quorum_queues, streams)")
    cmd("clear_policy", "remove a policy", "name")
    cmd("list_policies", "list the policies of a vhost", listing=True)
    lq = cmd("list_queues", "list queues with their effective policy", listing=True)
    lq.add_argument("columns", nargs="*", metavar="COLUMN",
                    help=f"columns (default: {' '.join(DEFAULT_QUEUE_COLUMNS)}); "
                         f"any of {', '.join(QUEUE_COLUMNS)}")

    cmd("add_user", "add a user (the password is read from stdin when not given)", "user", "password?")
    cmd("delete_user", "delete a user and close its connections", "user")
    cmd("change_password", "change a user's password", "user", "password")
    cmd("clear_password", "remove a user's password (it can no longer log in with one)", "user")
    cmd("authenticate_user", "check a user's password", "user", "password")
    cmd("set_user_tags", "set a user's tags (none: clear them)", "user", "tags*")
    cmd("list_users", "list users and their tags", listing=True)
    cmd("set_user_limits", "set a user's limits: max-connections, max-channels", "user", "limits")
    cmd("clear_user_limits", "clear one limit of a user, or all", "user", "limit")
    lul = cmd("list_user_limits", "list a user's limits (--global: every user's)", listing=True)
    lul.add_argument("--user", default="guest")
    lul.add_argument("--global", dest="all", action="store_true")

    cmd("add_vhost", "add a virtual host", "name")
    cmd("delete_vhost", "delete a virtual host, its queues and messages, its permissions", "name")
    lv = cmd("list_vhosts", "list virtual hosts", listing=True)
    lv.add_argument("columns", nargs="*", metavar="COLUMN", help="name, tracing (default: name)")
    cmd("set_vhost_limits", "set a vhost's limits: max-connections, max-queues", "limits")
    cmd("clear_vhost_limits", "clear a vhost's limits")
    lvl = cmd("list_vhost_limits", "list a vhost's limits (--global: every vhost's)", listing=True)
    lvl.add_argument("--global", dest="all", action="store_true")

    cmd("set_permissions", "set a user's permissions in a vhost", "user", "configure", "write", "read")
    cmd("clear_permissions", "remove a user's permissions in a vhost", "user")
    cmd("list_permissions", "list the permissions in a vhost", listing=True)
    cmd("list_user_permissions", "list a user's permissions", "user", listing=True)
    cmd("set_topic_permissions", "set a user's topic permissions on an exchange", "user", "exchange",
        "write", "read")
    cmd("clear_topic_permissions", "remove a user's topic permissions (on one exchange, or all)", "user",
        "exchange?")
    cmd("list_topic_permissions", "list the topic permissions in a vhost", listing=True)
    cmd("list_user_topic_permissions", "list a user's topic permissions", "user", listing=True)

    cmd("export_definitions", "write the definitions in RabbitMQ's JSON format to a file (or - for "
        "stdout)", "path")
    cmd("import_definitions", "apply a definitions file (or - for stdin), as load_definitions", "path")
    cmd("status", "the broker's version, alarms and counts")
    cs = cmd("cluster_status", "the cluster's nodes (alive or not, AMQP addresses) and replicated queues")
    cs.add_argument("--formatter", choices=["table", "json"], default="table")
    cmd("forget_cluster_node", "remove a stopped node from the cluster", "node")
    # rabbitmq-queues' commands for a quorum queue's group
    cmd("add_member", "add a member (replica) on a node to a quorum queue's group", "queue", "node")
    cmd("delete_member", "remove the member on a node from a quorum queue's group", "queue", "node")
    g = cmd("grow", "add a member on NODE to every matching quorum queue (all, or even: those whose "
            "group has an even size)", "node", listing=True)
    g.add_argument("strategy", choices=["all", "even"])
    g.add_argument("--vhost-pattern", default=".*", help="regular expression matched to vhost names")
    g.add_argument("--queue-pattern", default=".*", help="regular expression matched to queue names")
    g.add_argument("--errors-only", action="store_true", help="list only the queues that failed")
    sh = cmd("shrink", "remove the member on NODE from every quorum queue", "node", listing=True)
    sh.add_argument("--errors-only", action="store_true", help="list only the queues that failed")


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
    quiet = args.quiet or args.silent
    info = (lambda text: None) if quiet else (lambda text: print(text))
    table = getattr(args, "formatter", "table") == "table"
    msg: dict[str, Any] = {"command": cmd, "vhost": vhost}
    user = getattr(args, "user", None)
    if user is not None:
        msg["user"] = user
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
        if table:
            info(f'Listing policies for vhost "{vhost}" ...')
    elif cmd in ("list_queues", "list_vhosts"):
        known = QUEUE_COLUMNS if cmd == "list_queues" else ("name", "tracing")
        bad = [c for c in args.columns if c not in known]
        if bad:
            print(f"Error (argument validation): Info key(s) {','.join(bad)} are not supported",
                  file=sys.stderr)
            return EX_USAGE
        if table:
            info(f"Listing queues for vhost {vhost} ..." if cmd == "list_queues" else "Listing vhosts ...")
    elif cmd in ("add_user", "change_password", "authenticate_user") and not user:
        print("Error (argument validation): Bad argument: user cannot be an empty string", file=sys.stderr)
        return EX_DATAERR
    elif cmd in INFO:
        text = INFO[cmd](args)
        if text and table:  # (a machine-readable output has no banner)
            info(text)
    if cmd == "add_user" and args.password is None:
        info("Password: ")
        line = sys.stdin.readline()
        if not line.rstrip("\r\n"):
            print("Error:\nPassword is not provided via argument or stdin", file=sys.stderr)
            return EX_DATAERR
        args.password = line.rstrip("\r\n")
    for key in ("password", "tags", "exchange", "configure", "write", "read", "limit", "node", "queue",
                "strategy", "vhost_pattern", "queue_pattern"):
        if hasattr(args, key):
            msg[key] = getattr(args, key)
    if cmd in ("add_vhost", "delete_vhost"):
        msg["vhost"] = args.name
    if cmd in ("list_vhost_limits", "list_user_limits"):
        msg["global"] = args.all
    if cmd in ("set_vhost_limits", "set_user_limits"):
        try:
            msg["limits"] = json.loads(args.limits)
        except ValueError:
            print("Error:\nJSON decoding error. Reason: badarg", file=sys.stderr)
            return EX_UNAVAILABLE
    if cmd == "export_definitions" and args.path != "-":
        if not Path(args.path).parent.is_dir():
            print(f"Error (argument validation): Bad argument: Directory {Path(args.path).parent} does not "
                  "exist", file=sys.stderr)
            return EX_DATAERR
    if cmd == "import_definitions":
        try:
            text = sys.stdin.read() if args.path == "-" else Path(args.path).read_text(encoding="utf-8")
        except OSError:
            print(f"Error (argument validation): Bad argument: File {args.path} does not exist",
                  file=sys.stderr)
            return EX_DATAERR
        try:
            msg["definitions"] = json.loads(text)
        except ValueError as exc:
            print(f"Error:\nFailed to decode the definitions: {exc}", file=sys.stderr)
            return EX_DATAERR
    try:
        reply = request(socket_path(args), msg)
    except Unreachable as exc:
        print(exc, file=sys.stderr)
        return EX_UNAVAILABLE
    if not reply.get("ok"):
        print(reply.get("error", "Error"), file=sys.stderr)
        return int(reply.get("status", EX_UNAVAILABLE))
    _output(args, cmd, reply, info)
    return 0


def _output(args: argparse.Namespace, cmd: str, reply: dict[str, Any], info: Any) -> None:
    if cmd == "list_policies":
        rows = [{**p, "definition": json.dumps(p["definition"], separators=(",", ":"), sort_keys=True,
                                                 ensure_ascii=False)} for p in reply["policies"]]
        _print_rows(args, POLICY_COLUMNS, rows)
    elif cmd == "list_queues":
        _print_rows(args, tuple(args.columns) or DEFAULT_QUEUE_COLUMNS, reply["queues"])
    elif cmd == "add_user":
        info("Done. Don't forget to grant the user permissions to some virtual hosts! See "
             "'rabbitmqctl help set_permissions' to learn more.")
    elif cmd == "authenticate_user":
        print("Success")
    elif cmd == "list_users":
        _print_rows(args, ("user", "tags"), reply["rows"])
    elif cmd == "list_vhosts":
        _print_rows(args, tuple(args.columns) or ("name",), reply["rows"])
    elif cmd == "list_permissions":
        _print_rows(args, ("user", "configure", "write", "read"), reply["rows"])
    elif cmd == "list_user_permissions":
        _print_rows(args, ("vhost", "configure", "write", "read"), reply["rows"])
    elif cmd == "list_topic_permissions":
        _print_rows(args, ("user", "exchange", "write", "read"), reply["rows"])
    elif cmd == "list_user_topic_permissions":  # rabbitmqctl 3.10 prints no header here
        args.no_table_headers = True
        _print_rows(args, ("vhost", "exchange", "write", "read"), reply["rows"])
    elif cmd in ("list_vhost_limits", "list_user_limits"):
        key = "vhost" if cmd == "list_vhost_limits" else "user"
        if args.all:
            rows = [{key: r[key], "limits": _compact(r["limits"])} for r in reply["rows"]]
            if rows or args.formatter == "json":
                _print_rows(args, (key, "limits"), rows)
        elif args.formatter == "json":
            if cmd == "list_user_limits":
                print(_compact({"message": _compact(reply["limits"])}))
            elif reply["limits"]:
                print(_compact({"node": NODE, "result": "ok", "value": _compact(reply["limits"])}))
            else:
                print("[]")
        elif reply["limits"] or cmd == "list_user_limits":
            print(_compact(reply["limits"]))
    elif cmd == "export_definitions":
        text = json.dumps(reply["definitions"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if args.path == "-":
            print(text)
        else:
            Path(args.path).write_text(text, encoding="utf-8")
    elif cmd == "import_definitions":
        info("Successfully imported the definitions.")
    elif cmd == "status":
        _print_status(reply, info)
    elif cmd == "cluster_status":
        if args.formatter == "table":
            info(f"Cluster status of node {reply.get('node', NODE)} ...")
        _print_cluster_status(args, reply)
    elif cmd == "forget_cluster_node":
        pass
    elif cmd in ("grow", "shrink"):
        rows = [r for r in reply["rows"] if not args.errors_only or r["result"] != "ok"]
        _print_rows(args, ("vhost", "name", "size", "result"), rows)


def _print_cluster_status(args: argparse.Namespace, s: dict[str, Any]) -> None:
    status = {k: s[k] for k in ("cluster_name", "nodes", "queues")}
    if args.formatter == "json":
        print(json.dumps(status, separators=(",", ":"), ensure_ascii=False))
        return
    print(f"Cluster name: {status['cluster_name']}\n\nNodes\n")
    for n in status["nodes"]:
        print(f"{n['name']}\t{'running' if n['alive'] else 'not running'}\t{', '.join(n['amqp'])}")
    print("\nReplicated queues\n")
    for q in status["queues"]:
        print(f"{q['vhost']}\t{q['name']}\tleader {q['leader']}\tmembers {', '.join(q['members'])}\t"
              f"in sync {', '.join(q['in_sync'])}")
    if not status["queues"]:
        print("(none)")


ALARMS = {"disk": "free disk space is under disk_free_limit; publishers are blocked",
          "disk_sync": "the message store cannot sync to disk; publishers are blocked",
          "memory": "memory use is over vm_memory_high_watermark; publishers are blocked"}


def _print_status(s: dict[str, Any], info: Any) -> None:
    info(f"Status of node {NODE} ...")
    print("Runtime\n")
    print(f"hare version: {s['version']}")
    print(f"RabbitMQ version: {s['product_version']} (the release whose behaviour hare follows)")
    print(f"Node data directory: {s['data_directory'] or '(none: in memory only)'}")
    print("\nAlarms\n")
    print("\n".join(f"{a}: {ALARMS.get(a, '')}" for a in s["alarms"]) if s["alarms"] else "(none)")
    if s.get("sync_error"):
        print(f"the last failed sync: {s['sync_error']}")
    if s.get("disk_full"):
        print(f"the last failed write: {s['disk_full']} (kept in memory until it can be written)")
    print("\nTotals\n")
    print(f"Virtual hosts: {len(s['vhosts'])}")
    print(f"Users: {s['users']}")
    print(f"Connections: {s['connections']}")
    print(f"Queues: {s['queues']}")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _q(text: str) -> str:
    return f'"{text}"'


def _clear_topic(a: argparse.Namespace) -> str:
    on = f"on {_q(a.exchange)} " if a.exchange is not None else ""
    return f"Clearing topic permissions {on}for user {_q(a.user)} in vhost {_q(a.vhost)} ..."


def _clear_user_limits(a: argparse.Namespace) -> str:
    what = "all limits" if a.limit == "all" else f"{_q(a.limit)} limit"
    return f"Clearing {what} for user {_q(a.user)} ..."


# the informational line each command prints first, as rabbitmqctl 3.10 words it
INFO: dict[str, Callable[[argparse.Namespace], str]] = {
    "add_user": lambda a: f"Adding user {_q(a.user)} ...",
    "delete_user": lambda a: f"Deleting user {_q(a.user)} ...",
    "change_password": lambda a: f"Changing password for user {_q(a.user)} ...",
    "clear_password": lambda a: f"Clearing password for user {_q(a.user)} ...",
    "authenticate_user": lambda a: f"Authenticating user {_q(a.user)} ...",
    "set_user_tags": lambda a: f"Setting tags for user {_q(a.user)} to [{', '.join(a.tags)}] ...",
    "list_users": lambda a: "Listing users ...",
    "set_user_limits": lambda a: f"Setting user limits to {_q(a.limits)} for user {_q(a.user)} ...",
    "clear_user_limits": _clear_user_limits,
    "list_user_limits": lambda a: ("Listing limits for all users ..." if a.all
                                   else f"Listing limits for user {_q(a.user)} ..."),
    "add_vhost": lambda a: f"Adding vhost {_q(a.name)} ...",
    "delete_vhost": lambda a: f"Deleting vhost {_q(a.name)} ...",
    "list_vhosts": lambda a: "Listing vhosts ...",
    "set_vhost_limits": lambda a: f"Setting vhost limits to {_q(a.limits)} for vhost {_q(a.vhost)} ...",
    "clear_vhost_limits": lambda a: f"Clearing vhost {_q(a.vhost)} limits ...",
    "list_vhost_limits": lambda a: ("Listing limits for all vhosts ..." if a.all
                                    else f"Listing limits for vhost {_q(a.vhost)} ..."),
    "set_permissions": lambda a: f"Setting permissions for user {_q(a.user)} in vhost {_q(a.vhost)} ...",
    "clear_permissions": lambda a: f"Clearing permissions for user {_q(a.user)} in vhost {_q(a.vhost)} ...",
    "list_permissions": lambda a: f"Listing permissions for vhost {_q(a.vhost)} ...",
    "list_user_permissions": lambda a: f"Listing permissions for user {_q(a.user)} ...",
    "set_topic_permissions": lambda a: (f"Setting topic permissions on {_q(a.exchange)} for user "
                                        f"{_q(a.user)} in vhost {_q(a.vhost)} ..."),
    "clear_topic_permissions": _clear_topic,
    "list_topic_permissions": lambda a: f"Listing topic permissions for vhost {_q(a.vhost)} ...",
    "list_user_topic_permissions": lambda a: f"Listing topic permissions for user {_q(a.user)} ...",
    "export_definitions": lambda a: ("" if a.path == "-" else
                                     f"Exporting definitions in JSON to a file at {_q(a.path)} ..."),
    "import_definitions": lambda a: ("Importing definitions in JSON from standard input ..." if a.path == "-"
                                     else f"Importing definitions in JSON from a file at {_q(a.path)} ..."),
    "status": lambda a: "",
    "cluster_status": lambda a: "",
    "forget_cluster_node": lambda a: f"Removing node {a.node} from the cluster",
    "add_member": lambda a: f"Adding a replica for queue {a.queue} on node {a.node}...",
    "delete_member": lambda a: f"Removing a replica of queue {a.queue} on node {a.node}...",
    "grow": lambda a: f"Growing {a.strategy} quorum queues on {a.node}...",
    "shrink": lambda a: f"Shrinking quorum queues on {a.node}...",
}


def _print_rows(args: argparse.Namespace, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    if args.formatter == "json":  # as rabbitmqctl streams it: one object a line
        items = [json.dumps({c: r.get(c) for c in columns}, separators=(",", ":"), ensure_ascii=False,
                            default=str) for r in rows]
        print("[\n" + "\n,".join(items) + "\n]" if items else "[]")
        return
    if not (args.no_table_headers or args.silent):
        print("\t".join(columns))
    for r in rows:
        print("\t".join(_cell(r.get(c)) for c in columns))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(value) + "]"  # a user's tags
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return str(value)
