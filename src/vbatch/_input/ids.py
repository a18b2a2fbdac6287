"""Row ids as 64-bit digests, so that duplicate checks and resume cost 8 bytes a row, not a
Python string and a set entry (~100 bytes). The chance that two of a million distinct ids share a
digest is about 3e-8; duplicates found by digest are confirmed against the real ids."""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

import numpy as np

__all__ = ["DigestList", "id_digest", "id_key"]


def id_key(row_id: Any) -> bytes:
    # 5 and "5" are the same id: output written as JSON must resolve to one row either way.
    return str(row_id).encode("utf-8", "surrogatepass")


def id_digest(row_id: Any) -> int:
    return int.from_bytes(blake2b(id_key(row_id), digest_size=8).digest(), "little")


class DigestList:
    """An append-only list of digests that becomes a numpy array."""

    def __init__(self) -> None:
        self._items = bytearray()

    def append(self, row_id: Any) -> None:
        self._items += blake2b(id_key(row_id), digest_size=8).digest()

    def __len__(self) -> int:
        return len(self._items) // 8

    def to_numpy(self) -> np.ndarray:
        # A view, not a copy: the list is finished when this is asked for.
        return np.frombuffer(self._items, dtype="<u8")

    def duplicates(self) -> set[int]:
        """Digests that occur more than once."""
        arr = np.sort(self.to_numpy())
        if arr.size < 2:
            return set()
        return {int(d) for d in np.unique(arr[1:][arr[1:] == arr[:-1]])}
