"""The control socket: how ``hare ctl`` talks to a running broker.

A Unix socket, ``<data_dir>/hare-ctl.sock`` (mode 0600: only the broker's own user may connect;
nothing is exposed on the network), served on the broker's event loop, so commands see and change
the broker between two AMQP reads. One JSON object per line each way::

    -> {"command": "set_policy", "vhost": "/", "name": "ttl", "pattern": "^q", "definition": {...},
        "priority": 0, "apply_to": "queues"}
    <- {"ok": true}
    <- {"ok": false, "error": "Error:\\nValidation failed\\n\\n...", "status": 69}

``error`` is the text ``rabbitmqctl`` prints for the same failure and ``status`` its exit code.
Commands: ``set_policy``, ``clear_policy``, ``list_policies``, ``list_queues``, ``status``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from .. import __version__
from ..broker.broker import Broker
from ..broker.policies import PolicyError
from ..broker.vhost import VirtualHost

log = logging.getLogger("hare.control")

SOCKET_NAME = "hare-ctl.sock"
MAX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
MAX_REQUEST = 1 << 20

EX_DATAERR = 65  # rabbitmqctl's exit codes
EX_UNAVAILABLE = 69


class CommandError(Exception):
    def __init__(self, text: str, status: int = EX_UNAVAILABLE) -> None:
        super().__init__(text)
        self.status = status


class ControlServer:
    def __init__(self, broker: Broker, path: Path | str) -> None:
        self.broker = broker
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None

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
                writer.write(json.dumps(self.handle_line(line), default=str).encode() + b"\n")
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
        except CommandError as exc:
            return {"ok": False, "error": str(exc), "status": exc.status}
        except ValueError as exc:
            return {"ok": False, "error": f"Error: bad request: {exc}", "status": EX_DATAERR}
        except Exception as exc:  # a bug must not take the broker down
            log.exception("control command failed")
            return {"ok": False, "error": f"Error: {exc!r}", "status": 70}

    # -- commands -------------------------------------------------------------------------------------

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        command = req.get("command")
        if command == "status":
            return {"version": __version__, "vhosts": sorted(self.broker.vhosts),
                    "alarms": sorted(self.broker.alarms), "sync_error": self.broker.sync_error}
        vhost = self._vhost(req.get("vhost", "/"))
        if command == "set_policy":
            try:
                vhost.set_policy(str(req["name"]), str(req["pattern"]), req["definition"],
                                 req.get("priority", 0), str(req.get("apply_to", "all")))
            except PolicyError as exc:
                raise CommandError(f"Error:\nValidation failed\n\n{exc}\n") from None
            return {}
        if command == "clear_policy":
            if not vhost.clear_policy(str(req["name"])):
                raise CommandError("Error:\nParameter does not exist")
            return {}
        if command == "list_policies":
            return {"policies": [p.as_json() for p in vhost.policies()]}
        if command == "list_queues":
            return {"queues": self._queues(vhost)}
        raise CommandError(f"Error: unknown command {command!r}", 64)

    def _vhost(self, name: Any) -> VirtualHost:
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise CommandError(f"Virtual host '{name}' does not exist", EX_DATAERR)
        return vhost

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


async def _alive(path: Path) -> bool:
    """Does a process answer on the Unix socket at ``path``?"""
    try:
        _reader, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return False
    writer.close()
    return True
