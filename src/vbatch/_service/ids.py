"""Object ids as OpenAI spells them (``file-...``, ``batch_...``): 24 random hex digits from the
OS's CSPRNG (96 bits: not guessable)."""

from __future__ import annotations

import re
import secrets

__all__ = ["is_id", "new_id"]

PREFIXES = {"file": "file-", "batch": "batch_"}
_ID = re.compile(r"^(file-|batch_)[0-9a-f]{24}$")


def new_id(kind: str) -> str:
    return PREFIXES[kind] + secrets.token_hex(12)


def is_id(value: str, kind: str) -> bool:
    """Whether ``value`` is an id of ``kind``; anything else cannot name an object (and so
    never reaches a query or a path)."""
    return value.startswith(PREFIXES[kind]) and _ID.match(value) is not None
