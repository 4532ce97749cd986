"""`hare ctl` for users, vhosts, permissions, topic permissions and limits, against a running broker:
rabbitmqctl 3.10.8's texts and exit codes (each expected text below was printed by rabbitmqctl for
the same command), the effect seen by AMQP clients, and persistence across a restart."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
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

from hare.broker.broker import BrokerConfig
from hare.cli.main import main
from hare.server.control import SOCKET_NAME
from hare.testing import EmbeddedBroker

pytestmark = pytest.mark.skipif(EXTERNAL, reason="hare's own control interface")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(data_dir=tmp_path / "data").start()
    yield b
    b.stop()


def ctl_for(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["ctl", "--data-dir", str(data_dir), *args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.fixture
def ctl(broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]) -> Run:
    return ctl_for(broker.data_dir, capsys)


def url(b: EmbeddedBroker, user: str, password: str, vhost: str = "/") -> str:
    return f"amqp://{user}:{password}@127.0.0.1:{b.port}/{quote(vhost, safe='')}"


def connect(b: EmbeddedBroker, user: str, password: str, vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url(b, user, password, vhost)))


def ok(run: Run, *args: str) -> str:
    code, out, err = run(*args)
    assert (code, err) == (0, ""), (args, out, err)
    return out


# -- the informational lines and listings ----------------------------------------------------------


def test_users_with_rabbitmqctl_texts(ctl: Run) -> None:
    assert ctl("add_user", "alice", "secret") == (0, (
        'Adding user "alice" ...\nDone. Don\'t forget to grant the user permissions to some virtual hosts! '
        "See 'rabbitmqctl help set_permissions' to learn more.\n"), "")
    assert ctl("-q", "add_user", "bob", "pw") == (0, "", "")
    assert ctl("set_user_tags", "alice", "administrator", "monitoring") == (
        0, 'Setting tags for user "alice" to [administrator, monitoring] ...\n', "")
    assert ctl("list_users") == (0, "Listing users ...\nuser\ttags\nalice\t[administrator, monitoring]\n"
                                    "bob\t[]\nguest\t[administrator]\n", "")
    assert ctl("-q", "list_users")[1].startswith("user\ttags\nalice\t")
    assert ctl("list_users", "-s")[1].startswith("alice\t")
    assert ctl("list_users", "--formatter", "json") == (0, (
        '[\n{"user":"alice","tags":["administrator","monitoring"]}\n,{"user":"bob","tags":[]}\n'
        ',{"user":"guest","tags":["administrator"]}\n]\n'), "")
    assert ctl("authenticate_user", "alice", "secret") == (
        0, 'Authenticating user "alice" ...\nSuccess\n', "")
    assert ctl("change_password", "alice", "new") == (0, 'Changing password for user "alice" ...\n', "")
    assert ctl("authenticate_user", "alice", "secret") == (65, 'Authenticating user "alice" ...\n', (
        'Error:\nError: failed to authenticate user "alice"\nuser \'alice\' - invalid credentials\n'))
    assert ok(ctl, "authenticate_user", "alice", "new").endswith("Success\n")
    assert ctl("clear_password", "alice") == (0, 'Clearing password for user "alice" ...\n', "")
    assert ctl("authenticate_user", "alice", "new")[0] == 65
    assert ctl("delete_user", "bob") == (0, 'Deleting user "bob" ...\n', "")
    assert ok(ctl, "-q", "list_users", "--no-table-headers") == "alice\t[administrator, monitoring]\n" \
                                                               "guest\t[administrator]\n"


def test_vhosts_permissions_and_limits_with_rabbitmqctl_texts(ctl: Run) -> None:
    ok(ctl, "-q", "add_user", "zed", "secret")
    assert ctl("add_vhost", "zv") == (0, 'Adding vhost "zv" ...\n', "")
    assert ctl("add_vhost", "zv") == (0, 'Adding vhost "zv" ...\n', "")  # as rabbitmqctl: no error
    assert ctl("list_vhosts", "name", "tracing") == (0, "Listing vhosts ...\nname\ttracing\n/\tfalse\n"
                                                        "zv\tfalse\n", "")
    assert ctl("set_permissions", "-p", "zv", "zed", "^a", "^b", "^c") == (
        0, 'Setting permissions for user "zed" in vhost "zv" ...\n', "")
    assert ctl("list_permissions", "-p", "zv") == (
        0, 'Listing permissions for vhost "zv" ...\nuser\tconfigure\twrite\tread\nzed\t^a\t^b\t^c\n', "")
    assert ctl("list_user_permissions", "zed", "--formatter", "json") == (
        0, '[\n{"vhost":"zv","configure":"^a","write":"^b","read":"^c"}\n]\n', "")
    assert ctl("set_topic_permissions", "-p", "zv", "zed", "amq.topic", "^w", "^r") == (
        0, 'Setting topic permissions on "amq.topic" for user "zed" in vhost "zv" ...\n', "")
    assert ctl("list_topic_permissions", "-p", "zv") == (
        0, 'Listing topic permissions for vhost "zv" ...\nuser\texchange\twrite\tread\n'
           "zed\tamq.topic\t^w\t^r\n", "")
    # rabbitmqctl 3.10 prints no header row for this one
    assert ctl("list_user_topic_permissions", "zed") == (
        0, 'Listing topic permissions for user "zed" ...\nzv\tamq.topic\t^w\t^r\n', "")
    assert ctl("clear_topic_permissions", "-p", "zv", "zed", "amq.topic") == (
        0, 'Clearing topic permissions on "amq.topic" for user "zed" in vhost "zv" ...\n', "")
    assert ctl("list_user_topic_permissions", "zed", "--formatter", "json")[1] == "[]\n"
    assert ctl("set_vhost_limits", "-p", "zv", '{"max-connections": 5, "max-queues": 10}') == (
        0, 'Setting vhost limits to "{"max-connections": 5, "max-queues": 10}" for vhost "zv" ...\n', "")
    assert ctl("list_vhost_limits", "-p", "zv") == (
        0, 'Listing limits for vhost "zv" ...\n{"max-connections":5,"max-queues":10}\n', "")
    assert ctl("list_vhost_limits", "--global") == (
        0, 'Listing limits for all vhosts ...\nvhost\tlimits\n'
           'zv\t{"max-connections":5,"max-queues":10}\n', "")
    assert ctl("clear_vhost_limits", "-p", "zv") == (0, 'Clearing vhost "zv" limits ...\n', "")
    assert ctl("clear_vhost_limits", "-p", "zv")[::2] == (69, "Error:\nParameter does not exist\n")
    assert ctl("list_vhost_limits", "-p", "zv") == (0, 'Listing limits for vhost "zv" ...\n', "")
    assert ctl("set_user_limits", "zed", '{"max-connections": 3, "max-channels": 4}') == (
        0, 'Setting user limits to "{"max-connections": 3, "max-channels": 4}" for user "zed" ...\n', "")
    assert ctl("list_user_limits", "--user", "zed") == (
        0, 'Listing limits for user "zed" ...\n{"max-channels":4,"max-connections":3}\n', "")
    assert ctl("list_user_limits", "--user", "zed", "--formatter", "json")[1] == (
        '{"message":"{\\"max-channels\\":4,\\"max-connections\\":3}"}\n')
    assert ctl("clear_user_limits", "zed", "max-channels") == (
        0, 'Clearing "max-channels" limit for user "zed" ...\n', "")
    assert ok(ctl, "-q", "list_user_limits", "--user", "zed") == '{"max-connections":3}\n'
    assert ctl("clear_user_limits", "zed", "all") == (0, 'Clearing all limits for user "zed" ...\n', "")
    assert ok(ctl, "-q", "list_user_limits", "--user", "zed") == "{}\n"
    assert ctl("clear_permissions", "-p", "zv", "zed") == (
        0, 'Clearing permissions for user "zed" in vhost "zv" ...\n', "")
    assert ok(ctl, "-q", "list_permissions", "-p", "zv") == "user\tconfigure\twrite\tread\n"
    assert ctl("delete_vhost", "zv") == (0, 'Deleting vhost "zv" ...\n', "")
    assert ok(ctl, "-s", "list_vhosts") == "/\n"


# rabbitmqctl 3.10.8's stderr and exit code for each failure (run side by side with hare ctl)
ERRORS = [
    (("add_user", "guest", "x"), 70, 'Error:\nUser "guest" already exists'),
    (("add_user", "", "x"), 65, "Error (argument validation): Bad argument: user cannot be an empty string"),
    (("delete_user", "nosuch"), 67, 'Error:\nUser "nosuch" does not exist'),
    (("change_password", "nosuch", "x"), 67, 'Error:\nUser "nosuch" does not exist'),
    (("set_user_tags", "nosuch", "x"), 67, 'Error:\nUser "nosuch" does not exist'),
    (("clear_password", "nosuch"), 69, 'Error:\n{:no_such_user, "nosuch"}'),
    (("authenticate_user", "nosuch", "x"), 65,
     'Error:\nError: failed to authenticate user "nosuch"\nuser \'nosuch\' - invalid credentials'),
    (("delete_vhost", "nosuch"), 65, "Virtual host 'nosuch' does not exist"),
    (("set_permissions", "-p", "nosuch", "guest", ".*", ".*", ".*"), 69,
     "Error:\nVirtual host nosuch does not exist"),
    (("set_permissions", "nosuch", ".*", ".*", ".*"), 67, "Error:\nUser nosuch does not exist"),
    (("set_permissions", "-p", "nosuch", "nosuch", "a", "b", "c"), 67, "Error:\nUser nosuch does not exist"),
    (("set_permissions", "guest", "(", ".*", ".*"), 69, "Error:\n{:invalid_regexp, '(', {'missing )', 1}}"),
    (("clear_permissions", "nosuch"), 67, "Error:\nUser nosuch does not exist"),
    (("clear_permissions", "-p", "nosuch", "guest"), 69, "Error:\nVirtual host nosuch does not exist"),
    (("list_permissions", "-p", "nosuch"), 65, "Virtual host 'nosuch' does not exist"),
    (("list_user_permissions", "nosuch"), 69, 'Error:\n{:no_such_user, "nosuch"}'),
    (("set_topic_permissions", "nosuch", "amq.topic", "a", "b"), 67, "Error:\nUser nosuch does not exist"),
    (("set_topic_permissions", "-p", "nosuch", "guest", "amq.topic", "a", "b"), 69,
     "Error:\nVirtual host nosuch does not exist"),
    (("set_topic_permissions", "guest", "amq.topic", "(", "b"), 69,
     'Error:\n{:invalid_regexp, "(", {\'missing )\', 1}}'),
    (("clear_topic_permissions", "nosuch"), 67, "Error:\nUser nosuch does not exist"),
    (("list_topic_permissions", "-p", "nosuch"), 65, "Virtual host 'nosuch' does not exist"),
    (("list_user_topic_permissions", "nosuch"), 69, 'Error:\n{:no_such_user, "nosuch"}'),
    (("set_vhost_limits", '{"max-bogus": 5}'), 69,
     'Error:\nValidation failed\n\nUnrecognised terms [{<<"max-bogus">>,5}] in limits\n'),
    (("set_vhost_limits", '{"max-queues": "x"}'), 69,
     'Error:\nValidation failed\n\nmax-queues should be a number, actually was <<"x">>\n'),
    (("set_vhost_limits", '{"max-queues": 1.5}'), 69,
     "Error:\nValidation failed\n\nmax-queues should be a number, actually was 1.5\n"),
    (("set_vhost_limits", "{bad"), 69, "Error:\nJSON decoding error. Reason: badarg"),
    (("set_vhost_limits", "-p", "nosuch", '{"max-queues": 1}'), 65, "Virtual host 'nosuch' does not exist"),
    (("clear_vhost_limits", "-p", "nosuch"), 69, "Error:\nParameter does not exist"),
    (("list_vhost_limits", "-p", "nosuch"), 65, "Virtual host 'nosuch' does not exist"),
    (("set_user_limits", "guest", '{"max-bogus": 3}'), 69,
     'Error:\nUnrecognised terms [{<<"max-bogus">>,3}] in user-limits'),
    (("set_user_limits", "guest", '{"max-channels": "x"}'), 69,
     'Error:\nmax-channels should be a number, actually was <<"x">>'),
    (("set_user_limits", "nosuch", '{"max-channels": 3}'), 69, 'Error:\n{:no_such_user, "nosuch"}'),
    (("clear_user_limits", "nosuch", "all"), 69, 'Error:\n{:no_such_user, "nosuch"}'),
    (("list_user_limits", "--user", "nosuch"), 69, 'Error:\n{:no_such_user, "nosuch"}'),
]


@pytest.mark.parametrize(("args", "code", "err"), ERRORS, ids=[" ".join(e[0]) for e in ERRORS])
def test_errors_as_rabbitmqctl_reports_them(ctl: Run, args: tuple[str, ...], code: int, err: str) -> None:
    assert ctl(*args)[::2] == (code, err + "\n")


def test_usage_errors_exit_64(ctl: Run, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        ctl("set_permissions", "guest", ".*", ".*")
    assert info.value.code == 64
    assert capsys.readouterr().err.startswith("Error (argument validation): the following arguments are "
                                              "required: read\n")
    assert ctl("list_vhosts", "bogus")[::2] == (
        64, "Error (argument validation): Info key(s) bogus are not supported\n")


# -- what clients see ------------------------------------------------------------------------------


def test_a_user_added_with_ctl_logs_in_where_permitted(broker: EmbeddedBroker, ctl: Run) -> None:
    ok(ctl, "add_user", "app", "pw")
    with pytest.raises(ProbableAccessDeniedError):  # no permission in '/' yet
        connect(broker, "app", "pw")
    ok(ctl, "set_permissions", "app", r"^app\.", ".*", ".*")
    with connect(broker, "app", "pw") as conn:
        ch = conn.channel()
        ch.queue_declare("app.q")
        with pytest.raises(ChannelClosedByBroker) as info:
            ch.queue_declare("other")
        assert (info.value.reply_code, info.value.reply_text) == (
            403, "ACCESS_REFUSED - access to queue 'other' in vhost '/' refused for user 'app'")
    ok(ctl, "change_password", "app", "pw2")
    with pytest.raises(ProbableAuthenticationError):
        connect(broker, "app", "pw")
    connect(broker, "app", "pw2").close()


def test_deleting_a_vhost_or_a_user_closes_their_connections(broker: EmbeddedBroker, ctl: Run) -> None:
    ok(ctl, "add_vhost", "gone")
    ok(ctl, "set_permissions", "-p", "gone", "guest", ".*", ".*", ".*")
    ok(ctl, "add_user", "doomed", "pw")
    ok(ctl, "set_permissions", "doomed", ".*", ".*", ".*")
    in_vhost = connect(broker, "guest", "guest", "gone")
    of_user = connect(broker, "doomed", "pw")
    ok(ctl, "delete_vhost", "gone")
    ok(ctl, "delete_user", "doomed")
    # RabbitMQ 3.10.8's texts (seen with pika against it)
    for conn, text in ((in_vhost, "CONNECTION_FORCED - vhost 'gone' is down"),
                       (of_user, "CONNECTION_FORCED - user 'doomed' is deleted")):
        with pytest.raises(ConnectionClosedByBroker) as info:
            conn.process_data_events(time_limit=2)
            conn.channel()
        assert (info.value.reply_code, info.value.reply_text) == (320, text)


def test_limits_set_with_ctl_are_enforced(broker: EmbeddedBroker, ctl: Run) -> None:
    ok(ctl, "set_user_limits", "guest", '{"max-channels": 1}')
    with connect(broker, "guest", "guest") as conn:
        conn.channel()
        with pytest.raises(ConnectionClosedByBroker) as info:
            conn.channel()
        assert info.value.reply_code == 530
    ok(ctl, "clear_user_limits", "guest", "all")
    ok(ctl, "set_vhost_limits", '{"max-queues": 0}')
    with connect(broker, "guest", "guest") as conn:
        ch = conn.channel()
        with pytest.raises(ChannelClosedByBroker) as qinfo:
            ch.queue_declare("q")
        assert qinfo.value.reply_code == 406
    ok(ctl, "clear_vhost_limits")
    with connect(broker, "guest", "guest") as conn:
        conn.channel().queue_declare("q")


# -- persistence -----------------------------------------------------------------------------------


def test_changes_survive_a_restart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    ctl = ctl_for(data, capsys)
    with EmbeddedBroker(data_dir=data):
        ok(ctl, "add_vhost", "shop")
        ok(ctl, "add_user", "admin", "s3cret")
        ok(ctl, "set_user_tags", "admin", "administrator")
        ok(ctl, "set_permissions", "-p", "shop", "admin", ".*", ".*", ".*")
        ok(ctl, "set_topic_permissions", "-p", "shop", "admin", "amq.topic", r"^admin\.", ".*")
        ok(ctl, "set_user_limits", "admin", '{"max-connections": 1}')
        ok(ctl, "set_vhost_limits", "-p", "shop", '{"max-queues": 1}')
        ok(ctl, "set_policy", "-p", "shop", "ttl", "^q", '{"message-ttl": 1000}')
        ok(ctl, "delete_user", "guest")  # the default user: it must stay deleted
        before = [ok(ctl, "-q", *c) for c in LISTINGS]
    with EmbeddedBroker(data_dir=data) as b:
        assert [ok(ctl, "-q", *c) for c in LISTINGS] == before
        assert "guest" not in ok(ctl, "-q", "list_users")
        with pytest.raises(ProbableAuthenticationError):
            connect(b, "guest", "guest")
        with connect(b, "admin", "s3cret", "shop") as conn:
            with pytest.raises(ProbableAccessDeniedError):  # max-connections 1
                connect(b, "admin", "s3cret", "shop")
            ch = conn.channel()
            ch.queue_declare("q1")
            with pytest.raises(ChannelClosedByBroker) as info:  # max-queues 1
                ch.queue_declare("q2")
            assert info.value.reply_code == 406
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish("amq.topic", "admin.x", b"ok")
            with pytest.raises(ChannelClosedByBroker) as info:
                ch.basic_publish("amq.topic", "other.x", b"no")
            assert info.value.reply_text == ("ACCESS_REFUSED - access to topic 'other.x' in exchange "
                                             "'amq.topic' in vhost 'shop' refused for user 'admin'")


LISTINGS = [("list_users",), ("list_vhosts",), ("list_permissions", "-p", "shop"),
            ("list_topic_permissions", "-p", "shop"), ("list_user_limits", "--user", "admin"),
            ("list_vhost_limits", "-p", "shop"), ("list_policies", "-p", "shop")]


# -- the stdin password, status, unreachable, by subprocess ----------------------------------------


def hare_ctl(data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hare.cli.main", "ctl", "--data-dir", str(data), *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_add_user_reads_the_password_from_stdin(broker: EmbeddedBroker) -> None:
    done = hare_ctl(broker.data_dir, "add_user", "piped", stdin="from-stdin\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('Adding user "piped" ...\nPassword: \nDone.')
    assert hare_ctl(broker.data_dir, "-q", "authenticate_user", "piped", "from-stdin").stdout == "Success\n"
    done = hare_ctl(broker.data_dir, "add_user", "nopass")
    assert (done.returncode, done.stderr) == (65, "Error:\nPassword is not provided via argument or stdin\n")
    assert "nopass" not in hare_ctl(broker.data_dir, "-q", "list_users").stdout


def test_status_counts(broker: EmbeddedBroker, ctl: Run) -> None:
    ok(ctl, "add_vhost", "v2")
    out = ok(ctl, "status")
    assert out.startswith("Status of node hare@localhost ...\nRuntime\n")
    assert "RabbitMQ version: 3.10.8" in out and f"Node data directory: {broker.data_dir}" in out
    assert "Virtual hosts: 2\nUsers: 1\nConnections: 0\nQueues: 0\n" in out
    assert "Alarms\n\n(none)\n" in out


def test_unreachable_broker_exits_69(tmp_path: Path) -> None:
    done = hare_ctl(tmp_path, "list_users")
    assert done.returncode == 69
    assert f"unable to reach hare through its control socket {tmp_path / SOCKET_NAME}" in done.stderr


def test_json_listing_from_a_subprocess(tmp_path: Path) -> None:
    with EmbeddedBroker(config=BrokerConfig(default_vhost="main"), data_dir=tmp_path / "d") as b:
        assert json.loads(hare_ctl(b.data_dir, "list_vhosts", "--formatter", "json").stdout) == [
            {"name": "main"}]
