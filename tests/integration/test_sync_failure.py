"""A failed fdatasync is loud: the confirms waiting for it are nacked, a tx.commit waiting for it
closes its channel, the broker raises its disk_sync alarm (publishers blocked; in the log and in
`hare ctl status`) and clears it once a sync succeeds again. The failure is real: the data
directory is on the FUSE file system of tests/lazyfs.py, told to fail the fsyncs of segments."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from hare_node import HareNode
from lazyfs import mounted, unavailable
from support import wait_until

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("HARE_TEST_URL")), reason="runs a private hare"),
    pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE file system: {unavailable()}"),
]

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def ctl_status(data: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "hare", "ctl", "status", "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_failed_sync_nacks_confirms_fails_commits_and_raises_an_alarm(tmp_path: Path) -> None:
    with mounted(tmp_path / "mnt") as fs:
        data = fs.mountpoint / "data"
        node = HareNode(data, tmp_path / "hare.log").start()
        try:
            conn = pika.BlockingConnection(pika.URLParameters(node.url))
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare("q", durable=True)
            ch.basic_publish("", "q", b"before", PERSISTENT)  # confirmed: ack
            assert "\nAlarms\n\n(none)" in ctl_status(data)

            fs.command("fail-fsync .seg")
            started = time.monotonic()
            with pytest.raises(pika.exceptions.NackError):
                ch.basic_publish("", "q", b"refused", PERSISTENT)
            assert time.monotonic() - started < 5, "the nack came late"
            status = ctl_status(data)
            assert "\ndisk_sync: the message store cannot sync" in status, status
            assert "Input/output error" in status, status
            log = node.log.read_text()
            assert "ERROR hare.store: cannot sync the message store to disk" in log, log
            assert "alarm set: disk_sync" in log, log

            fs.command("fail-fsync")  # the disk works again: the retry clears the alarm
            wait_until(lambda: "\nAlarms\n\n(none)" in ctl_status(data), timeout=10)
            assert "alarm cleared: disk_sync" in node.log.read_text()
            ch.basic_publish("", "q", b"after", PERSISTENT)  # confirmed again

            fs.command("fail-fsync .seg")
            tx = conn.channel()
            tx.tx_select()
            tx.basic_publish("", "q", b"in a transaction", PERSISTENT)
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
                tx.tx_commit()
            assert err.value.reply_code == 541
            assert "cannot sync to disk" in err.value.reply_text
            fs.command("fail-fsync")
            wait_until(lambda: "\nAlarms\n\n(none)" in ctl_status(data), timeout=10)
            ch.basic_publish("", "q", b"last", PERSISTENT)
            conn.close()
        finally:
            node.stop()
        # a clean restart: every confirmed message is there, in order (the refused ones may be:
        # they were queued, only not known to be on disk)
        node = HareNode(data, tmp_path / "again.log").start()
        try:
            conn = pika.BlockingConnection(pika.URLParameters(node.url))
            ch = conn.channel()
            got = []
            while (m := ch.basic_get("q", auto_ack=True))[0] is not None:
                got.append(m[2])
            conn.close()
            assert [b for b in got if b in (b"before", b"after", b"last")] == [b"before", b"after", b"last"]
            assert "ERROR" not in node.log.read_text()
        finally:
            node.stop()
