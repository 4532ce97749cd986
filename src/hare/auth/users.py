"""Users, password hashes and their virtual-host access.

Passwords are stored as RabbitMQ stores them (rabbit_password_hashing_sha256): a 4-byte salt
followed by SHA-256(salt + password).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field


def hash_password(password: str, salt: bytes | None = None) -> bytes:
    salt = os.urandom(4) if salt is None else salt
    return salt + hashlib.sha256(salt + password.encode("utf-8")).digest()


def check_password(stored: bytes, password: str) -> bool:
    return hmac.compare_digest(stored, hash_password(password, stored[:4]))


@dataclass
class User:
    name: str
    password_hash: bytes
    tags: list[str] = field(default_factory=list)
    vhosts: set[str] = field(default_factory=set)  # virtual hosts this user may open
    loopback_only: bool = False  # RabbitMQ's loopback_users


class UserStore:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}

    def add(self, name: str, password: str, tags: list[str] | None = None,
            vhosts: set[str] | None = None, loopback_only: bool = False) -> User:
        user = User(name, hash_password(password), tags or [], vhosts or {"/"}, loopback_only)
        self.users[name] = user
        return user

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        if user is None or not check_password(user.password_hash, password):
            return None
        return user
