"""Users: password hashes, tags, permissions per virtual host, limits.

Passwords are stored as RabbitMQ stores them: a 4-byte salt followed by HASH(salt + password),
where HASH is SHA-256 (``rabbit_password_hashing_sha256``, the default), SHA-512 or MD5 (the
older formats, accepted so that definitions exported from any RabbitMQ log in unchanged).
A user without a password hash cannot log in with a password (only with EXTERNAL).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any

from .permissions import Permission, TopicPermission

SHA256 = "rabbit_password_hashing_sha256"
SHA512 = "rabbit_password_hashing_sha512"
MD5 = "rabbit_password_hashing_md5"
HASHES = {SHA256: hashlib.sha256, SHA512: hashlib.sha512, MD5: hashlib.md5}
# the tags RabbitMQ gives a meaning to (any other tag is kept and shown, and means nothing)
KNOWN_TAGS = ("administrator", "monitoring", "policymaker", "management", "impersonator")
USER_LIMITS = ("max-connections", "max-channels")


def hash_password(password: str, salt: bytes | None = None, algorithm: str = SHA256) -> bytes:
    salt = os.urandom(4) if salt is None else salt
    return salt + HASHES[algorithm](salt + password.encode("utf-8")).digest()


def check_password(stored: bytes, password: str, algorithm: str = SHA256) -> bool:
    digest = HASHES.get(algorithm)
    if digest is None or len(stored) != 4 + digest().digest_size:
        return False
    return hmac.compare_digest(stored, hash_password(password, stored[:4], algorithm))


@dataclass
class User:
    name: str
    password_hash: bytes
    tags: list[str] = field(default_factory=list)
    hashing: str = SHA256
    # the virtual hosts this user may open, with what it may do there
    permissions: dict[str, Permission] = field(default_factory=dict)
    # per virtual host: topic exchange name -> its routing-key patterns
    topic_permissions: dict[str, dict[str, TopicPermission]] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)  # max-connections, max-channels
    loopback_only: bool = False  # RabbitMQ's loopback_users

    @property
    def vhosts(self) -> set[str]:
        return set(self.permissions)


class UserStore:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}

    def add(self, name: str, password: str | None, tags: list[str] | None = None,
            vhosts: set[str] | None = None, loopback_only: bool = False) -> User:
        """A user with full permissions in ``vhosts`` (a shortcut for tests and the default user;
        the command layer, broker/admin.py, is what changes users at run time)."""
        user = User(name, hash_password(password) if password is not None else b"", tags or [],
                    loopback_only=loopback_only)
        for v in (vhosts if vhosts is not None else {"/"}):
            user.permissions[v] = Permission()
        self.users[name] = user
        return user

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        if user is None or not check_password(user.password_hash, password, user.hashing):
            return None
        return user


def user_record(user: User) -> dict[str, Any]:
    """A user's whole record (as kept in the definitions store)."""
    return {"name": user.name, "password_hash": base64.b64encode(user.password_hash).decode(),
            "hashing_algorithm": user.hashing, "tags": list(user.tags), "limits": dict(user.limits),
            "permissions": {v: p.as_json() for v, p in user.permissions.items()},
            "topic_permissions": {v: [tp.as_json() for tp in t.values()]
                                  for v, t in user.topic_permissions.items()}}


def user_from_record(record: dict[str, Any], loopback_only: bool) -> User:
    try:
        password_hash = base64.b64decode(record.get("password_hash", ""), validate=True)
    except (binascii.Error, ValueError):
        password_hash = b""
    user = User(record["name"], password_hash, list(record.get("tags", [])),
                record.get("hashing_algorithm", SHA256), loopback_only=loopback_only)
    user.limits = dict(record.get("limits", {}))
    for v, p in record.get("permissions", {}).items():
        user.permissions[v] = Permission(p["configure"], p["write"], p["read"])
    for v, tps in record.get("topic_permissions", {}).items():
        user.topic_permissions[v] = {tp["exchange"]: TopicPermission(tp["exchange"], tp["write"], tp["read"])
                                     for tp in tps}
    return user
