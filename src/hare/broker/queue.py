"""A queue: stores messages (through its QueueStore) and dispatches them to ready consumers.

Consumers are kept in groups of equal priority, highest first (``x-priority``); within a group
delivery goes round-robin. A consumer is ready when its channel can take output and its prefetch
window has room; dispatch stops when no consumer is ready and resumes when one becomes ready
(ack, qos change, channel flow, the connection's output draining).

With ``x-single-active-consumer`` the groups hold one consumer, the active one; the others wait
in ``waiting`` and the next takes over when it goes (``remove_consumer``), so dispatch is the same.

The queue also enforces its settings (``queue_settings.py``: arguments and policy): message TTL
and per-message expiration (at the head, as RabbitMQ), length limits with their overflow
behaviour, queue expiry, and dead-lettering (``deadletter.py``) of what it gives up on. A delivery
limit wraps the store in a ``DeliveryCounter`` (``delivery_limit.py``), so only such queues count
returns; a priority queue's store is a ``PriorityQueueStore`` (``store/priority.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..store.base import QueueStore
from ..store.paged import PagedQueueStore
from .consumer import Consumer
from .deadletter import EXPIRED, MAXLEN, REJECTED, dead_letter
from .delivery_limit import DeliveryCounter
from .message import Message
from .proposal import Change, Pending, Proposed
from .queue_settings import QueueSettings, queue_settings
from .timers import Timer, now_ms

if TYPE_CHECKING:
    from .vhost import VirtualHost

# Flow control: while a queue that has consumers holds more than FLOW_HIGH ready messages, the
# connections publishing into it stop being read until it is back under FLOW_LOW (or a short
# timeout passes), so publishers go at the pace of consumers instead of growing the backlog.
# A queue without consumers is never a reason to slow publishers: it is absorbing a peak.
FLOW_HIGH = 8_000  # below a queue's memory window (store/paged.py), so a queue that keeps up stays in memory
FLOW_LOW = FLOW_HIGH // 2

# what Queue.publish answers (bits)
THROTTLE = 1  # slow the publisher down (flow control)
REJECTED_PUBLISH = 2  # refused (x-overflow reject-publish): the publisher gets a basic.nack
REPLICATED = 4  # a replicated queue took it: its confirm waits for the followers (QuorumQueue)

# what a node asks the node that holds a queue's messages (ClusterQueue.ask)
GET, GET_NO_ACK, COUNT, PURGE = range(4)

EXPIRY_SLICE = 0.004  # seconds of expiry work (dead-lettering) one timer turn may do


class Queue:
    __slots__ = ("name", "vhost", "vhost_name", "durable", "exclusive", "owner", "auto_delete",
                 "arguments", "store", "groups", "consumer_count", "exclusive_consumer", "deleted",
                 "had_consumer", "flow_waiters", "settings", "policy", "unacked_expiry", "ttl_timer",
                 "expiry_timer", "last_used", "waiting", "counter",
                 "predecessor", "home", "replica")

    def __init__(self, name: str, vhost: VirtualHost | None = None, durable: bool = False,
                 exclusive: bool = False, owner: Any = None, auto_delete: bool = False,
                 arguments: dict[str, Any] | None = None, store: QueueStore | None = None,
                 policy: dict[str, Any] | None = None) -> None:
        self.name = name
        self.vhost = vhost
        self.vhost_name = vhost.name if vhost is not None else "/"
        self.durable = durable
        self.exclusive = exclusive
        self.owner = owner  # the connection owning an exclusive queue
        self.home: str | None = None  # in a cluster, the node that holds it (None: this one)
        # in a cluster, a quorum queue's part on this node (cluster/replicas.py: leading or following)
        self.replica: Any = None
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.store: QueueStore = store if store is not None else PagedQueueStore(None)
        # consumer groups by priority, highest first: [(priority, consumers)]; a group is an
        # ordered dict used as a ring (round-robin: the head moves to the end), so that a consumer
        # leaves it in O(1) however many there are
        self.groups: list[tuple[int, OrderedDict[Consumer, None]]] = []
        self.consumer_count = 0
        self.exclusive_consumer: Consumer | None = None
        # x-single-active-consumer: ``groups`` holds the active consumer only; the others wait
        # here, in registration order (always empty for other queues)
        self.waiting: list[Consumer] = []
        # ... and the active consumer that left holding unacked messages: the next one takes over
        # once they are settled (acked, or requeued to go to it first, in order)
        self.predecessor: Consumer | None = None
        self.deleted = False
        self.had_consumer = False
        self.flow_waiters: dict[Any, None] = {}  # publishers paused by this queue's backlog
        self.unacked_expiry: dict[int, int] = {}  # seq -> expires_at, of delivered messages that have one
        self.ttl_timer: Timer | None = None  # fires when the head message expires
        self.expiry_timer: Timer | None = None  # fires when an unused queue may expire (x-expires)
        self.last_used = now_ms()
        self.policy: dict[str, Any] | None = None
        self.settings = QueueSettings()
        self.counter: DeliveryCounter | None = None  # wraps ``store`` while there is a delivery limit
        self.apply_policy(policy)

    # -- settings ---------------------------------------------------------------------------------

    def apply_policy(self, policy: dict[str, Any] | None) -> None:
        """(Re)compute the effective settings from the arguments and ``policy`` (a definition)."""
        self.policy = policy
        # RabbitMQ applies a new max-length before a new overflow mode: whether the excess is
        # dropped now depends on the mode the queue had until now (reject-publish* keeps it)
        drop_head = self.settings.overflow == "drop-head"
        self.settings = s = queue_settings(self.arguments, policy)
        if s.delivery_limit is not None or self.counter is not None:
            self._set_delivery_limit(s.delivery_limit)
        self.store.expiry = self.expires_at
        if s.expires is not None and not self.consumer_count:
            self._arm_expiry()
        elif self.expiry_timer is not None and s.expires is None:
            self.expiry_timer.cancel()
            self.expiry_timer = None
        if s.limited and drop_head:
            self._drop_over_limit()
        if s.message_ttl is not None:
            self._arm_ttl(self.store.head_expiry())

    def expires_at(self, msg: Message, enqueued_ms: int) -> int:
        """When ``msg``, taken at ``enqueued_ms``, expires in this queue (0: never): the queue's
        TTL or the message's expiration, whichever is shorter."""
        ttl = self.settings.message_ttl
        if msg.properties_raw[0] & 0x01:  # an expiration property
            exp = msg.expiration
            if exp is not None and (ttl is None or exp < ttl):
                ttl = exp
        return 0 if ttl is None else enqueued_ms + ttl

    # -- messages -------------------------------------------------------------------------------

    @property
    def message_count(self) -> int:
        return len(self.store)

    def publish(self, msg: Message) -> int:
        """Enqueue and dispatch. Returns THROTTLE when the publisher should be slowed (see
        FLOW_HIGH), REJECTED_PUBLISH when the queue refused it (x-overflow reject-publish*)."""
        s = self.settings
        if s.plain and not msg.properties_raw[0] & 0x01:  # no TTL, no limit: the common case
            store = self.store
            store.push(msg, 0)
            if self.consumer_count:
                self.dispatch(True)
                return THROTTLE if len(store) > FLOW_HIGH else 0
            return 0
        if s.limited and s.overflow != "drop-head" and self._full_for(msg):
            if s.overflow == "reject-publish-dlx":
                dead_letter(self, msg, MAXLEN)
            return REJECTED_PUBLISH
        exp = 0
        if s.message_ttl is not None or msg.properties_raw[0] & 0x01:
            exp = self.expires_at(msg, now_ms())
        store = self.store
        store.push(msg, exp)
        if exp and (self.ttl_timer is None or len(store) == 1):
            self._arm_ttl(store.head_expiry())
        if self.consumer_count:
            self.dispatch(True)
            if s.limited:
                self._drop_over_limit()
            return THROTTLE if len(store) > FLOW_HIGH else 0
        if s.limited:
            self._drop_over_limit()
        return 0

    def _full_for(self, msg: Message) -> bool:
        s = self.settings
        store = self.store
        if s.max_length is not None and len(store) >= s.max_length:
            return True
        return s.max_length_bytes is not None and store.ready_bytes + len(msg.body) > s.max_length_bytes

    def _drop_over_limit(self) -> None:
        """drop-head: dead-letter the oldest messages until the queue is within its limits."""
        s = self.settings
        store = self.store
        max_len = s.max_length
        max_bytes = s.max_length_bytes
        if s.dead_letter_exchange is None:  # nothing to dead-letter: a message on disk is not read
            while (max_len is not None and len(store) > max_len) or (
                    max_bytes is not None and store.ready_bytes > max_bytes):
                if not store.drop_head():
                    break
            return
        while (max_len is not None and len(store) > max_len) or (
                max_bytes is not None and store.ready_bytes > max_bytes):
            entry = store.pop()
            if entry is None:
                break
            self._give_up(entry[1], entry[0], MAXLEN)

    def _set_delivery_limit(self, limit: int | None) -> None:
        """Count returns (x-delivery-limit) from now on, or stop counting (``delivery_limit.py``)."""
        counter = self.counter
        if limit is None:
            if counter is not None:
                self.store = counter.inner
                self.counter = None
        elif counter is None:
            self.store = self.counter = DeliveryCounter(self.store, self, limit)
        else:
            counter.limit = limit

    def _give_up(self, seq: int, msg: Message, reason: str) -> None:
        """A message leaves the queue for good without being acked: dead-letter it (or drop it)."""
        if self.counter is not None:  # dead-letter it as stored, without x-delivery-count
            msg = self.counter.original(seq, msg)
        dead_letter(self, msg, reason)
        self.store.ack(seq, msg)

    def release_flow(self) -> None:
        """Let the publishers paused by this queue go on."""
        waiters = self.flow_waiters
        self.flow_waiters = {}
        for conn in waiters:
            conn.flow_resume(self)

    def get(self) -> tuple[Message, int, bool] | None:
        """basic.get: the next live message (expired ones at the head are dead-lettered)."""
        self.last_used = now_ms()
        store = self.store
        now = 0
        while True:
            entry = store.pop()
            if entry is None:
                return None
            msg, seq, redelivered, exp = entry
            if exp:
                if exp < (now or (now := now_ms())):
                    self._give_up(seq, msg, EXPIRED)
                    continue
                self.unacked_expiry[seq] = exp
            if self.counter is not None:  # basic.get shows x-delivery-count 0 as well
                msg = self.counter.got(seq, msg)
            return msg, seq, redelivered

    def requeue(self, seq: int, msg: Message) -> None:
        """Put one delivered message back; the caller calls dispatch() after a batch."""
        if not self.deleted:
            exp = self.unacked_expiry.pop(seq, 0) if self.unacked_expiry else 0
            self.store.requeue(seq, msg, exp)
            if exp:
                self._arm_ttl(exp)

    def ack(self, seq: int, msg: Message) -> None:
        if self.unacked_expiry:
            self.unacked_expiry.pop(seq, None)
        if not self.deleted:
            self.store.ack(seq, msg)

    def reject(self, seq: int, msg: Message) -> None:
        """basic.reject / nack without requeue: dead-letter the message (or drop it)."""
        if self.unacked_expiry:
            self.unacked_expiry.pop(seq, None)
        if not self.deleted:
            self._give_up(seq, msg, REJECTED)

    def purge(self) -> int:
        return self.store.purge()

    def ask(self, op: int, replay: Any) -> Asked | None:
        """(In a cluster, ClusterQueue.) The answer of the node that holds this queue's messages
        to ``op`` (GET, GET_NO_ACK, COUNT, PURGE); None: they are held here, answer from here."""
        return None

    # -- expiry -------------------------------------------------------------------------------------

    def _arm_ttl(self, when: int) -> None:
        """Fire when the head message expires (expired = its expires_at has passed)."""
        if not when or self.vhost is None or self.deleted:
            return
        timer = self.ttl_timer
        if timer is not None:
            if not timer.cancelled and timer.when <= when + 1:
                return
            timer.cancel()
        self.ttl_timer = self.vhost.timers.call_at(when + 1, self._ttl_fired)

    def _ttl_fired(self, now: int) -> None:
        self.ttl_timer = None
        more = True
        try:
            more = self.expire_head(now)
        finally:  # armed again whatever happened: the queue's TTL never stops
            if more:  # (its time slice is used up: the rest at the next loop turn)
                self._arm_ttl(now)
            else:
                self._arm_ttl(self.store.head_expiry())

    def expire_head(self, now: int) -> bool:
        """Dead-letter the expired messages at the head (TTL applies at the head only), for at
        most EXPIRY_SLICE seconds: a million messages expiring at once (or some whose headers
        are costly to re-encode) must not hold the event loop. True: more are due."""
        store = self.store
        deadline = perf_counter() + EXPIRY_SLICE
        while True:
            exp = store.head_expiry()
            if not exp or exp >= now:
                return False
            entry = store.pop()
            if entry is None:
                return False
            self._give_up(entry[1], entry[0], EXPIRED)
            if perf_counter() > deadline:
                return bool(store.head_expiry())

    def touch(self) -> None:
        """The queue was used (declared, consumed from, read with basic.get): x-expires restarts."""
        self.last_used = now_ms()

    def _arm_expiry(self) -> None:
        expires = self.settings.expires
        if expires is None or self.vhost is None or self.deleted:
            return
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
        self.expiry_timer = self.vhost.timers.call_at(self.last_used + expires, self._expiry_fired)

    def _expiry_fired(self, now: int) -> None:
        self.expiry_timer = None
        expires = self.settings.expires
        if expires is None or self.deleted or self.consumer_count or self.vhost is None:
            return
        if now - self.last_used >= expires:
            self.vhost.on_expired(self)  # the command layer deletes it (reason "expired")
        else:
            self._arm_expiry()

    def stop_timers(self) -> None:
        for timer in (self.ttl_timer, self.expiry_timer):
            if timer is not None:
                timer.cancel()
        self.ttl_timer = self.expiry_timer = None

    # -- consumers ------------------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        if self.settings.single_active_consumer and (self.groups or self.predecessor is not None):
            self.waiting.append(consumer)  # another consumer is active: this one waits its turn
        else:
            self._join(consumer)
        self.consumer_count += 1
        self.had_consumer = True
        if consumer.exclusive:
            self.exclusive_consumer = consumer
        self.last_used = now_ms()

    def _join(self, consumer: Consumer) -> None:
        """Put ``consumer`` among those dispatch delivers to: its priority's group, round-robin."""
        for priority, group in self.groups:
            if priority == consumer.priority:
                group[consumer] = None
                break
        else:
            self.groups.append((consumer.priority, OrderedDict({consumer: None})))
            self.groups.sort(key=lambda g: -g[0])

    def remove_consumer(self, consumer: Consumer) -> bool:
        """Take ``consumer`` away. On a single-active-consumer queue, when it was the active one,
        the next takes over: at once, or when it holds unacked messages at the first dispatch after
        they are settled (or a message arrives); the caller has the queue dispatched after
        requeueing them, so they go to the next one first, in order."""
        for i, (_, group) in enumerate(self.groups):
            if consumer in group:
                del group[consumer]
                if not group:
                    del self.groups[i]
                    if self.waiting and not self.deleted:
                        if consumer.unacked:
                            self.predecessor = consumer
                        else:
                            self._activate_next()
                self.consumer_count -= 1
                if self.exclusive_consumer is consumer:
                    self.exclusive_consumer = None
                if not self.consumer_count:
                    if self.flow_waiters:
                        self.release_flow()
                    self.last_used = now_ms()
                    self._arm_expiry()
                return True
        if consumer in self.waiting:  # (an empty list but on single-active-consumer queues)
            self.waiting.remove(consumer)
            self.consumer_count -= 1
            return True
        return False

    def _activate_next(self) -> None:
        """x-single-active-consumer: the active consumer went away. As RabbitMQ 3.10 does, the
        waiting consumer with the highest ``x-priority`` takes over, the earliest registered
        among equals (priorities choose only then: a new consumer never displaces the active one)."""
        self.predecessor = None
        waiting = self.waiting
        best = max(waiting, key=_priority)  # max() keeps the first of equals: registration order
        waiting.remove(best)
        self._join(best)

    def consumers(self) -> list[Consumer]:
        """Every consumer: the active ones (in priority order), then any waiting ones."""
        return [*(c for _, group in self.groups for c in group), *self.waiting]

    def _next_ready(self) -> Consumer | None:
        for _, group in self.groups:
            for _ in range(len(group)):
                c = next(iter(group))
                group.move_to_end(c)
                if c.ready():
                    return c
        return None

    def dispatch(self, arrived: bool = False) -> None:
        """Deliver ready messages to ready consumers until either runs out (``arrived``: called
        for a message just published)."""
        store = self.store
        groups = self.groups
        now = 0
        if len(groups) == 1 and len(groups[0][1]) == 1:
            c = next(iter(groups[0][1]))
            deliver = c.target.deliver
            while c.ready():
                entry = store.pop()
                if entry is None:
                    break
                msg, seq, redelivered, exp = entry
                if exp:
                    if exp < (now or (now := now_ms())):
                        self._give_up(seq, msg, EXPIRED)
                        continue
                    self.unacked_expiry[seq] = exp
                deliver(c, msg, seq, redelivered)
        else:
            if not groups:  # consumers, none active: a single active consumer's hand-over is due
                # once its predecessor's deliveries are settled, or when a new message arrives
                # (RabbitMQ 3.10 hands over at the queue's next run: a publish, a requeue)
                p = self.predecessor
                if p is not None and self.waiting and (arrived or not p.unacked):
                    self._activate_next()
                    self.dispatch()
                    return
            while len(store):
                c = self._next_ready()
                if c is None:
                    break
                entry = store.pop()
                if entry is None:
                    break
                msg, seq, redelivered, exp = entry
                if exp:
                    if exp < (now or (now := now_ms())):
                        self._give_up(seq, msg, EXPIRED)
                        continue
                    self.unacked_expiry[seq] = exp
                c.target.deliver(c, msg, seq, redelivered)
        if self.flow_waiters and len(store) <= FLOW_LOW:
            self.release_flow()

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={len(self.store)} consumers={self.consumer_count}>"


def _priority(consumer: Consumer) -> int:
    return consumer.priority


class ClusterQueue(Queue):
    """A queue whose messages, in a cluster, may be held by another node (``replica``: cluster/
    replicas.py): on a node that does not hold them, a publish is forwarded there (and answers
    REPLICATED: its confirm comes back from there, ``replica.confirm_source``), consumers are fed
    from there, and a reject goes back there (cluster/forwarding.py)."""

    __slots__ = ()

    def publish(self, msg: Message) -> int:
        replica = self.replica
        if replica is None:
            return Queue.publish(self, msg)
        if not replica.leading:
            return replica.forward(self, msg)
        return Queue.publish(self, msg) | REPLICATED

    def add_consumer(self, consumer: Consumer) -> None:
        Queue.add_consumer(self, consumer)
        replica = self.replica
        if replica is not None and not replica.leading:
            replica.consumers_changed(self)

    def remove_consumer(self, consumer: Consumer) -> bool:
        removed = Queue.remove_consumer(self, consumer)
        replica = self.replica
        if replica is not None and not replica.leading:
            replica.consumers_changed(self)
        return removed

    def reject(self, seq: int, msg: Message) -> None:
        replica = self.replica
        store = self.store if self.counter is None else self.counter.inner
        if replica is not None and not replica.leading and hasattr(store, "remote"):
            store.settle(seq, 2)  # the holder dead-letters it (forwarding.REJECTED)
            return
        Queue.reject(self, seq, msg)

    def ask(self, op: int, replay: Any) -> Asked | None:
        """Held elsewhere: the question goes to the holder and the command waits (``Proposed``,
        held as a metadata change is); it runs again with the answer as ``replay``. None: held
        here, or no node can answer (the holder is down, or it held them no more): answer from
        here (get-empty, this node's counts)."""
        replica = self.replica
        if replica is None or replica.leading:
            return None
        if type(replay) is Asked and replay.queue is self and replay.op == op and not replay.claimed:
            replay.claimed = True
            return replay if replay.committed else None
        asked = replica.ask(self, op)
        if asked is None:
            return None
        raise Proposed(asked)


class Asked(Pending):
    """A question to the node that holds a queue's messages (basic.get, a declare's counts, a
    purge), answered over the forwarding link (cluster/forwarding.py): ``committed`` when that
    node held them and answered. ``entry`` is the message a get got (its seq is a position in
    this node's store of the queue, through which its ack goes back); ``claimed`` once the
    command that asked took the answer (a got message nobody claims goes back)."""

    __slots__ = ("queue", "op", "message_count", "consumer_count", "entry", "claimed")

    def __init__(self, queue: Queue, op: int) -> None:
        super().__init__(Change())
        self.queue, self.op = queue, op
        self.message_count = self.consumer_count = 0
        self.entry: tuple[Message, int, bool] | None = None
        self.claimed = False


class QuorumQueue(ClusterQueue):
    """``x-queue-type: quorum``. On a single node, a queue with quorum rules (arguments, delivery
    limit); in a cluster, replicated: its leader takes publishes and answers REPLICATED with them,
    so the publisher's confirm waits for the in-sync followers; any other node forwards to it."""

    __slots__ = ()


class RemoteQueue(ClusterQueue):
    """In a cluster, a classic queue whose home is another node (``home``): it holds no message
    here; publishes and consumers go to its home. A queue becomes one, and back, with `rehome`."""

    __slots__ = ()


def rehome(q: Queue, home: str | None, replica: Any) -> None:
    """A classic queue's home in a cluster: another node (``replica`` forwards to it) or this one
    (``home`` None). Only the class changes (the slots are the same), so every reference to the
    queue (bindings, channels) stays good."""
    q.home = home
    q.replica = replica if home is not None else None
    if type(q) is Queue and home is not None:
        q.__class__ = RemoteQueue
    elif type(q) is RemoteQueue and home is None:
        q.__class__ = Queue


def queue_class(arguments: dict[str, Any] | None) -> type[Queue]:
    return QuorumQueue if arguments and arguments.get("x-queue-type") == "quorum" else Queue
