"""Hosts on one machine for the partition tests: a network namespace per hare node, joined by a
bridge in the test's own namespace, where etcd and the clients are; nft rules in a node's
namespace cut it from etcd and the other nodes but not from its clients.

    root namespace: bridge  PREFIX.1/24 (clients: the source address of their connections)
                            PREFIX.2/32 (etcd listens here)
    namespace i:    eth0    PREFIX.(10 + i)/24 (the node's AMQP and node-to-node listeners)

Needs root, iproute2 and nft (Debian's nftables); without them the tests that use it skip, or
fail when HARE_REQUIRE_NETNS is set (CI)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


def require_netns() -> None:
    """Skip (or fail in CI) when namespaces and nft rules cannot be made here."""
    why = None
    if os.geteuid() != 0:
        why = "network namespaces need root"
    elif shutil.which("ip") is None or shutil.which("nft") is None:
        why = "iproute2 and nft are needed (apt-get install iproute2 nftables)"
    if why is not None:
        if os.environ.get("HARE_REQUIRE_NETNS"):
            pytest.fail(why)
        pytest.skip(why)


class Network:
    """A bridge and ``hosts`` namespaces; `close` removes them all."""

    def __init__(self, hosts: int) -> None:
        tag = os.getpid() % 10000
        self.prefix = f"10.231.{tag % 250}"
        self.bridge = f"hbr{tag}"
        self.namespaces = [f"hare{tag}-{i}" for i in range(hosts)]
        self.client = f"{self.prefix}.1"
        self.etcd = f"{self.prefix}.2"
        self.cut: set[str] = set()
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.client}/24", "dev", self.bridge)
            _run("ip", "addr", "add", f"{self.etcd}/32", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i, ns in enumerate(self.namespaces):
                veth = f"hv{tag}-{i}"
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _run("ip", "link", "set", veth, "master", self.bridge, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def address(self, i: int) -> str:
        return f"{self.prefix}.{10 + i}"

    def prefix_of(self, i: int) -> tuple[str, ...]:
        """The command prefix that runs a program in host ``i``'s namespace."""
        return ("ip", "netns", "exec", self.namespaces[i])

    def partition(self, i: int) -> None:
        """Host ``i`` loses etcd and the other hosts (packets dropped both ways, as a cut cable
        does: no resets); its clients still reach it."""
        peers = ", ".join([self.etcd, *(self.address(j) for j in range(len(self.namespaces)) if j != i)])
        rules = (f"table inet hare_partition {{\n"
                 f" chain input {{ type filter hook input priority 0; ip saddr {{ {peers} }} drop; }}\n"
                 f" chain output {{ type filter hook output priority 0; ip daddr {{ {peers} }} drop; }}\n"
                 f"}}\n")
        done = subprocess.run([*self.prefix_of(i), "nft", "-f", "-"], input=rules, capture_output=True,
                              text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        self.cut.add(self.namespaces[i])

    def heal(self, i: int) -> None:
        _run(*self.prefix_of(i), "nft", "delete", "table", "inet", "hare_partition")
        self.cut.discard(self.namespaces[i])

    def close(self) -> None:
        for ns in self.namespaces:
            _run("ip", "netns", "del", ns, check=False)  # (its end of the veth goes with it)
        for i in range(len(self.namespaces)):
            _run("ip", "link", "del", f"hv{os.getpid() % 10000}-{i}", check=False)
        _run("ip", "link", "del", self.bridge, check=False)
