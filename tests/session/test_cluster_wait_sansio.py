"""A connection whose metadata change waits for the cluster (broker/proposal.py), without sockets.

The cluster's part is played in process by `Agreement`: it checks a change's guards and applies
its keys through the real `ClusterDefinitions.apply`, as a node applies what its etcd watch
delivers; tests/cluster runs the same path on a real etcd."""

from __future__ import annotations

import pytest
from test_connection_sansio import Peer, publish_bytes

from hare.amqp import spec
from hare.amqp.errors import ConnectionFault
from hare.amqp.frames import method_frame
from hare.broker.proposal import Change, Pending
from hare.cluster.definitions import ClusterDefinitions


class Agreement:
    """etcd and the watch, in process: ``agree`` writes each proposed change whose guards hold
    and applies it to the broker, then finishes its Pending."""

    def __init__(self, peer: Peer, node: str = "hare-a") -> None:
        self.proposed: list[Pending] = []
        self.revision = 0
        self.defs = ClusterDefinitions(b"/hare/test/", node, peer.broker, self.propose, self.submit)
        peer.broker.commands.cluster = self.defs

    def propose(self, change: Change) -> Pending:
        pending = Pending(change)
        self.proposed.append(pending)
        return pending

    def submit(self, change: Change) -> None:
        self.propose(change)

    def write(self, change: Change) -> bool:
        revisions = self.defs.revisions
        if any(revisions.get(key, 0) != rev for key, rev in change.guards.items()):
            return False
        self.revision += 1
        for key, value in change.ops.items():
            self.defs.apply(key, value, self.revision)
        return True

    def agree(self) -> None:
        proposed, self.proposed = self.proposed, []
        for pending in proposed:
            pending.finish(committed=self.write(pending.change))


@pytest.fixture
def peer() -> Peer:
    p = Peer()
    p.handshake()
    p.open_channel(1)
    return p


def test_the_input_after_a_declare_waits_for_the_cluster_then_runs_in_order(peer: Peer) -> None:
    cluster = Agreement(peer)
    peer.feed(method_frame(1, spec.QueueDeclare(queue="jobs", durable=True))
              + publish_bytes(1, "jobs", b"first")
              + method_frame(1, spec.BasicGet(queue="jobs", no_ack=True)))
    assert peer.frames() == []  # nothing answered, nothing published: the declare is not applied
    assert "jobs" not in peer.broker.vhosts["/"].queues
    assert len(cluster.proposed) == 1 and peer.conn.waiting is cluster.proposed[0]
    peer.feed(method_frame(1, spec.BasicGet(queue="jobs", no_ack=True)))  # more input: held too
    assert peer.frames() == []
    cluster.agree()
    peer.feed(b"")  # what the shell does when the change is applied
    got = peer.frames()
    kinds = [type(spec.METHODS[int.from_bytes(p[:4], "big")].decode(p, 4)) for t, _, p in got if t == 1]
    assert kinds == [spec.QueueDeclareOk, spec.BasicGetOk, spec.BasicGetEmpty]
    assert got[-2][2] == b"first"  # the body of the get-ok
    assert peer.broker.vhosts["/"].queues["jobs"].home is None  # declared here: its home is this node
    assert peer.conn.waiting is None and cluster.proposed == []


def test_a_declare_another_node_made_differently_first_is_refused_with_406(peer: Peer) -> None:
    cluster = Agreement(peer)
    peer.send(1, spec.QueueDeclare(queue="jobs", durable=True, arguments={"x-max-length": 5}))
    assert peer.frames() == []
    # another node's declare of the same queue is written first
    other = Change()
    key, value = cluster.defs.queue_entry("/", "jobs", True, False, {"x-max-length": 9}, node="hare-b")
    other.put(key, value)
    assert cluster.write(cluster.defs.guard_absent(other, key))
    cluster.agree()  # ours: its guard (the key is absent) fails
    peer.feed(b"")
    (close,) = peer.expect(spec.ChannelClose)
    assert close.reply_code == 406
    assert "inequivalent arg 'x-max-length'" in close.reply_text
    q = peer.broker.vhosts["/"].queues["jobs"]
    assert (q.arguments, q.home) == ({"x-max-length": 9}, "hare-b")


def test_a_cluster_that_cannot_be_reached_fails_the_command_with_541(peer: Peer) -> None:
    cluster = Agreement(peer)
    peer.send(1, spec.ExchangeDeclare(exchange="logs", type="fanout"))
    (pending,) = cluster.proposed
    pending.finish(error=ConnectionFault(541, "cannot write to the cluster's metadata store: down"))
    peer.feed(b"")
    assert "metadata store" in peer.expect_close(541)
    assert "logs" not in peer.broker.vhosts["/"].exchanges


def test_a_delete_answers_the_count_and_takes_the_bindings_and_orphaned_exchanges(peer: Peer) -> None:
    cluster = Agreement(peer)
    peer.send(1, spec.ExchangeDeclare(exchange="fan", type="fanout", auto_delete=True))
    peer.send(1, spec.QueueDeclare(queue="q"))
    peer.send(1, spec.QueueBind(queue="q", exchange="fan"))
    peer.feed(publish_bytes(1, "q", b"x") + publish_bytes(1, "q", b"y"))
    for _ in range(4):
        cluster.agree()
        peer.feed(b"")
    peer.expect(spec.ExchangeDeclareOk, spec.QueueDeclareOk, spec.QueueBindOk)
    vhost = peer.broker.vhosts["/"]
    assert vhost.queues["q"].message_count == 2
    assert len([k for k in cluster.defs.revisions if b"/bindings/" in k]) == 1
    peer.send(1, spec.QueueDelete(queue="q"))
    assert "q" in vhost.queues  # not before the cluster agrees
    (pending,) = cluster.proposed
    assert sorted(pending.change.ops) == sorted(k for k in cluster.defs.revisions if b"/exchanges/" in k
                                                or b"/queues/" in k or b"/bindings/" in k)
    cluster.agree()
    peer.feed(b"")
    (ok,) = peer.expect(spec.QueueDeleteOk)
    assert ok.message_count == 2
    assert "q" not in vhost.queues and "fan" not in vhost.exchanges  # the auto-delete exchange went
    assert not [k for k in cluster.defs.revisions if b"/bindings/" in k]


def test_exclusive_queues_stay_out_of_the_cluster(peer: Peer) -> None:
    cluster = Agreement(peer)
    peer.send(1, spec.QueueDeclare(queue="mine", exclusive=True))
    peer.send(1, spec.QueueBind(queue="mine", exchange="amq.fanout"))
    peer.expect(spec.QueueDeclareOk, spec.QueueBindOk)  # answered at once
    assert cluster.proposed == [] and cluster.defs.revisions == {}
