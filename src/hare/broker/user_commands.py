"""The command layer's user commands: users, their passwords, tags and limits, their
permissions and topic permissions (``rabbitmqctl``'s), and their listings.

A part of ``Commands`` (broker/commands.py), which writes what they change to the definitions
store (``_save_user``, ``_forget_user``) and announces it; in a cluster each runs on a copy of
the users and proposes the records it would save (``user_change``, broker/proposal.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..auth.permissions import PatternError, Permission, TopicPermission
from ..auth.users import HASHES, SHA256, USER_LIMITS, User, hash_password
from .command_errors import CommandError, _limits
from .proposal import user_change

if TYPE_CHECKING:
    from .broker import Broker


class UserCommands:
    broker: Broker

    if TYPE_CHECKING:  # (Commands' own)
        def user(self, name: str) -> User: ...
        def vhost(self, name: str) -> Any: ...
        def _save_user(self, user: User) -> None: ...
        def _forget_user(self, name: str) -> None: ...
        def _refresh_access(self, user: User) -> None: ...
        def _announce(self, kind: str, vhost: str, name: str, **details: Any) -> None: ...

    @user_change
    def add_user(self, name: str, password: str | None, tags: list[str] | None = None) -> User:
        if not name:
            raise CommandError("invalid", "User name cannot be empty")
        if name in self.broker.users.users:
            raise CommandError("exists", f"User \"{name}\" already exists")
        user = User(name, hash_password(password) if password else b"", list(tags or []),
                    loopback_only=name in self.broker.config.loopback_users)
        self.broker.users.users[name] = user
        self._save_user(user)
        self._announce("user.created", "", name, tags=list(user.tags))
        return user

    @user_change
    def put_user(self, name: str, password_hash: bytes, hashing: str, tags: list[str],
                 limits: dict[str, Any] | None = None) -> User:
        """A user as a definitions file gives it (a hash, not a password); replaces one of that
        name, keeping its permissions."""
        if hashing not in HASHES:
            raise CommandError("invalid", f"unsupported hashing algorithm '{hashing}'")
        existing = self.broker.users.users.get(name)
        user = User(name, password_hash, list(tags), hashing,
                    loopback_only=name in self.broker.config.loopback_users)
        if existing is not None:
            user.permissions, user.topic_permissions = existing.permissions, existing.topic_permissions
        user.limits = _limits(limits or {}, USER_LIMITS, "user-limits")
        self.broker.users.users[name] = user
        self._save_user(user)
        self._refresh_access(user)
        self._announce("user.created" if existing is None else "user.changed", "", name, tags=list(user.tags))
        return user

    @user_change
    def delete_user(self, name: str) -> None:
        self.user(name)
        del self.broker.users.users[name]
        if self._collected is not None:
            self._collected[name] = None
            return
        self._forget_user(name)
        self._announce("user.deleted", "", name)
        for conn in list(self.broker.connections):
            if conn.username == name:
                conn.close(320, f"user '{name}' is deleted")

    @user_change
    def change_password(self, name: str, password: str) -> None:
        user = self.user(name)
        user.password_hash = hash_password(password) if password else b""
        user.hashing = SHA256
        self._save_user(user)
        self._announce("user.password.changed", "", name)

    @user_change
    def clear_password(self, name: str) -> None:
        user = self.user(name)
        user.password_hash = b""
        self._save_user(user)
        self._announce("user.password.cleared", "", name)

    @user_change
    def set_user_tags(self, name: str, tags: list[str]) -> None:
        user = self.user(name)
        user.tags = list(dict.fromkeys(tags))
        self._save_user(user)
        self._announce("user.tags.set", "", name, tags=list(user.tags))

    @user_change
    def set_user_limits(self, name: str, limits: dict[str, Any]) -> None:
        user = self.user(name)
        user.limits = _limits(limits, USER_LIMITS, "user-limits")
        self._save_user(user)
        self._announce("user.limits.set", "", name, limits=dict(user.limits))

    # -- permissions -------------------------------------------------------------------------------

    @user_change
    def set_permissions(self, user_name: str, vhost: str, configure: str, write: str, read: str) -> None:
        user = self.user(user_name)
        self.vhost(vhost)
        try:
            user.permissions[vhost] = Permission(configure, write, read)
        except PatternError as exc:
            raise CommandError("invalid", str(exc)) from None
        self._save_user(user)
        self._refresh_access(user)
        self._announce("permission.created", vhost, user_name, configure=configure, write=write, read=read)

    @user_change
    def clear_permissions(self, user_name: str, vhost: str) -> None:
        user = self.user(user_name)
        self.vhost(vhost)
        user.permissions.pop(vhost, None)
        self._save_user(user)
        self._refresh_access(user)
        self._announce("permission.deleted", vhost, user_name)

    @user_change
    def set_topic_permissions(self, user_name: str, vhost: str, exchange: str, write: str,
                              read: str) -> None:
        user = self.user(user_name)
        self.vhost(vhost)
        try:
            tp = TopicPermission(exchange, write, read)
        except PatternError as exc:
            raise CommandError("invalid", str(exc)) from None
        user.topic_permissions.setdefault(vhost, {})[exchange] = tp
        self._save_user(user)
        self._refresh_access(user)
        self._announce("topic.permission.created", vhost, user_name, exchange=exchange, write=write,
                       read=read)

    @user_change
    def clear_topic_permissions(self, user_name: str, vhost: str, exchange: str | None = None) -> None:
        user = self.user(user_name)
        self.vhost(vhost)
        topics = user.topic_permissions.get(vhost, {})
        if exchange is None:
            topics.clear()
        else:
            topics.pop(exchange, None)
        if not topics:
            user.topic_permissions.pop(vhost, None)
        self._save_user(user)
        self._refresh_access(user)
        self._announce("topic.permission.deleted", vhost, user_name, exchange=exchange)

    def authenticate_user(self, name: str, password: str) -> User:
        """``rabbitmqctl authenticate_user``: the user if the password is its, else "invalid"."""
        user = self.broker.users.authenticate(name, password)
        if user is None:
            raise CommandError("invalid", f"user '{name}' - invalid credentials")
        return user

    @user_change
    def clear_user_limits(self, name: str, limit: str) -> None:
        """One limit by name, or ``all`` of them (an unknown name clears nothing, as RabbitMQ)."""
        user = self.user(name)
        if limit == "all":
            user.limits = {}
        else:
            user.limits.pop(limit, None)
        self._save_user(user)
        self._announce("user.limits.cleared", "", name, limit=limit)

    def list_users(self) -> list[dict[str, Any]]:
        return [{"user": u.name, "tags": list(u.tags)} for u in self._users()]

    def list_permissions(self, vhost: str) -> list[dict[str, str]]:
        self.vhost(vhost)
        return [{"user": u.name, **u.permissions[vhost].as_json()} for u in self._users()
                if vhost in u.permissions]

    def list_user_permissions(self, name: str) -> list[dict[str, str]]:
        return [{"vhost": v, **p.as_json()} for v, p in sorted(self.user(name).permissions.items())]

    def list_topic_permissions(self, vhost: str) -> list[dict[str, str]]:
        self.vhost(vhost)
        return [{"user": u.name, **tp.as_json()} for u in self._users()
                for tp in u.topic_permissions.get(vhost, {}).values()]

    def list_user_topic_permissions(self, name: str) -> list[dict[str, str]]:
        return [{"vhost": v, **tp.as_json()} for v, tps in sorted(self.user(name).topic_permissions.items())
                for tp in tps.values()]

    def _users(self) -> list[User]:
        return sorted(self.broker.users.users.values(), key=lambda u: u.name)


__all__ = ["UserCommands"]
