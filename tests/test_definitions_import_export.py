"""Definitions files in RabbitMQ's format, both ways.

``fixtures/rabbitmq-3.10.8-definitions.json`` was written by ``rabbitmqctl export_definitions`` of
a RabbitMQ 3.10.8 node: users with SHA-256, SHA-512 and MD5 password hashes (of "secret"; the
SHA-512 and MD5 users were imported into RabbitMQ first and logged in there with
``rabbitmqctl authenticate_user``), one without a password, tags, user limits, a vhost with
limits (as RabbitMQ exports them: the ``vhost-limits`` parameter), permissions, topic
permissions, a policy, a durable and a transient queue, a topic exchange and a binding.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pika
import pytest
from pika.exceptions import (
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)
from support import EXTERNAL

from hare.auth.users import MD5, SHA256, hash_password
from hare.broker.broker import Broker, BrokerConfig
from hare.cli.main import main
from hare.testing import EmbeddedBroker

pytestmark = pytest.mark.skipif(EXTERNAL, reason="hare's own definitions loader")

FIXTURE = Path(__file__).parent / "fixtures" / "rabbitmq-3.10.8-definitions.json"


def connect(b: EmbeddedBroker, user: str, vhost: str = "shop",
            password: str = "secret") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(
        f"amqp://{user}:{password}@127.0.0.1:{b.port}/{quote(vhost, safe='')}"))


@pytest.fixture
def imported(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(config=BrokerConfig(load_definitions=str(FIXTURE)), data_dir=tmp_path / "data").start()
    yield b
    b.stop()


def test_the_fixture_is_what_it_says() -> None:
    data = json.loads(FIXTURE.read_text())
    assert data["rabbit_version"] == "3.10.8"
    assert {u["hashing_algorithm"] for u in data["users"]} == {
        "rabbit_password_hashing_sha256", "rabbit_password_hashing_sha512", "rabbit_password_hashing_md5"}
    assert data["parameters"][0]["component"] == "vhost-limits" and data["topic_permissions"]


@pytest.mark.parametrize("user", ["sha256user", "sha512user", "md5user"])
def test_users_of_each_hash_log_in(imported: EmbeddedBroker, user: str) -> None:
    vhost = "/" if user == "md5user" else "shop"
    connect(imported, user, vhost).close()
    with pytest.raises(ProbableAuthenticationError):
        connect(imported, user, vhost, password="wrong")


def test_a_user_without_a_password_cannot_log_in(imported: EmbeddedBroker) -> None:
    with pytest.raises(ProbableAuthenticationError):
        connect(imported, "plainuser", password="")


def test_permissions_and_topic_permissions_are_enforced(imported: EmbeddedBroker) -> None:
    with connect(imported, "sha512user") as conn:
        ch = conn.channel()
        ch.queue_declare("orders.eu", passive=True)
        with pytest.raises(ChannelClosedByBroker) as info:
            ch.queue_declare("other")
        assert info.value.reply_text == ("ACCESS_REFUSED - access to queue 'other' in vhost 'shop' refused "
                                         "for user 'sha512user'")
        ch = conn.channel()  # its second (max-channels 2)
        ch.confirm_delivery()
        ch.basic_publish("events", "sha512user.created", b"ok")  # topic write ^{username}\.
        with pytest.raises(ChannelClosedByBroker) as info:
            ch.basic_publish("events", "eu.created", b"no")
        assert info.value.reply_text == ("ACCESS_REFUSED - access to topic 'eu.created' in exchange 'events' "
                                         "in vhost 'shop' refused for user 'sha512user'")
    with connect(imported, "md5user") as conn:  # in shop: write on events only, topic ^eu\.
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("events", "eu.created", b"ok")
        with pytest.raises(ChannelClosedByBroker) as info:
            ch.basic_get("orders.eu")
        assert info.value.reply_code == 403


def test_limits_are_enforced(imported: EmbeddedBroker) -> None:
    with connect(imported, "sha512user") as conn:  # max-channels 2
        conn.channel()
        conn.channel()
        with pytest.raises(ConnectionClosedByBroker) as info:
            conn.channel()
        assert info.value.reply_code == 530
    with connect(imported, "md5user", "/"):  # max-connections 1
        with pytest.raises(ProbableAccessDeniedError):
            connect(imported, "md5user", "/")
    with connect(imported, "sha256user") as conn:  # vhost shop: max-queues 2, it has 2
        with pytest.raises(ChannelClosedByBroker) as qinfo:
            conn.channel().queue_declare("orders.us")
        assert qinfo.value.reply_text == ("PRECONDITION_FAILED - cannot declare queue 'orders.us': queue "
                                          "limit in vhost 'shop' (2) is reached")


def test_queues_exchanges_bindings_and_policies_are_applied(imported: EmbeddedBroker) -> None:
    with connect(imported, "sha256user") as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("events", "eu.order", b"routed")  # the binding eu.# -> orders.eu
        method, _props, body = ch.basic_get("orders.eu", auto_ack=True)
        assert body == b"routed"
        ch.queue_declare("transient.q", passive=True)
    vhost = imported.broker.vhosts["shop"]
    q = vhost.queues["orders.eu"]
    assert (q.durable, q.arguments, vhost.policy_for_queue(q).name) == (True, {"x-max-length": 100},
                                                                         "orders-ttl")
    assert vhost.queues["transient.q"].durable is False


def export(b: EmbeddedBroker, path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["ctl", "--data-dir", str(b.data_dir), "export_definitions", str(path)]) == 0
    assert capsys.readouterr().out == f'Exporting definitions in JSON to a file at "{path}" ...\n'
    return json.loads(path.read_text())


def test_export_is_rabbitmqs_format(imported: EmbeddedBroker, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    ours = export(imported, tmp_path / "out.json", capsys)
    theirs = json.loads(FIXTURE.read_text())
    assert sorted(ours) == sorted(theirs)
    for key in ("users", "permissions", "topic_permissions", "parameters", "policies", "queues",
                "exchanges", "bindings"):
        assert sorted(map(_key, ours[key])) == sorted(map(_key, theirs[key])), key
    assert sorted((v["name"], v["limits"]) for v in ours["vhosts"]) == sorted(
        (v["name"], v["limits"]) for v in theirs["vhosts"])


def _key(item: dict) -> str:
    return json.dumps(item, sort_keys=True)


def test_export_then_import_round_trip(imported: EmbeddedBroker, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    first = export(imported, tmp_path / "first.json", capsys)
    assert main(["ctl", "--data-dir", str(imported.data_dir), "export_definitions", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == first  # "-": the same, on stdout, with no other line
    with EmbeddedBroker(data_dir=tmp_path / "fresh") as fresh:
        path = tmp_path / "first.json"
        assert main(["ctl", "--data-dir", str(fresh.data_dir), "import_definitions", str(path)]) == 0
        assert capsys.readouterr().out == (f'Importing definitions in JSON from a file at "{path}" ...\n'
                                           "Successfully imported the definitions.\n")
        second = export(fresh, tmp_path / "second.json", capsys)
        connect(fresh, "sha512user").close()
    assert second == first


def test_hashing_algorithm_absent_means_md5_before_3_6_and_sha256_after(tmp_path: Path) -> None:
    def users(version: str, algorithm: str) -> dict:
        stored = hash_password("secret", algorithm=algorithm)
        return {"rabbit_version": version, "users": [
            {"name": "old", "password_hash": base64.b64encode(stored).decode(), "tags": "administrator"},
            {"name": "clear", "password": "plain", "tags": ""}]}

    for version, algorithm in (("3.5.7", MD5), ("3.10.8", SHA256)):
        path = tmp_path / f"{version}.json"
        path.write_text(json.dumps(users(version, algorithm)))
        broker = Broker(BrokerConfig(load_definitions=str(path)))
        assert broker.users.authenticate("old", "secret") is not None, version
        assert broker.users.users["old"].tags == ["administrator"]
        assert broker.users.authenticate("clear", "plain") is not None
        assert broker.users.authenticate("clear", "other") is None


def test_import_from_stdin_and_a_bad_file(tmp_path: Path) -> None:
    with EmbeddedBroker(data_dir=tmp_path / "d") as b:
        def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "hare.cli.main", "ctl", "--data-dir",
                                   str(b.data_dir), *args], input=stdin, capture_output=True, text=True,
                                  timeout=60)

        done = run("import_definitions", "-", stdin=json.dumps({"vhosts": [{"name": "piped"}]}))
        assert (done.returncode, done.stdout) == (0, "Importing definitions in JSON from standard input ...\n"
                                                     "Successfully imported the definitions.\n")
        assert "piped" in b.broker.vhosts
        done = run("import_definitions", str(tmp_path / "none"))
        assert done.returncode == 65
        assert done.stderr.startswith(f"Error (argument validation): Bad argument: File {tmp_path / 'none'} "
                                      "does not exist")
        done = run("import_definitions", "-", stdin=json.dumps({"policies": [
            {"vhost": "/", "name": "p", "pattern": "", "definition": {"nope": 1}}]}))
        assert done.returncode == 65 and "are not recognised policy settings" in done.stderr
