"""The membership table without etcd: endpoints, node names, keys applied in any order."""

from __future__ import annotations

import pytest

from hare.cluster.membership import Keys, Members, NodeRecord, check_node_name, parse_endpoints


def test_endpoints() -> None:
    assert parse_endpoints("etcd://a:2379,b:2380") == (("a", 2379), ("b", 2380))
    assert parse_endpoints("127.0.0.1:1,etcd://[::1]:2") == (("127.0.0.1", 1), ("::1", 2))
    for bad in ("etcd://", "a", "a:", "a:0", "a:99999", ":5"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def test_node_names() -> None:
    assert check_node_name("hare@host-1") == "hare@host-1"
    for bad in ("", "a/b", "x" * 256, "a\nb"):
        with pytest.raises(ValueError):
            check_node_name(bad)


def test_members_from_keys_and_events() -> None:
    keys = Keys("prod")
    m = Members(keys)
    a = NodeRecord("a", ["h:1"], "h:9")
    m.apply(keys.node("a"), a.encode(), 5)
    m.apply(keys.node("b"), NodeRecord("b", ["h:2"]).encode(), 6)
    m.apply(keys.alive_key("a"), a.encode(), 7)
    m.apply(b"/hare/other/nodes/z", b"{}", 8)  # another cluster's key: not ours
    m.apply(keys.root + b"queues/x", b"{}", 9)  # a key of a later kind: ignored here
    assert m.revision == 9
    assert m.status("prod") == {"cluster_name": "prod", "queues": [], "nodes": [
        {"name": "a", "alive": True, "amqp": ["h:1"]}, {"name": "b", "alive": False, "amqp": ["h:2"]}]}
    m.apply(keys.alive_key("a"), None, 10)  # the lease expired
    m.apply(keys.node("c"), b"not json", 11)  # written by something else: a name without addresses
    assert [(n["name"], n["alive"], n["amqp"]) for n in m.status("prod")["nodes"]] == [
        ("a", False, ["h:1"]), ("b", False, ["h:2"]), ("c", False, [])]
    m.apply(keys.node("b"), None, 12)  # forgotten
    assert [n["name"] for n in m.status("prod")["nodes"]] == ["a", "c"]
    assert NodeRecord.decode("a", a.encode()) == a
