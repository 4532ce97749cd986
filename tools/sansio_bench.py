"""The broker's per-message CPU cost without sockets: publish N messages into a queue through
``Connection.receive_data``, then deliver them to a consumer and ack them (multiple, per 1000).

    python tools/sansio_bench.py [--count N] [--size BYTES] [--headers]

Prints the best of five runs in microseconds per message. No network or client library is
involved, so the figure compares builds of hare (run it on two checkouts), not brokers.
"""

from __future__ import annotations

import argparse
import time

from hare.amqp import spec
from hare.amqp.frames import body_frames, header_frame, method_frame
from hare.amqp.properties import encode_properties
from hare.broker.broker import Broker
from hare.session.connection import Connection

BATCH = 1000


def _handshake() -> bytes:
    return (spec.PROTOCOL_HEADER
            + method_frame(0, spec.ConnectionStartOk(client_properties={}, mechanism="PLAIN",
                                                     response=b"\x00guest\x00guest"))
            + method_frame(0, spec.ConnectionTuneOk(channel_max=2047, frame_max=131072, heartbeat=0))
            + method_frame(0, spec.ConnectionOpen(virtual_host="/"))
            + method_frame(1, spec.ChannelOpen())
            + method_frame(1, spec.QueueDeclare(queue="q")))


# a few headers as applications set them (--headers): strings, an int, a nested table, an array
HEADERS = {"trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "retries": 3, "source": "billing",
           "meta": {"v": 2, "tags": ["a", "b"]}}


def run(count: int, size: int, headers: bool = False) -> tuple[float, float]:
    conn = Connection(Broker(), ("127.0.0.1", 1))
    conn.receive_data(_handshake())
    conn.data_to_send()
    one = [method_frame(1, spec.BasicPublish(exchange="", routing_key="q")),
           header_frame(1, size, encode_properties({"headers": HEADERS} if headers else {}))]
    body_frames(one, 1, b"x" * size, 131072)
    chunk = b"".join(one) * BATCH
    t = time.perf_counter()
    for _ in range(count // BATCH):
        conn.receive_data(chunk)
        conn.data_to_send()
    publish = time.perf_counter() - t
    conn.receive_data(method_frame(1, spec.BasicQos(prefetch_count=BATCH))
                      + method_frame(1, spec.BasicConsume(queue="q", consumer_tag="c")))
    t = time.perf_counter()
    for tag in range(BATCH, count + 1, BATCH):
        conn.data_to_send()
        conn.receive_data(method_frame(1, spec.BasicAck(delivery_tag=tag, multiple=True)))
    consume = time.perf_counter() - t
    return publish / count * 1e6, consume / count * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200_000)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--headers", action="store_true", help="publish with a few headers")
    a = p.parse_args()
    runs = [run(a.count, a.size, a.headers) for _ in range(5)]
    print(f"publish {min(r[0] for r in runs):.2f} us/msg, deliver+ack {min(r[1] for r in runs):.2f} us/msg")


if __name__ == "__main__":
    main()
