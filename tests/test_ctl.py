"""`hare ctl`: the rabbitmqctl-like commands, through the control socket of a running broker."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from support import EXTERNAL

from hare.cli.main import main
from hare.server.control import SOCKET_NAME
from hare.testing import EmbeddedBroker

pytestmark = pytest.mark.skipif(EXTERNAL, reason="hare's own control interface")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def broker(hare_broker_factory: Callable[..., EmbeddedBroker]) -> EmbeddedBroker:
    return hare_broker_factory()


@pytest.fixture
def ctl(broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `hare ctl --data-dir <the broker's> ARGS...`: (exit code, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["ctl", "--data-dir", str(broker.data_dir), *args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def test_set_list_and_clear_policies(ctl: Run) -> None:
    code, out, err = ctl("set_policy", "limits", "^orders\\.", '{"max-length": 10, "message-ttl": 60000}',
                         "--priority", "2", "--apply-to", "queues")
    assert (code, err) == (0, "")
    assert out == ('Setting policy "limits" for pattern "^orders\\." to "{"max-length": 10, "message-ttl": '
                   '60000}" with priority "2" for vhost "/" ...\n')
    assert ctl("set_policy", "ae", ".*", '{"alternate-exchange": "unrouted"}', "--priority", "-1",
               "--apply-to", "exchanges")[0] == 0
    code, out, _ = ctl("list_policies")
    assert (code, out) == (0, 'Listing policies for vhost "/" ...\n'
                              "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n"
                              '/\tae\t.*\texchanges\t{"alternate-exchange":"unrouted"}\t-1\n'
                              '/\tlimits\t^orders\\.\tqueues\t{"max-length":10,"message-ttl":60000}\t2\n')
    code, out, _ = ctl("list_policies", "--formatter", "json", "-q")
    assert json.loads(out)[1] == {"vhost": "/", "name": "limits", "pattern": "^orders\\.",
                                  "apply-to": "queues", "priority": 2,
                                  "definition": '{"max-length":10,"message-ttl":60000}'}
    assert ctl("clear_policy", "ae") == (0, 'Clearing policy "ae" on vhost "/" ...\n', "")
    assert ctl("-q", "list_policies", "--no-table-headers")[1].startswith("/\tlimits\t")


def test_errors_as_rabbitmqctl_reports_them(ctl: Run) -> None:
    code, _, err = ctl("set_policy", "p", "^x", '{"max-length": "x"}')
    assert (code, err) == (69, 'Error:\nValidation failed\n\n<<"x">> is not a valid maximum length\n\n')
    code, _, err = ctl("set_policy", "p", "(", '{"max-length": 1}')
    assert code == 69 and 'pattern should be regular expression but is invalid: {"missing )",1}' in err
    code, _, err = ctl("set_policy", "p", "^x", '{"max-length": 1}', "--apply-to", "bogus")
    assert code == 69 and "apply-to 'bogus' unrecognised" in err
    code, _, err = ctl("set_policy", "p", "^x", "{not json")
    assert code == 65 and err.startswith("Error:\nJSON decoding error.")
    assert ctl("clear_policy", "nosuch")[::2] == (69, "Error:\nParameter does not exist\n")
    assert ctl("list_policies", "-p", "nosuch")[::2] == (65, "Virtual host 'nosuch' does not exist\n")
    code, _, err = ctl("list_queues", "name", "bogus")
    assert code == 64 and "Info key(s) bogus are not supported" in err


def test_list_queues_shows_counts_and_the_effective_policy(broker: EmbeddedBroker, ctl: Run) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("orders.eu", durable=True)
    ch.queue_declare("plain")
    for i in range(3):
        ch.basic_publish("", "orders.eu", str(i).encode())
    ch.basic_publish("", "plain", b"x")
    ch.basic_get("orders.eu")  # one unacknowledged
    ch.basic_consume("plain", lambda *a: None)
    assert ctl("set_policy", "orders", "^orders", '{"max-length": 100}')[0] == 0
    code, out, _ = ctl("list_queues")
    assert code == 0
    lines = out.splitlines()
    assert lines[:2] == ["Listing queues for vhost / ...", "name\tmessages\tconsumers\tpolicy"]
    assert sorted(lines[2:]) == ["orders.eu\t3\t0\torders", "plain\t1\t1\t"]
    code, out, _ = ctl("list_queues", "name", "messages_ready", "messages_unacknowledged", "durable",
                       "--formatter", "json")
    assert sorted(json.loads(out), key=lambda r: r["name"]) == [
        {"name": "orders.eu", "messages_ready": 2, "messages_unacknowledged": 1, "durable": True},
        {"name": "plain", "messages_ready": 0, "messages_unacknowledged": 1, "durable": False}]
    conn.close()


def test_the_data_dir_may_follow_the_command(broker: EmbeddedBroker,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "list_policies", "-q", "--data-dir", str(broker.data_dir)]) == 0
    assert capsys.readouterr().out == "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n"
    sock = broker.data_dir / SOCKET_NAME
    assert main(["ctl", "--socket", str(sock), "-q", "list_policies"]) == 0
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # the broker's user only


def test_no_running_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "--data-dir", str(tmp_path), "list_queues"]) == 69
    err = capsys.readouterr().err
    assert f"unable to reach hare through its control socket {tmp_path / SOCKET_NAME}" in err


def test_hare_serve_with_load_definitions(tmp_path: Path) -> None:
    """End to end: `hare serve` applies the definitions file and answers `hare ctl`."""
    definitions = tmp_path / "definitions.json"
    definitions.write_text(json.dumps({
        "vhosts": [{"name": "/"}],
        "policies": [{"vhost": "/", "name": "ttl", "pattern": "^jobs\\.", "apply-to": "queues",
                      "definition": {"message-ttl": 60000}, "priority": 1}],
        "queues": [{"name": "jobs.a", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}}],
    }))
    conf = tmp_path / "hare.conf"
    conf.write_text(f"listeners.tcp.default = 127.0.0.1:0\nload_definitions = {definitions}\n")
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "hare.cli.main", "serve", "--config", str(conf),
                             "--data-dir", str(data)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sock = data / SOCKET_NAME
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "hare serve did not start"
            time.sleep(0.05)

        def ctl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "hare.cli.main", "ctl", "--data-dir", str(data),
                                   "-q", *args], capture_output=True, text=True, timeout=30)

        assert ctl("list_policies").stdout.splitlines()[1] == (
            '/\tttl\t^jobs\\.\tqueues\t{"message-ttl":60000}\t1')
        assert ctl("list_queues").stdout.splitlines()[1:] == ["jobs.a\t0\t0\tttl"]
        done = ctl("set_policy", "ttl2", "^jobs", '{"max-length": 5}', "--priority", "5")
        assert done.returncode == 0, done.stderr
        assert ctl("list_queues").stdout.splitlines()[1:] == ["jobs.a\t0\t0\tttl2"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert proc.returncode == 0
    assert not sock.exists()  # removed on the way out


def test_a_bad_definitions_file_stops_hare_serve(tmp_path: Path) -> None:
    definitions = tmp_path / "definitions.json"
    definitions.write_text(json.dumps({"policies": [{"name": "p", "pattern": "",
                                                     "definition": {"nope": 1}}]}))
    conf = tmp_path / "hare.conf"
    conf.write_text(f"listeners.tcp.default = 127.0.0.1:0\nload_definitions = {definitions}\n")
    done = subprocess.run([sys.executable, "-m", "hare.cli.main", "serve", "--config", str(conf),
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 1
    assert "cannot start" in done.stderr and "are not recognised policy settings" in done.stderr
