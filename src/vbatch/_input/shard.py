"""Array jobs: ``Shard(index, count)`` selects the rows whose id digest falls in shard ``index``
of ``count``, so N processes (a Slurm array, a Kubernetes indexed Job) each run one part of an
input into their own output and ``vbatch merge`` puts the parts together.

The split goes by the id's 64-bit blake2b digest (``ids.id_digest``), not Python's ``hash``
(salted per process): every machine, every Python and every re-run puts a row in the same shard,
so each shard resumes on its own and the merge can tell which shard owes a missing row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import ConfigError

__all__ = ["Shard"]


@dataclass(frozen=True)
class Shard:
    index: int  # from 0, as Slurm's and Kubernetes' array indices count
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            got = f"{self.index}/{self.count}"
            raise ConfigError(f"shard must be I/N with 0 <= I < N (I counts from 0); got {got}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, value: Shard | str | tuple[int, int]) -> Shard:
        """``"2/8"``, ``(2, 8)`` or a ``Shard``."""
        if isinstance(value, Shard):
            return value
        if isinstance(value, str):
            first, _, second = value.partition("/")
            try:
                return cls(int(first), int(second))
            except ValueError:
                raise ConfigError(f"shard must be I/N, e.g. 0/4; got {value!r}") from None
        index, count = value
        return cls(int(index), int(count))

    def mask(self, digests: np.ndarray) -> np.ndarray:
        """True for each row (by index, from its id digest) that belongs to this shard."""
        return np.asarray(digests % np.uint64(self.count) == np.uint64(self.index))
