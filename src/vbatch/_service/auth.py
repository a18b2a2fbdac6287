"""Bearer keys. Each key is an owner: it sees only the files and batches made with it. Keys are
held as SHA-256 digests and a presented key is compared with every one in constant time; the
owner recorded in the database is a digest too, so no key is ever written anywhere."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os

from .._errors import ConfigError

__all__ = ["KEYS_ENV", "LOCAL_OWNER", "Keys", "check_host", "load_keys"]

KEYS_ENV = "VBATCH_API_KEYS"  # comma-separated, when no key file is given
LOCAL_OWNER = "local"  # the one owner of a service without keys (loopback only)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Keys:
    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(key) for key in keys]

    @classmethod
    def from_digests(cls, digests: list[str]) -> Keys:
        """Keys from their digests (hex): how the API's process gets them (apiprocess.py)."""
        keys = cls([])
        keys._digests = [bytes.fromhex(d) for d in digests]
        return keys

    @property
    def digests(self) -> list[str]:
        return [d.hex() for d in self._digests]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def owner(self, authorization: str | None) -> str | None:
        """The owner of the bearer key in an ``Authorization`` header; None for no or a wrong
        key (and ``LOCAL_OWNER`` when the service has no keys)."""
        if not self._digests:
            return LOCAL_OWNER
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        given = _digest(token.strip())
        match = None
        for digest in self._digests:  # no early exit: every key is compared
            if hmac.compare_digest(given, digest):
                match = digest
        return None if match is None else match.hex()[:32]


def load_keys(path: str | None) -> Keys:
    """Keys from ``path`` (one a line; blank lines and # comments skipped), else from
    ``$VBATCH_API_KEYS``; none at all means a loopback-only service."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise ConfigError(f"--api-key-file {path}: {exc.strerror}") from None
        keys = [k.strip() for k in lines if k.strip() and not k.lstrip().startswith("#")]
        if not keys:
            raise ConfigError(f"--api-key-file {path} holds no key")
        return Keys(keys)
    return Keys([k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()])


def check_host(host: str, keys: Keys) -> None:
    """Without keys the service is open to whoever reaches it, so it listens on loopback only."""
    if keys.required:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"--host {host}: without API keys (--api-key-file or ${KEYS_ENV}) the service "
            "listens on a loopback address only"
        )
