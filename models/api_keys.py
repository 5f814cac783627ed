"""API key storage: create, look up, list and revoke. Keys are stored as sha256 hashes and shown once.

Used by the API (`Authorization: Bearer <key>`) and by the `loraq keys` command alike."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.base import new_id, utcnow
from models.records import ApiKey

KEY_PREFIX = "lq-"


@dataclass(frozen=True)
class Principal:
    owner: str
    is_admin: bool = False
    key_id: str | None = None  # the key's record id (`key-...`), never the key itself
    key_name: str | None = None

    @property
    def label(self) -> str:
        """Who acted, as events name them: the key's name and record id."""
        return f"key '{self.key_name}' ({self.key_id})" if self.key_id else f"owner '{self.owner}'"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(session: Session, owner: str, name: str, key: str | None = None, is_admin: bool = False) -> str:
    """Store a key (a new random one unless given) and return it in clear, the only time it is seen."""
    key = key or generate_key()
    session.add(ApiKey(id=new_id("key"), owner=owner, name=name, key_hash=hash_key(key), is_admin=is_admin))
    return key


def ensure_key(session: Session, owner: str, name: str, key: str, is_admin: bool = False) -> None:
    if session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first() is None:
        create_key(session, owner, name, key, is_admin)


def authenticate(session: Session, presented: str) -> Principal | None:
    digest = hash_key(presented)
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))).first()
    # The lookup is by an indexed hash of a high-entropy key; the final compare is constant-time anyway.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return Principal(owner=row.owner, is_admin=row.is_admin, key_id=row.id, key_name=row.name)


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.seq)))


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.scalars(select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))).first()
    if row is None:
        return False
    row.revoked_at = utcnow()
    return True
