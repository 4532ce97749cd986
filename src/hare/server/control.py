"""The control socket: how ``hare ctl`` talks to a running broker.

A Unix socket, ``<data_dir>/hare-ctl.sock`` (mode 0600: only the broker's own user may connect;
nothing is exposed on the network), served on the broker's event loop, so commands see and change
the broker between two AMQP reads. One JSON object per line each way::

    -> {"command": "set_policy", "vhost": "/", "name": "ttl", "pattern": "^q", "definition": {...},
        "priority": 0, "apply_to": "queues"}
    <- {"ok": true}
    <- {"ok": false, "error": "Error:\\nValidation failed\\n\\n...", "status": 69}

``error`` is the text ``rabbitmqctl`` prints for the same failure and ``status`` its exit code.
Each command is a ``_cmd_<name>`` method: rabbitmqctl's names (users, vhosts, permissions, topic
permissions, limits, policies, definitions, list_queues, status, cluster_status); the few that
wait for something (forget_cluster_node asks etcd) are ``_async_<name>``. Every change goes through the
broker's command layer (``broker.commands``); this module only words the answers as rabbitmqctl.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from .. import __version__
from ..amqp.errors import AMQPError
from ..broker.broker import Broker
from ..broker.commands import CommandError as ModelError
from ..broker.commands import Commands
from ..broker.definitions_file import apply_definitions, export_definitions
from ..broker.policies import PolicyError, pcre_error
from ..broker.proposal import Pending, Proposed
from ..broker.vhost import VirtualHost
from ..cluster import queue_members
from ..cluster.etcd_node import ClusterError, EtcdNode

log = logging.getLogger("hare.control")

SOCKET_NAME = "hare-ctl.sock"
NODE_NAME = "hare@localhost"  # a node's name when it is not clustered (as its cluster_name)
MAX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
MAX_REQUEST = 64 << 20  # a request line (import_definitions sends the whole file)

EX_USAGE = 64  # rabbitmqctl's exit codes (sysexits.h)
EX_DATAERR = 65
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70


class CommandError(Exception):
    def __init__(self, text: str, status: int = EX_UNAVAILABLE) -> None:
        super().__init__(text)
        self.status = status


class ControlServer:
    def __init__(self, broker: Broker, path: Path | str) -> None:
        self.broker = broker
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self.cluster: EtcdNode | None = None  # set by `hare serve --cluster`
        self.cluster_name = self.node_name = NODE_NAME  # a single node: its own cluster
        self.amqp: list[str] = []  # this node's AMQP listeners, host:port

    async def start(self) -> bool:
        """Listen; False (with a warning) when the socket cannot be made."""
        path = self.path
        if not hasattr(socket, "AF_UNIX"):
            return False
        if len(os.fsencode(path)) > MAX_PATH:
            log.warning("no control socket: its path %s is too long for a Unix socket", path)
            return False
        if path.exists() or path.is_symlink():
            if await _alive(path):
                log.warning("no control socket: %s is in use (another broker on this data directory?)",
                            path)
                return False
            path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path, limit=MAX_REQUEST)
        os.chmod(path, 0o600)  # connecting needs write permission: the broker's user only
        log.info("control socket on %s", path)
        return True

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._server = None
        try:
            self.path.unlink()
        except OSError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self.handle_line_async(line), default=str).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise CommandError("Error: a request is a JSON object")
            return {"ok": True, **self.handle(request)}
        except Proposed:
            raise  # (handle_line_async waits for the cluster)
        except Exception as exc:
            return _failed(exc)

    async def handle_line_async(self, line: bytes) -> dict[str, Any]:
        """As `handle_line`, and the commands that wait for something (``_async_NAME``: the
        cluster's, which ask etcd)."""
        try:
            request = json.loads(line)
        except ValueError:
            return self.handle_line(line)
        command = request.get("command") if isinstance(request, dict) else None
        handler = getattr(self, f"_async_{command}", None) if isinstance(command, str) else None
        if handler is None:
            return await self._agreed(line)
        try:
            return {"ok": True, **await handler(request)}
        except Exception as exc:
            return _failed(exc)

    async def _agreed(self, line: bytes) -> dict[str, Any]:
        """`handle_line`; in a cluster, a command whose change the cluster must agree to is done
        once this node has applied it (every such command answers nothing more than success).
        When the cluster refused it (another node changed the same thing first), it runs again on
        the state that won; an import runs again after each change, until it changes nothing."""
        commands = self.broker.commands
        replay: Pending | None = None
        while True:
            commands.replay = replay
            try:
                return self.handle_line(line)
            except Proposed as proposed:
                replay = proposed.pending
            finally:
                commands.replay = None
            applied = asyncio.get_running_loop().create_future()
            replay.add_done_callback(lambda _p, f=applied: f.done() or f.set_result(None))
            await applied
            if replay.error is not None:
                return _failed(replay.error)
            if replay.committed and b'"import_definitions"' not in line:
                return {"ok": True}

    # -- commands -------------------------------------------------------------------------------------

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        command = req.get("command")
        handler = getattr(self, f"_cmd_{command}", None) if isinstance(command, str) else None
        if handler is None:
            raise CommandError(f"Error: unknown command {command!r}", EX_USAGE)
        try:
            result: dict[str, Any] = handler(req)
        except ModelError as exc:  # what the handler did not word itself
            status = {"exists": EX_SOFTWARE, "not_found": EX_UNAVAILABLE}.get(exc.kind, EX_UNAVAILABLE)
            raise CommandError(f"Error:\n{exc}", status) from None
        return result

    @property
    def _c(self) -> Commands:
        return self.broker.commands

    def _vhost(self, name: Any) -> VirtualHost:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise CommandError(f"Virtual host '{name}' does not exist", EX_DATAERR)
        return vhost

    def _user_vhost(self, req: dict[str, Any]) -> tuple[str, str]:
        """The user, then the vhost, of a permission command, as rabbitmqctl checks them."""
        user, vhost = str(req["user"]), str(req.get("vhost", "/"))
        if user not in self.broker.users.users:
            raise CommandError(f"Error:\nUser {user} does not exist", EX_NOUSER)
        if vhost not in self.broker.vhosts:
            raise CommandError(f"Error:\nVirtual host {vhost} does not exist", EX_UNAVAILABLE)
        return user, vhost

    def _user(self, name: Any, quoted: bool = True) -> str:
        """An existing user: rabbitmqctl says 'User "x" does not exist' (67) for some commands,
        and prints the Erlang error ({:no_such_user, "x"}, 69) for others."""
        name = str(name)
        if name not in self.broker.users.users:
            if quoted:
                raise CommandError(f'Error:\nUser "{name}" does not exist', EX_NOUSER)
            raise CommandError(f'Error:\n{{:no_such_user, {_ex_string(name)}}}', EX_UNAVAILABLE)
        return name

    # the cluster (cluster/etcd_node.py; without one, this node alone)

    def _cmd_cluster_status(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.cluster is not None:
            return {**self.cluster.status(), "node": self.node_name}
        return {"cluster_name": self.cluster_name, "node": self.node_name, "nodes": [
            {"name": self.node_name, "alive": True, "amqp": self.amqp}], "queues": []}

    async def _async_forget_cluster_node(self, req: dict[str, Any]) -> dict[str, Any]:
        name = str(req.get("node", ""))
        if self.cluster is None:
            raise CommandError(f"Error:\n{{:not_a_cluster_node, \"The node selected is not in the "
                               f"cluster.\"}}: {name} (this node is not clustered)")
        try:
            await self.cluster.forget(name)
        except ClusterError as exc:
            raise CommandError(str(exc)) from None
        return {}

    def _members(self, req: dict[str, Any]) -> EtcdNode:
        if self.cluster is None or self.cluster.replicas is None:
            raise CommandError("Error:\nthis node is not clustered: its quorum queues have no other members")
        return self.cluster

    async def _async_add_member(self, req: dict[str, Any]) -> dict[str, Any]:
        await self._member_change(req, add=str(req.get("node", "")))
        return {}

    async def _async_delete_member(self, req: dict[str, Any]) -> dict[str, Any]:
        await self._member_change(req, remove=str(req.get("node", "")))
        return {}

    async def _member_change(self, req: dict[str, Any], **what: str) -> None:
        vhost, name = str(req.get("vhost", "/")), str(req.get("queue", ""))
        try:
            await queue_members.change(self._members(req), vhost, name, **what)
        except queue_members.MemberError as exc:
            if exc.reason == "classic_queue_not_supported":
                verb = "add members to" if "add" in what else "remove members from"
                raise CommandError(f"Error:\nCannot {verb} a classic queue") from None
            raise CommandError(f"Error:\n{{:error, :{exc.reason}}}") from None

    async def _async_grow(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            rows = await queue_members.grow(self._members(req), str(req.get("node", "")),
                                            str(req.get("strategy", "")), str(req.get("vhost_pattern", ".*")),
                                            str(req.get("queue_pattern", ".*")))
        except (ClusterError, re.error) as exc:
            raise CommandError(str(exc), EX_USAGE if isinstance(exc, re.error) else EX_SOFTWARE) from None
        return {"rows": rows}

    async def _async_shrink(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rows": await queue_members.shrink(self._members(req), str(req.get("node", "")))}

    # policies and queues

    def _cmd_status(self, req: dict[str, Any]) -> dict[str, Any]:
        b = self.broker
        return {"version": __version__, "product_version": b.config.product_version,
                "vhosts": sorted(b.vhosts), "users": len(b.users.users), "connections": len(b.connections),
                "queues": sum(len(v.queues) for v in b.vhosts.values()), "alarms": sorted(b.alarms),
                "sync_error": b.sync_error,
                "disk_full": b.disk_full,
                "data_directory": str(b.data_dir) if b.data_dir is not None else None}

    def _cmd_set_policy(self, req: dict[str, Any]) -> dict[str, Any]:
        vhost = self._vhost(req.get("vhost", "/"))
        try:
            self._c.set_policy(vhost, str(req["name"]), str(req["pattern"]), req["definition"],
                               req.get("priority", 0), str(req.get("apply_to", "all")))
        except PolicyError as exc:
            raise CommandError(f"Error:\nValidation failed\n\n{exc}\n") from None
        return {}

    def _cmd_clear_policy(self, req: dict[str, Any]) -> dict[str, Any]:
        if not self._c.clear_policy(self._vhost(req.get("vhost", "/")), str(req["name"])):
            raise CommandError("Error:\nParameter does not exist")
        return {}

    def _cmd_list_policies(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"policies": [p.as_json() for p in self._vhost(req.get("vhost", "/")).policies()]}

    def _cmd_list_queues(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"queues": self._queues(self._vhost(req.get("vhost", "/")))}

    # users

    def _cmd_add_user(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.add_user(str(req["user"]), str(req["password"]))
        return {}

    def _cmd_delete_user(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.delete_user(self._user(req["user"]))
        return {}

    def _cmd_change_password(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.change_password(self._user(req["user"]), str(req["password"]))
        return {}

    def _cmd_clear_password(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.clear_password(self._user(req["user"], quoted=False))
        return {}

    def _cmd_authenticate_user(self, req: dict[str, Any]) -> dict[str, Any]:
        name = str(req["user"])
        try:
            self._c.authenticate_user(name, str(req["password"]))
        except ModelError as exc:
            raise CommandError(f'Error:\nError: failed to authenticate user "{name}"\n{exc}',
                               EX_DATAERR) from None
        return {}

    def _cmd_set_user_tags(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.set_user_tags(self._user(req["user"]), [str(t) for t in req.get("tags", [])])
        return {}

    def _cmd_list_users(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rows": self._c.list_users()}

    def _cmd_set_user_limits(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.set_user_limits(self._user(req["user"], quoted=False), req["limits"])
        return {}

    def _cmd_clear_user_limits(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.clear_user_limits(self._user(req["user"], quoted=False), str(req["limit"]))
        return {}

    def _cmd_list_user_limits(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("global"):
            return {"rows": [{"user": u["user"], "limits": self._c.user(u["user"]).limits}
                             for u in self._c.list_users() if self._c.user(u["user"]).limits]}
        return {"limits": self._c.user(self._user(req["user"], quoted=False)).limits}

    # virtual hosts

    def _cmd_add_vhost(self, req: dict[str, Any]) -> dict[str, Any]:
        name = str(req["vhost"])
        if name not in self.broker.vhosts:  # rabbitmqctl: adding one that exists succeeds
            self._c.add_vhost(name)
        return {}

    def _cmd_delete_vhost(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.delete_vhost(self._vhost(req["vhost"]).name)
        return {}

    def _cmd_list_vhosts(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rows": self._c.list_vhosts()}

    def _cmd_set_vhost_limits(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.set_vhost_limits(self._vhost(req.get("vhost", "/")).name, req["limits"])
        return {}

    def _cmd_clear_vhost_limits(self, req: dict[str, Any]) -> dict[str, Any]:
        name = str(req.get("vhost", "/"))
        if name not in self.broker.vhosts:
            raise CommandError("Error:\nParameter does not exist")
        self._c.clear_vhost_limits(name)
        return {}

    def _cmd_list_vhost_limits(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("global"):
            return {"rows": [{"vhost": v["name"], "limits": self.broker.vhosts[v["name"]].limits}
                             for v in self._c.list_vhosts() if self.broker.vhosts[v["name"]].limits]}
        return {"limits": self._vhost(req.get("vhost", "/")).limits}

    # permissions

    def _cmd_set_permissions(self, req: dict[str, Any]) -> dict[str, Any]:
        user, vhost = self._user_vhost(req)
        for key in ("configure", "write", "read"):
            _check_regexp(str(req[key]), charlist=True)
        self._c.set_permissions(user, vhost, str(req["configure"]), str(req["write"]), str(req["read"]))
        return {}

    def _cmd_clear_permissions(self, req: dict[str, Any]) -> dict[str, Any]:
        self._c.clear_permissions(*self._user_vhost(req))
        return {}

    def _cmd_list_permissions(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rows": self._c.list_permissions(self._vhost(req.get("vhost", "/")).name)}

    def _cmd_list_user_permissions(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rows": self._c.list_user_permissions(self._user(req["user"], quoted=False))}

    def _cmd_set_topic_permissions(self, req: dict[str, Any]) -> dict[str, Any]:
        user, vhost = self._user_vhost(req)
        for key in ("write", "read"):
            _check_regexp(str(req[key]), charlist=False)
        self._c.set_topic_permissions(user, vhost, str(req["exchange"]), str(req["write"]), str(req["read"]))
        return {}

    def _cmd_clear_topic_permissions(self, req: dict[str, Any]) -> dict[str, Any]:
        user, vhost = self._user_vhost(req)
        exchange = req.get("exchange")
        self._c.clear_topic_permissions(user, vhost, None if exchange is None else str(exchange))
        return {}

    def _cmd_list_topic_permissions(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rows": self._c.list_topic_permissions(self._vhost(req.get("vhost", "/")).name)}

    def _cmd_list_user_topic_permissions(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rows": self._c.list_user_topic_permissions(self._user(req["user"], quoted=False))}

    # definitions

    def _cmd_export_definitions(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"definitions": export_definitions(self.broker)}

    def _cmd_import_definitions(self, req: dict[str, Any]) -> dict[str, Any]:
        data = req.get("definitions")
        if not isinstance(data, dict):
            raise CommandError("Error:\nthe definitions are not a JSON object", EX_DATAERR)
        try:
            apply_definitions(self.broker, data)
        except (PolicyError, ValueError, KeyError, TypeError) as exc:
            raise CommandError(f"Error:\nFailed to import definitions: {exc}", EX_DATAERR) from None
        return {}

    def _queues(self, vhost: VirtualHost) -> list[dict[str, Any]]:
        unacked: Counter[Any] = Counter()
        for conn in list(self.broker.connections):
            for ch in list(getattr(conn, "channels", {}).values()):
                for entry in list(getattr(ch, "unacked", {}).values()):
                    unacked[entry[0]] += 1
        out = []
        for q in list(vhost.queues.values()):
            policy = vhost.policy_for_queue(q)
            ready = q.message_count
            out.append({
                "name": q.name, "messages": ready + unacked[q], "messages_ready": ready,
                "messages_unacknowledged": unacked[q], "consumers": q.consumer_count,
                "policy": policy.name if policy is not None else "", "durable": q.durable,
                "auto_delete": q.auto_delete, "exclusive": q.exclusive,
                "arguments": {k: v for k, v in q.arguments.items()}})
        return out


def _failed(exc: Exception) -> dict[str, Any]:
    """The reply to a command that raised ``exc``: its own words, or a bad request, or a bug (which
    must not take the broker down)."""
    if isinstance(exc, CommandError):
        return {"ok": False, "error": str(exc), "status": exc.status}
    if isinstance(exc, ValueError):
        return {"ok": False, "error": f"Error: bad request: {exc}", "status": EX_DATAERR}
    if isinstance(exc, AMQPError):  # the cluster could not be reached (broker/proposal.py)
        return {"ok": False, "error": f"Error:\n{exc.text}", "status": EX_UNAVAILABLE}
    log.exception("control command failed")
    return {"ok": False, "error": f"Error: {exc!r}", "status": EX_SOFTWARE}


def _ex_string(s: str) -> str:
    """An Elixir string as ``inspect`` prints it."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_regexp(pattern: str, charlist: bool) -> None:
    """Refuse a pattern as rabbitmqctl does: ``{:invalid_regexp, '(', {'missing )', 1}}`` (the
    pattern is a charlist for set_permissions, a binary for set_topic_permissions)."""
    try:
        re.compile(pattern)
    except re.error as exc:
        msg, pos = pcre_error(pattern, exc)
        if charlist:
            shown = "'" + pattern.replace("\\", "\\\\").replace("'", "\\'") + "'"
        else:
            shown = _ex_string(pattern)
        raise CommandError(f"Error:\n{{:invalid_regexp, {shown}, {{'{msg}', {pos}}}}}") from None


async def _alive(path: Path) -> bool:
    """Does a process answer on the Unix socket at ``path``?"""
    try:
        _reader, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return False
    writer.close()
    return True
