"""Pseudonymisation of customer identifiers for logs, metrics and reports (keyed HMAC-SHA256)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_ENV = "NEXTBEST_PSEUDONYM_KEY"


def load_key(root: Path) -> bytes:
    """The HMAC key: `$NEXTBEST_PSEUDONYM_KEY`, else `<workdir>/secrets/pseudonym.key` (created 0600)."""
    key = read_key(root)
    if key is not None:
        return key
    path = root / "secrets" / "pseudonym.key"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def read_key(root: Path) -> bytes | None:
    """The HMAC key as `load_key` finds it, read without creating one (None: none yet, so nothing has
    been logged under any pseudonym)."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    try:
        return (root / "secrets" / "pseudonym.key").read_text().strip().encode()
    except OSError:
        return None


def private_file(path: Path) -> Path:
    """Makes `path` readable and writable by its owner only (0600), creating it empty if missing:
    the event log and the fallback table hold pseudonyms and a customer's decisions. SQLite gives a
    database's -wal and -shm files the database file's permissions."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    return path


def pseudonymise(customer_id: str, key: bytes) -> str:
    """Stable, non-reversible token for a customer id (same id and key -> same token)."""
    return "p_" + hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest()[:24]
