"""The command layer announces each change of users, permissions, vhosts and limits once, after it
is applied, with RabbitMQ's event names; a failing listener does not undo the change."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hare.broker.broker import Broker
from hare.broker.commands import CommandError
from hare.broker.events import Event


def test_users_permissions_vhosts_and_limits_are_announced(tmp_path: Path) -> None:
    broker = Broker(data_dir=tmp_path)
    try:
        seen: list[Event] = []
        c = broker.commands
        c.listeners.append(seen.append)
        c.add_vhost("v")
        c.add_user("u", "p", ["monitoring"])
        c.set_permissions("u", "v", ".*", "", ".*")
        c.set_topic_permissions("u", "v", "amq.topic", "^a", "^b")
        c.change_password("u", "q")
        c.clear_password("u")
        c.set_user_tags("u", ["management"])
        c.set_user_limits("u", {"max-channels": 3})
        c.clear_user_limits("u", "all")
        c.set_vhost_limits("v", {"max-queues": 2})
        c.clear_vhost_limits("v")
        c.clear_topic_permissions("u", "v")
        c.clear_permissions("u", "v")
        c.delete_user("u")
        c.delete_vhost("v")
        with pytest.raises(CommandError):
            c.delete_user("u")  # refused: nothing announced
        # (deleting the vhost deletes its exchanges: amq.direct ... announced as RabbitMQ does)
        dropped = [e.name for e in seen if e.kind == "exchange.deleted"]
        assert "amq.direct" in dropped and all(e.reason == "vhost_deleted" for e in seen
                                               if e.kind == "exchange.deleted")
        assert [(e.kind, e.vhost, e.name) for e in seen if e.kind != "exchange.deleted"] == [
            ("vhost.created", "v", "v"), ("user.created", "", "u"), ("permission.created", "v", "u"),
            ("topic.permission.created", "v", "u"), ("user.password.changed", "", "u"),
            ("user.password.cleared", "", "u"), ("user.tags.set", "", "u"), ("user.limits.set", "", "u"),
            ("user.limits.cleared", "", "u"), ("vhost.limits.set", "v", "v"),
            ("vhost.limits.cleared", "v", "v"), ("topic.permission.deleted", "v", "u"),
            ("permission.deleted", "v", "u"), ("user.deleted", "", "u"), ("vhost.deleted", "v", "v")]
        assert seen[2].details == {"configure": ".*", "write": "", "read": ".*"}
        assert seen[9].details == {"limits": {"max-queues": 2}}
    finally:
        broker.close()


def test_a_failing_listener_is_logged_and_the_change_stands(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    broker = Broker(data_dir=tmp_path)
    try:
        seen: list[Event] = []

        def broken(event: Event) -> None:
            raise RuntimeError("listener bug")

        broker.commands.listeners += [broken, seen.append]
        with caplog.at_level(logging.ERROR, "hare.commands"):
            broker.commands.add_vhost("v")
        assert "v" in broker.vhosts and [e.kind for e in seen] == ["vhost.created"]
        assert "listener bug" in caplog.text
    finally:
        broker.close()
    broker = Broker(data_dir=tmp_path)
    try:
        assert "v" in broker.vhosts
    finally:
        broker.close()
