"""The replication's frames and state machines without sockets (cluster/replication.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hare.broker.message import Message
from hare.cluster.replication import (
    ACK,
    FrameReader,
    LeaderLog,
    ReplicaState,
    ack,
    frame,
    min_isr,
)


def _msg(body: bytes, rk: str = "q") -> Message:
    return Message("", rk, b"\x10\x00\x02", body)  # delivery-mode 2


def _leader(isr: tuple[str, ...] = ("a", "b", "c")) -> LeaderLog:
    return LeaderLog(ReplicaState(), 7, "a", ["a", "b", "c"], isr, min_isr(3))


def _replay(frames: list[bytes], state: ReplicaState | None = None) -> ReplicaState:
    state = state or ReplicaState()
    reader = FrameReader()
    for kind, payload in reader.feed(b"".join(frames)):
        state.apply(kind, payload)
    return state


def test_a_follower_ends_with_the_leaders_state() -> None:
    log = _leader()
    log.connect("b")
    for i in range(5):
        log.enqueued(i, _msg(str(i).encode()))
    log.delivered(1)
    log.delivered(2)
    log.settle(0)
    log.settle(2)
    log.flush()
    follower = _replay(log.take("b"))
    assert sorted(follower.live) == [1, 3, 4] == sorted(log.state.live)
    assert follower.delivered == {1} == log.state.delivered
    assert follower.seq == log.state.seq and follower.epoch == 7
    assert [follower.message(p).body for p in follower.live] == [b"1", b"3", b"4"]
    assert follower.message(3).routing_key == "q" and follower.message(3).persistent
    # a follower connecting later gets the same state from a snapshot
    log.connect("c")
    late = _replay(log.take("c"))
    assert (sorted(late.live), late.delivered, late.seq) == ([1, 3, 4], {1}, log.state.seq)


def test_a_snapshot_replaces_the_state_only_when_whole() -> None:
    old = ReplicaState()
    old.live[9] = _msg(b"old")
    log = _leader()
    log.enqueued(0, _msg(b"new"))
    log.connect("b")
    frames = log.take("b")
    _replay(frames[:-1], old)  # cut off before END: the last whole state stands
    assert [old.message(p).body for p in old.live] == [b"old"] and old.snapshotting
    _replay(frames, old)
    assert [old.message(p).body for p in old.live] == [b"new"] and not old.snapshotting


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=20), st.integers(1, 50))
def test_frames_split_anywhere_are_read_whole(bodies: list[bytes], cut: int) -> None:
    data = b"".join(frame(ACK, body) for body in bodies)
    reader = FrameReader()
    got = []
    for i in range(0, len(data), cut):
        got.extend(reader.feed(data[i:i + cut]))
    assert got == [(ACK, body) for body in bodies]


def test_a_confirm_waits_for_every_in_sync_member_and_a_majority() -> None:
    log = _leader()
    done: list[str] = []
    log.connect("b")
    log.connect("c")
    log.enqueued(0, _msg(b"x"))
    log.barrier(lambda: done.append("ok"), lambda: done.append("failed"))
    seq = log.state.seq
    log.follower_acked("a", seq)  # the leader's own sync
    log.follower_acked("b", seq)
    assert done == []  # c is in sync and has not synced it
    log.set_isr(["a", "b"])  # c left the ISR: a and b are a majority of three
    assert done == ["ok"]
    log.enqueued(1, _msg(b"y"))
    log.barrier(lambda: done.append("ok2"), lambda: done.append("failed2"))
    log.set_isr(["a"])  # the leader alone is not a majority: never confirm on its copy alone
    log.follower_acked("a", log.state.seq)
    assert done == ["ok"]
    log.fenced = True
    log.set_isr(["a", "b"])
    log.follower_acked("b", log.state.seq)
    assert done == ["ok"]  # a leader whose lease may have expired confirms nothing
    log.fenced = False
    log.release()
    assert done == ["ok", "ok2"]
    log.enqueued(2, _msg(b"z"))
    log.barrier(lambda: done.append("ok3"), lambda: done.append("failed3"))
    log.fail_all()  # it leads no more
    assert done[-1] == "failed3"


def test_ack_frame_is_a_sequence_number() -> None:
    (kind, payload), = FrameReader().feed(ack(42))
    assert kind == ACK and int.from_bytes(payload, "big") == 42


def test_a_forwarded_publish_frame_round_trips() -> None:
    from hare.cluster.forward_frames import F_PUBLISH, parse_publish, publish_frame

    msg = Message("amq.topic", "eu.fr", b"\x90\x00\x02\x00\x00\x00\x00", b"\x00body\xff")
    (kind, payload), = FrameReader().feed(publish_frame(9, 1, "v\udcff", "queue-é", msg))
    seq, hops, vhost, queue, got = parse_publish(payload)
    assert (kind, seq, hops, vhost, queue) == (F_PUBLISH, 9, 1, "v\udcff", "queue-é")
    assert (got.exchange, got.routing_key, got.properties_raw, got.body) == (
        "amq.topic", "eu.fr", msg.properties_raw, msg.body)


def test_a_member_added_counts_in_the_majority_only_once_in_sync() -> None:
    """grow: a queue of one ([a]) gets b. Until b has caught up and joined the ISR, a alone
    confirms (min_isr of the old group); then both must have synced; shrink back to one: a alone."""
    log = LeaderLog(ReplicaState(), 7, "a", ["a"], ["a"], min_isr(1))
    log.set_members(["a", "b"])
    assert (log.min_isr, log.joining) == (1, {"b"})
    log.connect("b")
    log.enqueued(0, _msg(b"0"))
    done: list[str] = []
    log.barrier(lambda: done.append("one"), lambda: done.append("failed"))
    log.follower_acked("a", log.state.seq)
    assert done == ["one"]  # b's snapshot does not hold it up
    log.set_isr(["a", "b"])
    assert (log.min_isr, log.joining) == (2, set())
    log.enqueued(1, _msg(b"1"))
    log.barrier(lambda: done.append("two"), lambda: done.append("failed"))
    log.follower_acked("a", log.state.seq)
    assert done == ["one"]  # b is in sync now: it must have it too
    log.follower_acked("b", log.state.seq)
    assert done == ["one", "two"]
    log.set_members(["a"])
    log.set_isr(["a"])
    assert log.min_isr == 1
    log.enqueued(2, _msg(b"2"))
    log.barrier(lambda: done.append("three"), lambda: done.append("failed"))
    log.follower_acked("a", log.state.seq)
    assert done == ["one", "two", "three"]
