"""The cluster's membership as etcd keys, without I/O.

Under ``/hare/<cluster_name>/``:

- ``nodes/<name>``: a member, written when it first joins and kept until `forget_cluster_node`
  (a JSON record: its AMQP and node-to-node addresses);
- ``alive/<name>``: bound to the node's lease, so it disappears when the node stops renewing it
  (stopped, killed, cut off from etcd); its value is the node's record too.

`Members` applies the keys read at start and the watch's events, and answers `cluster_status`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PREFIX = "/hare/"


@dataclass(frozen=True)
class ClusterSettings:
    node_name: str
    endpoints: tuple[tuple[str, int], ...]  # etcd's client addresses, tried in order
    cluster_name: str = "hare"
    listener: str | None = None  # ADDR:PORT of the node-to-node link (--cluster-bind)
    lease_ttl: int = 6  # seconds: a silent node is seen gone after this long


def parse_endpoints(text: str) -> tuple[tuple[str, int], ...]:
    """``etcd://HOST:PORT[,HOST:PORT...]`` (or without the scheme) as (host, port) pairs."""
    body = text.removeprefix("etcd://").removeprefix("http://")
    out: list[tuple[str, int]] = []
    for part in body.split(","):
        part = part.strip().removeprefix("etcd://").removeprefix("http://").rstrip("/")
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"an etcd endpoint is HOST:PORT, got {part!r}")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError(f"no etcd endpoint in {text!r}")
    return tuple(out)


def check_node_name(name: str) -> str:
    if not name or "/" in name or len(name) > 255 or not name.isprintable():
        raise ValueError(f"a node name is 1-255 printable characters without '/', got {name!r}")
    return name


class Keys:
    """The key layout of one cluster."""

    def __init__(self, cluster_name: str) -> None:
        self.root = f"{PREFIX}{cluster_name}/".encode()
        self.nodes = self.root + b"nodes/"
        self.alive = self.root + b"alive/"

    def node(self, name: str) -> bytes:
        return self.nodes + name.encode()

    def alive_key(self, name: str) -> bytes:
        return self.alive + name.encode()


@dataclass
class NodeRecord:
    name: str
    amqp: list[str] = field(default_factory=list)  # host:port of each AMQP listener
    cluster: str | None = None  # the node-to-node listener
    # the node's data directory's identity: a node restarted on it (after kill -9, before its
    # old lease expired) takes its own name back; another directory with that name is refused
    instance: str = ""

    def encode(self) -> bytes:
        return json.dumps({"name": self.name, "amqp": self.amqp, "cluster": self.cluster,
                           "instance": self.instance}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, name: str, value: bytes) -> NodeRecord:
        try:
            d = json.loads(value)
            amqp = [str(a) for a in d.get("amqp", [])]
            cluster = d.get("cluster")
            return cls(name, amqp, None if cluster is None else str(cluster), str(d.get("instance", "")))
        except (ValueError, AttributeError, TypeError):  # a key written by something else
            return cls(name)


class Members:
    """The nodes of a cluster as this node last saw them in etcd."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.nodes: dict[str, NodeRecord] = {}
        self.alive: dict[str, NodeRecord] = {}
        self.revision = 0  # of the last change applied

    def apply(self, key: bytes, value: bytes | None, revision: int) -> None:
        """A key's new value (None: deleted), from the start's read or the watch."""
        self.revision = max(self.revision, revision)
        for prefix, table in ((self.keys.nodes, self.nodes), (self.keys.alive, self.alive)):
            if key.startswith(prefix):
                name = key[len(prefix):].decode(errors="replace")
                if value is None:
                    table.pop(name, None)
                else:
                    table[name] = NodeRecord.decode(name, value)
                return

    def status(self, cluster_name: str) -> dict[str, Any]:
        names = sorted(self.nodes.keys() | self.alive.keys())
        nodes = []
        for name in names:
            record = self.alive.get(name) or self.nodes[name]
            nodes.append({"name": name, "alive": name in self.alive, "amqp": record.amqp})
        return {"cluster_name": cluster_name, "nodes": nodes, "queues": []}
